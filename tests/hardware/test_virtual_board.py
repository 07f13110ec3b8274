"""Virtual board: mpremote over socket:// runs code in MicroPython; deploy and the HIL checks run against it."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerlink.tools import deploy
from ledgerlink.tools.virtual_board import VirtualBoard

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.micropython, pytest.mark.slow]


def mpremote(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", url, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    with VirtualBoard(tmp_path_factory.mktemp("flash")) as b:
        yield b


def test_exec_runs_in_micropython(board):
    result = mpremote(board.url, "exec", "import sys\nprint(1+1, sys.implementation.name)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "micropython"]
    failed = mpremote(board.url, "exec", "print('before')\n1/0")
    assert failed.returncode == 1
    assert "before" in failed.stdout and "ZeroDivisionError" in failed.stdout + failed.stderr


def test_file_commands_stay_inside_the_flash(board, tmp_path):
    src = tmp_path / "data.bin"
    src.write_bytes(bytes(range(256)) * 3 + b"'\"\\")
    result = mpremote(board.url, "fs", "mkdir", ":d", "+", "fs", "cp", str(src), ":d/data.bin", "+",
                      "fs", "ls", ":d", "+", "fs", "sha256sum", ":d/data.bin")
    assert result.returncode == 0, result.stderr
    assert (board.flash.root / "d" / "data.bin").read_bytes() == src.read_bytes()
    import hashlib
    assert hashlib.sha256(src.read_bytes()).hexdigest() in result.stdout
    assert "%d data.bin" % len(src.read_bytes()) in " ".join(result.stdout.split())
    again = mpremote(board.url, "fs", "mkdir", ":d")
    assert again.returncode == 1 and "File exists" in again.stderr
    escape = mpremote(board.url, "fs", "cp", str(src), ":../../escaped.bin")
    assert not (board.flash.root.parent.parent / "escaped.bin").exists()
    assert (board.flash.root / "escaped.bin").exists() or escape.returncode != 0
    assert mpremote(board.url, "fs", "rm", ":d/data.bin", "+", "fs", "rmdir", ":d").returncode == 0
    assert not (board.flash.root / "d").exists()


def test_deploy_then_hil_checks(board, tmp_path):
    broker = socket.socket()
    broker.bind(("127.0.0.1", 0))
    broker.listen(4)
    wifi = tmp_path / "wifi.json"
    wifi.write_text(json.dumps({"ssid": "lab", "password": "pw"}))
    config = json.loads((PROJECT_ROOT / "hardware" / "config.example.json").read_text())
    config.update(broker={"host": "127.0.0.1", "port": broker.getsockname()[1]}, wifi_file=str(wifi))
    path = tmp_path / "device.json"
    path.write_text(json.dumps(config))
    try:
        assert deploy.main(["--port", board.url, "--board", "virtual", "--config", str(path)]) == 0
    finally:
        broker.close()
    stored = json.loads((board.flash.root / "ledgerlink.json").read_text())
    assert stored["site"] == config["site"] and stored["board"] == "virtual"
    assert (board.flash.root / "lib" / "ledgerlink" / "core" / "p256.mpy").is_file()
    assert (board.flash.root / "lib" / "bme280.mpy").is_file()

    out = tmp_path / "reports"
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "hardware" / "hil" / "run_checks.py"),
                             "--port", board.url, "--board", "virtual", "--out", str(out),
                             "--cases", "2", "--repeat", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "virtual.json").read_text())
    assert report["passed"] and report["device"]["wasi"] is True
    assert report["vectors"]["ecdsa"]["total"] == 4 and report["vectors"]["aes_ccm"]["total"] == 4
    for op in ("keygen", "sign", "verify", "ecqv_issue", "ecqv_reconstruct", "ecqv_public_key"):
        assert report["timings"][op]["n"] == 2 and report["timings"][op]["min_ms"] >= 0
    assert 0 < report["heap"]["lowest_during_ecqv"] < report["heap"]["free_at_start"]
    table = (out / "virtual.txt").read_text()
    assert "result: PASS" in table and "ecqv_reconstruct" in table


def test_hil_reports_a_missing_library_and_writes_nothing(tmp_path):
    with VirtualBoard(tmp_path / "empty") as empty:
        result = subprocess.run([sys.executable, str(PROJECT_ROOT / "hardware" / "hil" / "run_checks.py"),
                                 "--port", empty.url, "--board", "empty", "--out", str(tmp_path / "r")],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "deploy first" in result.stderr
    assert not (tmp_path / "r").exists()


def test_board_files_persist_between_execs_and_urandom_works(board):
    write = ("import os\nf = open('state.bin', 'wb')\nf.write(os.urandom(32))\nf.close()\n"
             "os.rename('state.bin', 'kept.bin')\nfrom os import urandom\nprint(urandom(16).hex())")
    first = mpremote(board.url, "exec", write)
    assert first.returncode == 0, first.stdout + first.stderr
    kept = (board.flash.root / "kept.bin").read_bytes()
    assert len(kept) == 32 and not (board.flash.root / "state.bin").exists()
    read = "import os\nprint(open('kept.bin', 'rb').read().hex(), os.urandom(16).hex())\nos.remove('kept.bin')"
    second = mpremote(board.url, "exec", read)
    assert second.returncode == 0, second.stdout + second.stderr
    seen, fresh = second.stdout.split()
    assert bytes.fromhex(seen) == kept
    assert len({first.stdout.strip(), fresh, kept.hex()[:32]}) == 3
    assert not (board.flash.root / "kept.bin").exists()
