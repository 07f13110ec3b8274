"""Installed like a package: a wheel holds the board library, drivers and board profiles, and `ledgerlink
deploy` finds them there; package.json installs the board client the way micropython-lib packages install."""

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ledgerlink.tools import deploy
from ledgerlink.tools.virtual_board import VirtualBoard

ROOT = deploy.PROJECT_ROOT


def _version() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["metadata"]["version"]


def test_package_json_installs_the_board_client_library_and_drivers():
    package = json.loads((ROOT / "package.json").read_text())
    assert package["version"] == _version() and package["deps"] == []
    drivers = sorted({d for name in deploy.board_names() for d in deploy.load_profile(name)["install"]["drivers"]})
    wanted = {rel[len("lib/"):-len(".mpy")] + ".py": src.relative_to(ROOT).as_posix()
              for rel, src in deploy.library_sources(True, True, drivers).items()}
    named = dict(package["urls"])
    assert len(named) == len(package["urls"])
    assert named == wanted                  # the files deploy copies, under the names mip gives them in /lib
    for target, source in package["urls"]:
        assert (ROOT / source).is_file(), source
        assert not target.startswith("/") and ".." not in target.split("/")
    client = {p.name for p in (ROOT / "micropython" / "ledgerlink_client").glob("*.py")}
    assert {t.rsplit("/", 1)[1] for t in named if t.startswith("ledgerlink_client/")} == client


def _source_copy(dest: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Environment whose `python -S -m ledgerlink.tools.cli` runs the package installed from a wheel (``-S``
    skips the .pth files, so a checkout installed editable is not on the path)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = _source_copy(tmp / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp / "dist").glob("ledgerlink-*.whl"))
    target = tmp / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                             str(wheel)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    shutil.rmtree(source)
    paths = [str(target)] + list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), target=str(target))


def _ledgerlink(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", "-m", "ledgerlink.tools.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_installed_wheel_deploys_the_board_library(installed, tmp_path):
    where = subprocess.run([sys.executable, "-S", "-c", "import ledgerlink.tools.deploy as d; print(d.BOARDS_DIR)"],
                           env=installed, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(Path(installed["target"]) / "ledgerlink" / "hardware" / "boards"), where.stderr
    usage = _ledgerlink(installed, "deploy", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: ledgerlink deploy")
    assert "esp32, esp32s3, picow, rpi, virtual" in " ".join(usage.stdout.split())
    config = json.loads((ROOT / "hardware" / "config.example.json").read_text())
    config.pop("wifi_file")
    (tmp_path / "device.json").write_text(json.dumps(config))
    plan = _ledgerlink(installed, "deploy", "--port", "p", "--board", "virtual", "--config",
                       str(tmp_path / "device.json"), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "/rom/lib/ledgerlink/core/p256.mpy <- core/p256.py" in plan.stdout
    assert "/rom/lib/ledgerlink_client/device.mpy <- micropython/ledgerlink_client/device.py" in plan.stdout
    assert "/rom/lib/bme280.mpy <- micropython/drivers/bme280.py" in plan.stdout
    with VirtualBoard(tmp_path / "flash", heap_bytes=300_000) as board:
        result = _ledgerlink(installed, "deploy", "--port", board.url, "--board", "virtual", "--config",
                             str(tmp_path / "device.json"), "--skip-broker-check")
        assert result.returncode == 0, result.stderr
        assert "verified: library imports on the board" in result.stdout
        shown = deploy.mpremote(board.url, "exec", "import ledgerlink_client.device as d\nprint(d.__file__)")
        assert shown.stdout.split() == ["/rom/lib/ledgerlink_client/device.mpy"], shown.stderr


@pytest.mark.slow
def test_mip_installs_the_board_client_from_package_json(tmp_path):
    """`mpremote mip install` with this package.json (a local path here, github:OWNER/ledgerlink on a board)."""
    with VirtualBoard(tmp_path / "flash", heap_bytes=400_000, romfs_bytes=0) as board:
        result = subprocess.run([sys.executable, "-m", "mpremote", "connect", board.url, "mip", "install", "--target",
                                 "/lib", str(ROOT / "package.json")], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "Done" in result.stdout, result.stdout + result.stderr
        shown = deploy.mpremote(board.url, "exec", "import ledgerlink_client.device as d, ledgerlink.core.p256 as p, "
                                                   "bme280\nprint(d.__file__, p.__file__, bme280.__file__)")
    paths = shown.stdout.split()
    assert [p.split("/flash/", 1)[1] for p in paths] == ["lib/ledgerlink_client/device.py",
                                                        "lib/ledgerlink/core/p256.py", "lib/bme280.py"], shown.stderr


@pytest.mark.slow
def test_every_command_runs_from_the_installed_wheel(installed):
    from ledgerlink.tools import cli

    for command in ["demo", *cli.PASSTHROUGH]:
        usage = _ledgerlink(installed, command, "--help", timeout=120)
        assert usage.returncode == 0 and usage.stdout.startswith("usage: ledgerlink " + command), usage.stderr
    library = _ledgerlink(installed, "demo", "--library")
    assert library.returncode == 0 and "all steps passed" in library.stdout, library.stdout + library.stderr
    live = _ledgerlink(installed, "demo", "--devices", "2", "--duration", "4", timeout=300)
    assert live.returncode == 0 and "demo passed: every step worked" in live.stdout, live.stdout + live.stderr
