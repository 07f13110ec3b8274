"""``ledgerlink up`` runs the site's update service only when the config asks (``updates.enabled``, off by
default: no account may publish on the devices' ``fw`` topics otherwise), under its own broker account
``ll-updates``, supervised like the directory; a release made with ``ledgerlink admin release`` reaches a
device of a site made by ``up``, and the device's statement of what it runs reaches the ledger through the
update service's relay key (made once, mode 0600, registered at the first start)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from ledgerlink.core import cbor
from ledgerlink.device.client import Device
from ledgerlink.device.update import attach
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import RecordKind
from ledgerlink.ledger.transport import ClusterConfig
from ledgerlink.protocol import spv
from ledgerlink.protocol.codes import IMAGE_CONFIGURATION
from ledgerlink.tools import up
from ledgerlink.tools.broker_access import SiteAccess
from tests.m2m.test_up_directory import _config, _Up
from tests.test_admin import run

CONFIG = b'{"interval_s": 4, "alarm_c": 75}' * 40


def _pid_of(site_dir, part: str) -> int | None:
    deadline = time.monotonic() + 10
    while not (site_dir / "status.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    parts = {p["part"]: p for p in json.loads((site_dir / "status.json").read_text())["parts"]}
    return parts[part]["pid"] if part in parts else None


def _running_config(versions, device_id: str) -> int | None:
    """The config sequence the service's versions file says the device runs (None: not said yet)."""
    try:
        return json.loads(versions.read_text())[device_id]["components"]["config"]["running"]
    except (OSError, ValueError, KeyError):
        return None


def _ledger_version(cluster: ClusterConfig, device: bytes, component: int) -> dict | None:
    """The device-version record of ``device`` on the ledger (None: proven absent), its proof checked against
    the cluster's validators."""
    ledger = LedgerClient(cluster)
    try:
        res = ledger.record(int(RecordKind.DEVICE_VERSION), [device, component])
    finally:
        ledger.close()
    assert res.get("ok"), res
    group = cluster.genesis.get("group_key")
    _, key, value = spv.verify_record_proof(cbor.dumps(res["proof"]), cluster.chain_id, list(cluster.validators),
                                            group_key=bytes.fromhex(group) if group else None)
    assert key == spv.state_key(RecordKind.DEVICE_VERSION, [device, component])
    return None if value is None else cbor.loads(value)


def test_updates_are_off_unless_the_config_asks(tmp_path):
    assert up.load_config(_config(tmp_path / "a.json")).updates is False
    assert up.load_config(_config(tmp_path / "b.json", updates={"enabled": True})).updates is True
    with pytest.raises(up.ConfigError, match="updates.enabled"):
        up.load_config(_config(tmp_path / "c.json", updates={"enabled": 1}))


@pytest.mark.slow
def test_a_release_reaches_a_device_of_a_site_made_by_up(tmp_path):
    site_dir = tmp_path / "site"
    run_up = _Up(_config(tmp_path / "up.json", updates={"enabled": True}))
    device = updates = None
    try:
        run_up.wait_line("ready")
        assert "updates: on" in "".join(run_up.lines)
        first = _pid_of(site_dir, "updates")
        assert first is not None
        cluster_path = site_dir / "ledger" / "cluster.json"
        access = SiteAccess.beside(cluster_path)
        assert access.load()["ll-updates"]["role"] == "updates"
        run("register", "--demo-key", tmp_path / "maint.key", "--role", "maintenance", "--name", "m-1",
            cluster=cluster_path, check=0)
        (tmp_path / "cfg.json").write_bytes(CONFIG)
        run("release", "--component", "config", "--class", "th-sensor", "--seq", "2", "--version", "c-2",
            "--maintenance-key", tmp_path / "maint.key", tmp_path / "cfg.json", cluster=cluster_path, check=0)
        os.kill(first, signal.SIGKILL)                           # supervised: started again
        run_up.wait_line("updates restarted")
        log = site_dir / "updates.log"
        deadline = time.monotonic() + 30
        while log.read_text().count("update service of site") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)                                      # subscribed again (an idle device's status
        assert log.read_text().count("update service of site") == 2   # comes again only each STATUS_EVERY_MS)

        cluster = ClusterConfig.load(cluster_path)
        admin = bytes.fromhex((site_dir / "ledger" / "keys" / "admin.key").read_text().strip())
        port = json.loads((site_dir / "broker" / "runtime.json").read_text())["port"]
        device = Device.open(str(tmp_path / "dev"), up.load_config(tmp_path / "up.json").site, "127.0.0.1", port,
                             cluster.chain_id, list(cluster.validators))
        request = device.core.registration_request(int(time.time() * 1000)).payload
        ledger = LedgerClient(cluster)
        try:
            res = ledger.submit(enc.register_tx(cluster.chain_id, admin, request, int(time.time() * 1000)))
            assert res.get("status") == "committed" and res.get("code") == 0, res
        finally:
            ledger.close()
        device.set_login(access.add_registered([request])[0]["password"])
        updates = attach(device, "th-sensor", str(tmp_path / "dev" / "upd"), config_path=str(tmp_path / "dev" / "cfg"))
        device.start()
        deadline = time.monotonic() + 60
        while not (tmp_path / "dev" / "cfg").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "dev" / "cfg").read_bytes() == CONFIG, "".join(run_up.lines)
        assert updates.status()[IMAGE_CONFIGURATION]["version"] == "c-2"
        versions = site_dir / "ledger" / "releases" / "versions.json"
        device_id = device.core.device_id.hex()
        deadline = time.monotonic() + 20
        while _running_config(versions, device_id) != 2 and time.monotonic() < deadline:
            time.sleep(0.1)                 # the file may hold the status from before the install a while
        assert _running_config(versions, device_id) == 2, versions.read_text() if versions.exists() else None
        deadline = time.monotonic() + 30
        while ((stated := _ledger_version(cluster, device.core.device_id, IMAGE_CONFIGURATION)) is None
               or stated[1] != 2) and time.monotonic() < deadline:
            time.sleep(0.2)                 # relayed as a device-version transaction after the install
        assert stated is not None and stated[1] == 2, (stated, log.read_text())
        relay_key = site_dir / "ledger" / "keys" / "updates-relay.key"
        assert relay_key.stat().st_mode & 0o777 == 0o600
        assert "made: the update service's relay key" in "".join(run_up.lines)
    finally:
        if updates is not None:
            updates.stop()
        if device is not None:
            device.stop()
        run_up.stop()


def test_turning_updates_off_disables_the_update_account(tmp_path):
    """A site that turned updates off since an earlier run keeps no account able to publish on fw topics:
    ll-updates is disabled before the broker starts, and enabled again when updates are turned on."""
    on = up.load_config(_config(tmp_path / "on.json", updates={"enabled": True}))
    access = SiteAccess(on.data_dir / "broker", on.site)
    access.add("ll-updates", "updates")
    stack_class = up._make_stack_class()
    off = up.load_config(_config(tmp_path / "off.json"))
    stack_class(off, lambda line: None)._updates_account()
    assert access.load()["ll-updates"]["disabled"] is True
    stack_class(on, lambda line: None)._updates_account()
    assert access.load()["ll-updates"]["disabled"] is False


class _RegisterLedger:
    """The ledger as the relay key's registration sees it: each submit answered with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.submitted: list[bytes] = []

    def submit(self, tx: bytes) -> dict:
        self.submitted.append(tx)
        return {"status": "committed", "code": self.code}


def _relay_stack(tmp_path, code: int, monkeypatch):
    """An up stack of a site with updates on and its own admin key file, over a ledger answering ``code``; the
    admin keys its registrations were signed with."""
    from types import SimpleNamespace

    from ledgerlink.tools import stack as stack_module

    admin = tmp_path / "site-admin.key"
    admin.write_text("11" * 32 + "\n")
    cfg = up.load_config(_config(tmp_path / "up.json", updates={"enabled": True}, admin_key=str(admin)))
    (cfg.data_dir / "ledger" / "keys").mkdir(parents=True)
    stack = up._make_stack_class()(cfg, lambda line: None)
    stack.cluster = SimpleNamespace(config=SimpleNamespace(chain_id="ll-test"))
    ledger = _RegisterLedger(code)
    stack._ledger = lambda: ledger
    signers: list[bytes] = []
    register_tx = stack_module.enc.register_tx
    monkeypatch.setattr(stack_module.enc, "register_tx",
                        lambda chain_id, admin_priv, *a, **kw: signers.append(admin_priv)
                        or register_tx(chain_id, admin_priv, *a, **kw))
    return stack, ledger, signers


def test_the_relay_key_is_made_and_registered_once(tmp_path, monkeypatch):
    """Made at the first start (mode 0600), registered by the configured admin key, reused after."""
    stack, ledger, signers = _relay_stack(tmp_path, 0, monkeypatch)
    path = stack._updates_relay_key()
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(ledger.submitted) == 1 and signers == [bytes.fromhex("11" * 32)]
    key = path.read_bytes()
    assert stack._updates_relay_key() == path and path.read_bytes() == key
    assert len(ledger.submitted) == 1


def test_a_refused_relay_key_is_not_kept(tmp_path, monkeypatch):
    """A registration the ledger refuses stops the start with its answer and leaves no key behind, so the next
    start makes and registers one again."""
    from ledgerlink.tools.stack import StackError

    stack, ledger, _ = _relay_stack(tmp_path, 5, monkeypatch)
    with pytest.raises(StackError, match="relay key was not registered"):
        stack._updates_relay_key()
    assert list((stack.data_dir / "ledger" / "keys").iterdir()) == []
    ledger.code = 0
    stack._updates_relay_key()
    assert len(ledger.submitted) == 2
