"""First run and the small things a newcomer meets: the demo's messages, the virtual board's clean exit."""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerlink.tools import demo


def test_library_demo_prints_each_refusal_whole(capsys):
    assert demo.run_demo(readings=2) == 0
    out = capsys.readouterr().out
    refusals = re.findall(r"refused:(.*)", out)
    assert len(refusals) >= 3
    for reason in refusals:
        assert re.match(r" \w+: \S", reason), "a refusal without its reason: %r" % reason


def test_virtual_board_removes_its_temp_flash_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "ledgerlink.tools.cli", "virtual-board", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        flash = Path(re.search(r"flash (\S+),", line).group(1))
        assert flash.is_dir(), line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert not flash.exists() and not flash.with_name(flash.name + ".romfs").exists()


@pytest.mark.slow
def test_interrupted_demo_keeps_the_logs_it_names_and_suggests_only_what_is_installed():
    proc = subprocess.Popen([sys.executable, "-m", "ledgerlink.tools.cli", "demo", "--devices", "2", "--duration", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "verified readings:" in line:
                proc.send_signal(signal.SIGINT)
                break
        out = "".join(lines) + proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
        proc.wait()
    logs = re.search(r"interrupted before every step ran \(logs in (\S+)\)", out)
    assert logs, out
    try:
        assert Path(logs.group(1)).is_dir() and any(Path(logs.group(1)).rglob("*.log"))
    finally:
        shutil.rmtree(logs.group(1), ignore_errors=True)
    hint = next(line for line in out.splitlines() if "verified readings:" in line)
    if "mosquitto_sub" in hint and shutil.which("mosquitto_sub") is None:
        assert "apt-get install mosquitto-clients, then mosquitto_sub" in hint


@pytest.mark.slow
def test_hil_session_step_says_what_it_needs_on_a_board_not_provisioned(tmp_path):
    import importlib.util
    import json

    from ledgerlink.tools import deploy
    from ledgerlink.tools.virtual_board import VirtualBoard

    spec = importlib.util.spec_from_file_location("hil_run_checks", deploy.PROJECT_ROOT / "hardware" / "hil" /
                                                  "run_checks.py")
    hil = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hil)
    config = json.loads((deploy.PROJECT_ROOT / "hardware" / "config.example.json").read_text())
    with VirtualBoard(tmp_path / "flash", heap_bytes=300_000, preload_library=True) as board:
        (board.flash.root / "ledgerlink.json").write_text(json.dumps(config))
        step = hil.run_session(board.url, timeout=120)
    assert step["status"] == "skipped", step
    assert step["reason"] == "needs a provisioned board: no ledgerlink.key on it (run ledgerlink provision)"
    assert hil.render_session(step) == ["session and receipt: skipped (%s)" % step["reason"]]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_up_on_an_empty_site_makes_what_it_needs_and_provision_writes_the_device_config(tmp_path):
    import json
    import queue
    import threading
    import time

    config = tmp_path / "up.json"
    config.write_text(json.dumps({"data_dir": "site", "site": "first", "broker": {"port": _free_port()},
                                  "ledger": {"nodes": 1}, "gateway": {"http_port": _free_port()},
                                  "admin_key": "admin.key"}))
    proc = subprocess.Popen([sys.executable, "-m", "ledgerlink.tools.cli", "up", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)], daemon=True).start()
    out = []
    try:
        deadline = time.monotonic() + 120
        while not any("] ready" in line for line in out):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "".join(out)
            out.append(line)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    text = "".join(out)
    site = tmp_path / "site"
    made = [line.split("] made: ", 1)[1].strip() for line in out if "] made: " in line]
    assert made == ["admin key %s (mode 0600; the ledger's genesis admin)" % (tmp_path / "admin.key"),
                    "1 validator keys, the gateway's ledger key, genesis and cluster.json in %s" % (site / "ledger"),
                    "broker accounts and ACLs (gateways, consumer, broker admin) %s" % (site / "broker" / "accounts.json"),
                    "site CA (the broker's TLS certificate is signed by it) %s" % (site / "broker" / "tls" / "ca.pem"),
                    "the gateway's fog CA key (ECQV session certificates) %s" % (site / "ledger" / "keys" / "gw-ca.key")
                    ], text
    assert (tmp_path / "admin.key").stat().st_mode & 0o777 == 0o600
    cluster = json.loads((site / "ledger" / "cluster.json").read_text())
    from ledgerlink.core.backend import get_backend

    admin = get_backend("cpython").public_key(bytes.fromhex((tmp_path / "admin.key").read_text().strip()), True)
    assert cluster["genesis"]["admins"][0]["key"] == admin.hex()
    # the device config comes from the site: deploy takes it as it is
    from ledgerlink.tools import deploy

    device = tmp_path / "press-1.json"
    wrote = subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", "provision", "--up-config", str(config),
                            "--write-config", str(device), "--name", "press-1"], capture_output=True, text=True,
                           timeout=60)
    assert wrote.returncode == 0, wrote.stderr
    written = json.loads(device.read_text())
    broker_port = json.loads(config.read_text())["broker"]["port"]
    assert written["broker"] == {"host": "127.0.0.1", "port": broker_port, "tls": False}
    assert written["site"] == "first" and written["device_name"] == "press-1"
    assert written["chain_id"] == cluster["chain_id"] and written["validator_keys"] == cluster["validators"]
    ca_key = bytes.fromhex((site / "ledger" / "keys" / "gw-ca.key").read_text().strip())
    assert written["ca_public"] == get_backend("cpython").public_key(ca_key, True).hex()
    assert deploy.load_config(device, deploy.load_profile("virtual"))["ca_public"] == written["ca_public"]
    again = subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", "provision", "--up-config", str(config),
                            "--write-config", str(device), "--name", "press-1"], capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 2 and "exists: not overwriting" in again.stderr
    # an existing ledger's admin key is not made again: a missing one is an error naming what to do
    (tmp_path / "admin.key").unlink()
    check = subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", "up", "--config", str(config), "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 2 and "has its admin already" in check.stderr
