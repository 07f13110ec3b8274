"""``ledgerlink up`` runs the site's directory only when the config asks for peer sessions (``peer.enabled``),
supervises it like the gateway (a killed directory is started again) and two devices query each other
through a site it made; turned off again, the directory's broker accounts are disabled."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.device.peer import PartnerUnavailable, PeerDevice
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.transport import ClusterConfig
from ledgerlink.tools import up
from ledgerlink.tools.broker_access import SiteAccess
from ledgerlink.tools.pair_access import DIRECTORY_ADMIN, directory_username

from .conftest import machine_state, now_ms

CLI = [sys.executable, "-m", "ledgerlink.tools.cli"]
CRYPTO = get_backend("cpython")
SITE = "upm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a device's directory proofs are checked against the validator keys alone: a ledger without threshold headers
LEDGER = {"nodes": 1, **({"threshold": False} if "threshold" in up.KNOWN["ledger"] else {})}


def _config(path: Path, **extra) -> Path:
    path.write_text(json.dumps({"data_dir": "site", "site": SITE, "broker": {"port": _free_port()},
                                "ledger": LEDGER, **extra}))
    return path


class _Up:
    """``ledgerlink up --config CFG`` in a subprocess, its output lines collected."""

    def __init__(self, cfg: Path) -> None:
        self.proc = subprocess.Popen(CLI + ["up", "--broker", "mosquitto", "--config", str(cfg)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def wait_line(self, text: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if text in line]
            if found:
                return found[0]
            assert self.proc.poll() is None, "up exited:\n" + "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError("no line with %r in:\n%s" % (text, "".join(self.lines)))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _directory_pid(site_dir: Path) -> int | None:
    """The directory's pid in the supervisor's status file (written within a second of "ready")."""
    deadline = time.monotonic() + 10
    while not (site_dir / "status.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    parts = {p["part"]: p for p in json.loads((site_dir / "status.json").read_text())["parts"]}
    return parts["directory"]["pid"] if "directory" in parts else None


def test_peer_sessions_are_off_unless_the_config_asks(tmp_path):
    assert up.load_config(_config(tmp_path / "a.json")).peer is False
    assert up.load_config(_config(tmp_path / "b.json", peer={"enabled": True})).peer is True
    with pytest.raises(up.ConfigError, match="peer.enabled"):
        up.load_config(_config(tmp_path / "c.json", peer={"enabled": "yes"}))


@pytest.mark.slow
def test_two_devices_query_each_other_through_a_site_of_up(tmp_path):
    site_dir = tmp_path / "site"
    run = _Up(_config(tmp_path / "up.json", peer={"enabled": True}))
    devices: list[PeerDevice] = []
    try:
        run.wait_line("ready")
        assert "peer sessions: on" in "".join(run.lines)
        first = _directory_pid(site_dir)
        assert first is not None
        cluster = ClusterConfig.load(site_dir / "ledger" / "cluster.json")
        admin = bytes.fromhex((site_dir / "ledger" / "keys" / "admin.key").read_text().strip())
        access = SiteAccess.beside(site_dir / "ledger" / "cluster.json")
        keys = [CRYPTO.generate_private_key() for _ in range(2)]
        requests = [enc.registration_request(k, 1, {"type": t, "line": "U"}, now_ms())
                    for k, t in zip(keys, ("carding-machine", "combing-machine"))]
        ledger = LedgerClient(cluster)
        try:
            for r in ledger.submit_many([enc.register_tx(cluster.chain_id, admin, r, now_ms()) for r in requests]):
                assert r.get("status") == "committed" and r.get("code") == 0, r
        finally:
            ledger.close()
        logins = access.add_registered(requests)
        port = json.loads((site_dir / "broker" / "runtime.json").read_text())["port"]
        ids = [enc.device_id(CRYPTO.public_key(k, True)) for k in keys]
        for k, login, name in zip(keys, logins, ("carder", "comber")):
            devices.append(PeerDevice(k, SITE, cluster.chain_id, list(cluster.validators), "127.0.0.1", port,
                                      login, machine_state(name)).start())
        a, b = devices
        out = a.query(ids[1], "state", {"from": "carder"}, timeout=20)
        assert out.case == "online" and out.info.body == {"machine": "comber", "n": 1, "args": {"from": "carder"}}
        back = b.query(ids[0], "state", timeout=20)
        assert back.case == "online" and back.info.body["machine"] == "carder"

        os.kill(first, signal.SIGKILL)                          # supervised: started again
        run.wait_line("directory restarted")
        deadline = time.monotonic() + 30
        while (_directory_pid(site_dir) in (None, first)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _directory_pid(site_dir) not in (None, first)
        deadline = time.monotonic() + 30
        while True:                                              # the new directory answers once subscribed
            try:
                again = a.query(ids[1], "state", timeout=5)
                break
            except (PartnerUnavailable, TimeoutError):
                if time.monotonic() > deadline:
                    raise
        assert again.case == "online" and again.info.body["n"] == 2
    finally:
        for d in devices:
            d.stop()
        run.stop()
    assert run.proc.returncode == 0, "".join(run.lines)

    (site_dir / "status.json").unlink()                             # the next run's supervisor writes its own
    run = _Up(_config(tmp_path / "up.json"))                     # the same site, peer sessions turned off
    try:
        run.wait_line("ready")
        assert "peer sessions: off (peer.enabled)" in "".join(run.lines)
        assert _directory_pid(site_dir) is None
        accounts = access.load()
        assert accounts[directory_username(SITE)]["disabled"] and accounts[DIRECTORY_ADMIN]["disabled"]
    finally:
        run.stop()
    assert run.proc.returncode == 0, "".join(run.lines)
