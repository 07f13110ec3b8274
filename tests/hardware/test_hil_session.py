"""The HIL "session and receipt" step end to end: a real stack (mosquitto, a 4-node ledger, the gateway),
the virtual board started as `ledgerlink virtual-board --network`, the library installed with
`ledgerlink deploy`, the board's key made on it and registered with `ledgerlink provision`, then
hardware/hil/run_checks.py through mpremote. The board opens its session with the gateway, publishes
readings and checks each receipt itself; a config with another CA key makes the step fail with the
reason, a config without a broker skips it with a line saying so."""

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledgerlink.core import ecdsa
from ledgerlink.tools import deploy
from ledgerlink.tools.stack import Stack
from tests.mqtt_helpers import Verified

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUN_CHECKS = PROJECT_ROOT / "hardware" / "hil" / "run_checks.py"
SITE = "hilsite"
pytestmark = [pytest.mark.micropython, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("hilstack") / "site", site=SITE, broker="mosquitto")
    s.start()
    yield s
    s.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BoardProcess:
    """`ledgerlink virtual-board --network` as a child process, as a user starts it."""

    def __init__(self, flash: Path, *extra: str) -> None:
        self.port = free_port()
        self.flash = flash
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ledgerlink.tools.cli", "virtual-board", "--port", str(self.port),
             "--flash", str(flash), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.banner = self.proc.stdout.readline()
        assert "virtual board on socket://127.0.0.1:%d" % self.port in self.banner, self.banner

    @property
    def url(self) -> str:
        return "socket://127.0.0.1:%d" % self.port

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def device_config(stack) -> dict:
    config = json.loads((PROJECT_ROOT / "hardware" / "config.example.json").read_text())
    config.pop("wifi_file")
    config.update(broker={"host": "127.0.0.1", "port": stack.broker_port}, site=SITE, chain_id=stack.chain_id,
                  ca_public=stack.public_key("gw-ca").hex(), validator_keys=[k.hex() for k in stack.validators],
                  device_name="hil-board")
    return config


@pytest.fixture(scope="module")
def board(stack, tmp_path_factory):
    """The virtual board with the library deployed and its identity provisioned on the stack's ledger."""
    work = tmp_path_factory.mktemp("hilboard")
    b = BoardProcess(work / "flash", "--network")
    try:
        assert "network to 127.0.0.1" in b.banner
        config = work / "device.json"
        config.write_text(json.dumps(device_config(stack)))
        assert deploy.main(["--port", b.url, "--board", "virtual", "--config", str(config)]) == 0
        result = subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", "provision", "--port", b.url,
                                 "--board", "virtual", "--cluster", str(stack.cluster.config_path)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        yield b
    finally:
        b.stop()


def run_checks(url: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    result = subprocess.run([sys.executable, str(RUN_CHECKS), "--port", url, "--board", "virtual", "--out", str(out),
                             "--cases", "1", "--repeat", "1", *extra], capture_output=True, text=True, timeout=600)
    report = json.loads((out / "virtual.json").read_text()) if (out / "virtual.json").exists() else {}
    return result, report, (out / "virtual.txt").read_text() if (out / "virtual.txt").exists() else ""




def test_board_opens_a_session_and_verifies_its_receipts(stack, board, tmp_path):
    ident = json.loads((board.flash / "ledgerlink.id.json").read_text())
    app = Verified(stack.broker_port, SITE, 'hil-app', stack.consumer_login())
    try:
        started = time.monotonic()
        result, report, table = run_checks(board.url, tmp_path / "r", "--readings", "3")
        wall = time.monotonic() - started
        deadline = time.monotonic() + 5
        while len(app.readings) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        app.close()
    assert result.returncode == 0, result.stdout + result.stderr
    step = report["session"]
    assert report["passed"] is True and step["status"] == "pass" and "reason" not in step
    opened = step["open"]
    assert opened["device_id"] == ident["device_id"] and opened["gateway_id"] == stack.gateway_id.hex()
    assert opened["broker"] == "127.0.0.1:%d" % stack.broker_port
    assert opened["valid_until_s"] > time.time() + 60 and opened["open_ms"] >= 0 and opened["mem_free"] > 0
    assert step["receipts_verified"] == 3 and len(step["readings"]) == 3
    seqs = [r["seq"] for r in step["readings"]]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1
    for r in step["readings"]:
        assert r["status"] == "ok" and r["valid"] is True and r["reason"] == ""
        assert r["height"] >= 1 and 0 <= r["check_ms"] <= r["receipt_ms"] and r["mem_free"] > 0
    assert step["check_ms"]["n"] == 3 and step["mem_free_low"] <= opened["mem_free"]
    # what the board sealed is what the gateway verified and passed on
    device_id = bytes.fromhex(ident["device_id"])
    mine = sorted((r for r in app.readings if r[1] == device_id), key=lambda r: r[2])
    assert [r[2] for r in mine] == seqs and [r[4] for r in mine] == [{"hil": i} for i in (1, 2, 3)]
    assert "session and receipt: device %s" % ident["device_id"] in table
    assert "session: PASS, 3 of 3 receipts verified on the board" in table and "result: PASS" in table
    assert table.count("verified\n") >= 3
    print("HIL on the virtual board: session open %d ms, receipt checks %s ms, %.1f s wall"
          % (opened["open_ms"], [r["check_ms"] for r in step["readings"]], wall))


def test_another_ca_key_fails_the_step_with_the_reason(board, tmp_path):
    path = board.flash / "ledgerlink.json"
    good = path.read_text()
    config = json.loads(good)
    config["ca_public"] = ecdsa.public_key(ecdsa.generate_private_key(), True).hex()
    path.write_text(json.dumps(config))
    try:
        result, report, table = run_checks(board.url, tmp_path / "r", "--session-wait", "30")
    finally:
        path.write_text(good)
    assert result.returncode == 1, result.stdout + result.stderr
    step = report["session"]
    assert report["passed"] is False and step["status"] == "fail" and step["receipts_verified"] == 0
    assert step["reason"].startswith("opening the session: session response refused: ")
    assert "Invalid" in step["reason"] and step["readings"] == []
    assert not report["vectors"]["ecdsa"]["failed"]
    assert "session: FAIL, 0 of 2 receipts verified on the board: opening the session" in table
    assert "result: FAIL" in table


def load_run_checks():
    spec = importlib.util.spec_from_file_location("hil_run_checks", RUN_CHECKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_broker_in_the_config_skips_the_step_with_a_line(board):
    hil = load_run_checks()
    path = board.flash / "ledgerlink.json"
    good = path.read_text()
    config = json.loads(good)
    del config["broker"]
    path.write_text(json.dumps(config))
    try:
        step = hil.run_session(board.url)
    finally:
        path.write_text(good)
    assert step["status"] == "skipped" and step["reason"] == "no broker configured in ledgerlink.json"
    assert hil.render_session(step) == ["session and receipt: skipped (no broker configured in ledgerlink.json)"]


def test_a_board_without_network_fails_the_step_and_says_why(board):
    """The same flash served without --network: a broker is configured, so the step runs and fails."""
    hil = load_run_checks()
    offline = BoardProcess(board.flash)
    try:
        assert "no network" in offline.banner
        step = hil.run_session(offline.url)
    finally:
        offline.stop()
    assert step["status"] == "fail" and step["readings"] == []
    assert step["reason"] == ("opening the session: cannot reach the broker 127.0.0.1:%d: the virtual board has "
                              "no network: start it with --network" % json.loads(
                                  (board.flash / "ledgerlink.json").read_text())["broker"]["port"])
