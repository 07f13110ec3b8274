"""Board profiles and deploy: profile validation, the dry-run plan, one-line errors that write nothing."""

import json
import socket
from pathlib import Path

import pytest

from ledgerlink.tools import deploy
from ledgerlink.tools.virtual_board import VirtualBoard

EXAMPLE = deploy.PROJECT_ROOT / "hardware" / "config.example.json"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    wifi = tmp_path / "wifi.json"
    wifi.write_text(json.dumps({"ssid": "lab", "password": "s3cret-pass"}))
    data = json.loads(EXAMPLE.read_text())
    data["wifi_file"] = str(wifi)
    path = tmp_path / "device.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name,arch", [("esp32", "xtensawin"), ("esp32s3", "xtensawin"), ("picow", "armv6m"),
                                       ("rpi", ""), ("virtual", "")])
def test_profiles_load_and_validate(name, arch):
    profile = deploy.load_profile(name)
    assert profile["name"] == name and profile["mpy_arch"] == arch
    assert profile["wiring"]["bme280"]["address"] == 0x76
    if profile["runtime"] == "micropython":
        files = deploy.board_files(profile)
        assert files["lib/ledgerlink/core/p256.mpy"].name == "p256.py"
        assert files["lib/bme280.mpy"].is_file()
        # every MicroPython board profiled can hold the library in ROMFS (from .mpy files only the larger ones)
        assert profile["memory"]["heap_bytes"] > deploy.heap_needed(profile, "romfs")


def test_broken_profiles_are_refused():
    good = deploy.load_profile("esp32")
    for mutate, message in [(lambda p: p.pop("mpy_arch"), "missing key 'mpy_arch'"),
                            (lambda p: p.update(mpy_arch="z80"), "unknown mpy_arch"),
                            (lambda p: p["memory"].update(heap_bytes=-1), "heap_bytes"),
                            (lambda p: p["install"].update(drivers=["nosuch"]), "no driver")]:
        profile = json.loads(json.dumps(good))
        mutate(profile)
        with pytest.raises(deploy.DeployError, match=message) as info:
            deploy.validate_profile(profile)
        assert info.value.code == 2
    with pytest.raises(deploy.DeployError, match="unknown board 'z80': choose one of esp32"):
        deploy.load_profile("z80")
    with pytest.raises(deploy.DeployError, match="unknown board"):
        deploy.load_profile("../boards/esp32")


def test_dry_run_prints_the_plan_and_hides_the_password(config, capsys):
    assert deploy.main(["--port", "/dev/ttyUSB0", "--board", "esp32", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mpy-cross -march=xtensawin" in out
    assert "/lib/ledgerlink/core/p256.mpy <- sdk/core/p256.py" in out
    assert "/lib/bme280.mpy <- micropython/drivers/bme280.py" in out
    assert "/ledgerlink.json (written last)" in out
    assert '"ssid": "lab"' in out and "s3cret-pass" not in out
    assert deploy.main(["--port", "/dev/ttyACM0", "--board", "picow", "--config", str(config), "--dry-run"]) == 0
    assert "-march=armv6m" in capsys.readouterr().out


@pytest.mark.parametrize("key", ["broker", "site", "device_name", "gateway_id", "validator_keys", "wifi_file",
                                 "chain_id", "ca_public"])
def test_missing_config_key_is_one_line_exit_2(config, key, capsys, monkeypatch):
    data = json.loads(config.read_text())
    del data[key]
    config.write_text(json.dumps(data))
    staged = []
    monkeypatch.setattr(deploy, "stage", lambda *a: staged.append(a))
    monkeypatch.setattr(deploy, "mpremote", lambda *a, **k: pytest.fail("board contacted"))
    assert deploy.main(["--port", "/dev/ttyUSB0", "--board", "esp32", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing key %r" % key in err and "config.example.json" in err
    assert staged == []


def test_bad_values_are_refused(config, capsys):
    data = json.loads(config.read_text())
    for broken, message in [({"validator_keys": ["04" + "00" * 64]}, "validator_keys[0]"),
                            ({"broker": {"host": "h", "port": 70000}}, "broker.port"),
                            ({"ca_public": "05" + "11" * 32}, "ca_public is not a hex P-256 public key"),
                            ({"mode": "plain"}, "mode must be"),
                            ({"wifi_file": "/nonexistent/wifi.json"}, "Wi-Fi file /nonexistent/wifi.json not found")]:
        config.write_text(json.dumps(dict(data, **broken)))
        assert deploy.main(["--port", "p", "--board", "esp32", "--config", str(config), "--dry-run"]) == 2
        assert message in capsys.readouterr().err
    assert deploy.main(["--port", "p", "--board", "esp32", "--config", "/nonexistent.json"]) == 2
    assert "copy hardware/config.example.json" in capsys.readouterr().err
    assert deploy.main(["--port", "p", "--board", "rpi", "--config", str(config)]) == 2
    assert "runs CPython" in capsys.readouterr().err


def _listening_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    return s


def test_bad_port_exits_3_after_staging_and_writes_nothing(config, capsys, tmp_path):
    broker = _listening_port()
    data = json.loads(config.read_text())
    data["broker"] = {"host": "127.0.0.1", "port": broker.getsockname()[1]}
    config.write_text(json.dumps(data))
    try:
        code = deploy.main(["--port", str(tmp_path / "ttyUSB9"), "--board", "esp32", "--config", str(config)])
    finally:
        broker.close()
    err = capsys.readouterr().err
    assert code == 3
    assert err.count("\n") == 1 and "no MicroPython board answers on" in err and "mpremote connect list" in err
    assert not (tmp_path / "ttyUSB9").exists()


def test_broker_down_exits_4_before_touching_the_board(config, capsys, monkeypatch):
    closed = _listening_port()
    port = closed.getsockname()[1]
    closed.close()
    data = json.loads(config.read_text())
    data["broker"] = {"host": "127.0.0.1", "port": port}
    config.write_text(json.dumps(data))
    monkeypatch.setattr(deploy, "mpremote", lambda *a, **k: pytest.fail("board contacted"))
    assert deploy.main(["--port", "/dev/ttyUSB0", "--board", "esp32", "--config", str(config)]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broker 127.0.0.1:%d not reachable" % port in err


def test_stage_compiles_for_the_board_arch(config, tmp_path):
    profile = deploy.load_profile("esp32")
    board_config = deploy.load_config(config, profile)
    written = deploy.stage(profile, board_config, tmp_path / "stage")
    assert "lib/ledgerlink/core/ecdsa.mpy" in written
    mpy = (tmp_path / "stage" / "lib/ledgerlink/core/ecdsa.mpy").read_bytes()
    assert mpy[0:2] == b"M\x06"  # .mpy version 6; no native code, so the arch field stays 0
    assert "-march=xtensawin" in deploy.mpy_cross_command(Path("a.py"), Path("a.mpy"), profile["mpy_arch"])
    stored = json.loads((tmp_path / "stage" / "ledgerlink.json").read_text())
    assert stored["wifi"] == {"ssid": "lab", "password": "s3cret-pass"} and "wifi_file" not in stored
    assert stored["board"] == "esp32"


# --- layouts: ROMFS image or .mpy files ---------------------------------------------------------

def device_config(tmp_path: Path) -> Path:
    config = json.loads(EXAMPLE.read_text())
    config.pop("wifi_file")
    path = tmp_path / "device.json"
    path.write_text(json.dumps(config))
    return path


def run_deploy(board, config: Path, *extra: str) -> int:
    return deploy.main(["--port", board.url, "--board", "virtual", "--config", str(config), "--skip-broker-check",
                        *extra])


def on_board(board, code: str) -> str:
    result = deploy.mpremote(board.url, "exec", code, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_dry_run_shows_the_layout(config, capsys):
    assert deploy.main(["--port", "p", "--board", "esp32", "--config", str(config), "--dry-run",
                        "--layout", "romfs"]) == 0
    out = capsys.readouterr().out
    assert "layout: romfs (library as a ROMFS image; config, keys, counters and queues on the writable " in out
    assert "/rom/lib/ledgerlink/core/p256.mpy <- sdk/core/p256.py" in out and "romfs deploy" in out
    assert deploy.main(["--port", "p", "--board", "esp32", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "layout: files" in out and "  /lib/ledgerlink/core/p256.mpy" in out
    assert deploy.default_layout(deploy.load_profile("virtual")) == "romfs"


@pytest.mark.slow
def test_romfs_layout_writes_one_image_and_keeps_the_config_on_flash(tmp_path, capsys):
    config = device_config(tmp_path)
    with VirtualBoard(tmp_path / "flash", heap_bytes=300_000) as board:     # room for either layout
        assert run_deploy(board, config) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "as a ROMFS image" in out and "ROMFS partition 1048576 bytes" in out
        assert board.romfs.read()[:3] == b"\xd2\xcd\x31"
        assert sorted(p.name for p in board.flash.root.iterdir()) == ["ledgerlink.json"]   # no /lib
        where = on_board(board, "import ledgerlink.core.p256 as m, ledgerlink_client.device as d\n"
                                "print(m.__file__, d.__file__)")
        assert where.split() == ["/rom/lib/ledgerlink/core/p256.mpy", "/rom/lib/ledgerlink_client/device.mpy"]
        # --layout files overrides the profile: .mpy files in /lib (the image stays, ahead on sys.path)
        assert run_deploy(board, config, "--layout", "files") == 0
        assert (board.flash.root / "lib" / "ledgerlink" / "core" / "p256.mpy").is_file()


def test_romfs_layout_refused_without_a_partition_or_room_before_writing(tmp_path, capsys):
    config = device_config(tmp_path)
    for size, message in [(0, "the board has no ROMFS partition"),
                          (16 * 1024, "the board's ROMFS partition has 16384 bytes, the library image needs")]:
        with VirtualBoard(tmp_path / ("flash%d" % size), heap_bytes=110_000, romfs_bytes=size) as board:
            assert run_deploy(board, config, "--layout", "romfs") == 8
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and message in err and "--layout files" in err
            assert list(board.flash.root.iterdir()) == [] and board.romfs.read() == b""


def test_heap_need_follows_the_layout(tmp_path, capsys, monkeypatch):
    """A board whose heap holds the library run from ROMFS but not copied from files: files are refused
    (with the way out named), ROMFS goes on."""
    real = deploy.load_profile

    def profile(name: str) -> dict:
        p = real(name)
        p["memory"].update(min_free_bytes=100_000, min_free_bytes_romfs=40_000)
        return p

    monkeypatch.setattr(deploy, "load_profile", profile)
    config = device_config(tmp_path)
    with VirtualBoard(tmp_path / "flash", heap_bytes=80 * 1024) as board:
        assert run_deploy(board, config, "--layout", "files") == 8
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "ledgerlink needs at least 100000 with the library as .mpy files" in err
        assert "deploy with --layout romfs" in err and list(board.flash.root.iterdir()) == []
        assert run_deploy(board, config) == 0, capsys.readouterr().err
        assert board.romfs.read()[:3] == b"\xd2\xcd\x31"
