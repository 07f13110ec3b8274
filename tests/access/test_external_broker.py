"""``ledgerlink up`` with an external broker: given the login of a mosquitto dynamic-security admin
(``broker.admin_login``) it makes the site's accounts and ACLs there over ``$CONTROL/dynamic-security/v1``
and keeps them (registrations, bans, key rotations); without one it says once what the operator must set up.
The external broker is a real mosquitto with the dynamic security plugin, started by the test."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools import up
from ledgerlink.tools.broker_access import (ADMIN_USER, AccessError, SiteAccess, anonymous_accepted,
                                            consumer_username, client_tls_context, device_login, device_username,
                                            dynsec_command, external_advice, find_dynsec_plugin, hash_password,
                                            site_tls)
from ledgerlink.tools.stack import find_mosquitto, free_port
from tests.access.conftest import CRYPTO, NOT_AUTHORIZED, Client, Dev

ADMIN = {"username": "site-ops", "password": "external-admin-password-0123456789"}
MOSQUITTO: dict[int, subprocess.Popen] = {}          # port -> the external mosquitto listening there


def _dynsec_file(path: Path, default_allow: bool) -> None:
    """A plugin config with one admin (``ADMIN``) who may only use the control topic; the defaults of
    ``mosquitto_ctrl dynsec init`` (receive allowed), or everything allowed."""
    h = hash_password(ADMIN["password"])
    path.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": default_allow, "publishClientReceive": True,
                             "subscribe": default_allow, "unsubscribe": True},
        "clients": [{"username": ADMIN["username"], "password": h["hash"], "salt": h["salt"],
                     "iterations": h["iterations"], "roles": [{"rolename": "admin"}]}],
        "groups": [],
        "roles": [{"rolename": "admin", "acls": [
            {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#", "allow": True},
            {"acltype": "publishClientReceive", "topic": "$CONTROL/dynamic-security/#", "allow": True},
            {"acltype": "subscribePattern", "topic": "$CONTROL/dynamic-security/#", "allow": True}]}]}))


@contextlib.contextmanager
def external_mosquitto(folder: Path, open_broker: bool = False, tls: bool = False):
    """A mosquitto with the dynamic security plugin, not started by ``up`` (``open_broker``: anonymous
    clients and everything allowed by default; ``tls``: its one listener speaks TLS, with a certificate
    from its operator's CA in ``folder/tls/ca.pem``): yields (port, admin login file)."""
    folder.mkdir()
    _dynsec_file(folder / "dynsec.json", default_allow=open_broker)
    port = free_port()
    listener = "listener %d 127.0.0.1\n" % port
    if tls:
        paths = site_tls(folder, "operator", ["127.0.0.1"])
        listener += "cafile %s\ncertfile %s\nkeyfile %s\n" % (paths["ca"], paths["cert"], paths["key"])
    (folder / "mosquitto.conf").write_text(
        "%sallow_anonymous %s\npersistence false\nuser %s\nplugin %s\nplugin_opt_config_file %s\n"
        % (listener, "true" if open_broker else "false", pwd.getpwuid(os.geteuid()).pw_name, find_dynsec_plugin(),
           folder / "dynsec.json"))
    proc = subprocess.Popen([find_mosquitto(), "-c", str(folder / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    login = folder / "admin.json"
    login.write_text(json.dumps(ADMIN))
    os.chmod(login, 0o600)
    MOSQUITTO[port] = proc
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                anonymous_accepted("127.0.0.1", port, folder / "tls" / "ca.pem" if tls else None)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the external mosquitto did not start"
                time.sleep(0.05)
        yield port, login
    finally:
        MOSQUITTO.pop(port, None)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def external(tmp_path):
    with external_mosquitto(tmp_path / "external") as found:
        yield found


def _site(tmp_path: Path, port: int, **broker) -> up.UpConfig:
    path = tmp_path / "up.json"
    path.write_text(json.dumps({"data_dir": "site", "site": "ext", "ledger": {"nodes": 1},
                                "broker": {"external": "127.0.0.1:%d" % port, **broker}}))
    return up.load_config(path)


@pytest.mark.slow
def test_up_makes_and_keeps_the_accounts_on_an_external_mosquitto(tmp_path, external):
    port, login = external
    cfg = _site(tmp_path, port, admin_login=str(login))
    up.preflight(cfg)
    up.make_ledger(cfg)
    lines: list[str] = []
    stack = up._make_stack_class()(cfg, lines.append)
    try:
        stack.start()
        assert any("broker accounts: 2 made, 0 changed, 0 deleted, 0 as they were on the external broker 127.0.0.1:%d"
                   % port in l for l in lines), lines
        assert not any(l.startswith("warning") for l in lines), lines
        assert not stack.access.credentials_path(ADMIN_USER).exists()     # the broker's admin is its operator's
        assert not Client(stack, "anybody").accepted                       # no account, no connection
        dev = Dev(stack)
        stack.register([dev.registration()])                              # its account made there as it registers
        c = dev.client()
        assert c.subscribe("ll/ext/dev/+/down") == NOT_AUTHORIZED         # the device role's ACLs apply
        dev.served(c)                                                      # the gateway logged in with its account
        consumer = Client(stack, consumer_username("ext"), stack.consumer_login())
        assert consumer.accepted and consumer.subscribe("#") == NOT_AUTHORIZED
        consumer.close()
        stack.follow_bans()
        new_priv = CRYPTO.generate_private_key()                          # a key rotation on the ledger
        assert stack.ledger.submit(enc.rotate_key_tx(stack.chain_id, dev.priv, new_priv,
                                                     int(time.time() * 1000)))["status"] == "committed"
        t0 = time.monotonic()
        while not c.disconnected.is_set() and time.monotonic() - t0 < 1.0:
            stack.follow_bans()
            time.sleep(0.25)
        assert c.disconnected.is_set()
        assert not Client(stack, dev.username, device_login(dev.id, dev.priv, stack.access.login_public())).accepted
        new = Client(stack, dev.username, device_login(dev.id, new_priv, stack.access.login_public()))
        assert new.accepted
        new.close()
    finally:
        stack.stop()
    again: list[str] = []                                                 # a second run finds the accounts in place
    stack = up._make_stack_class()(cfg, again.append)
    try:
        stack.start()
        assert any("broker accounts: 0 made, 0 changed, 0 deleted, 3 as they were on the external broker" in l
                   for l in again), again
        assert Client(stack, dev.username, stack.login(dev.username)).accepted
    finally:
        stack.stop()


def test_external_broker_login_checked_open_settings_named_and_advice(tmp_path, external):
    port, login = external
    lines = SiteAccess(tmp_path / "broker", "ext").sync_external("127.0.0.1", port, login)
    assert len(lines) == 1 and "2 made, 0 changed" in lines[0], lines                  # nothing to warn about
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"username": ADMIN["username"], "password": "wrong"}))
    with pytest.raises(AccessError, match="login refused"):
        SiteAccess(tmp_path / "other", "ext").sync_external("127.0.0.1", port, bad)
    with external_mosquitto(tmp_path / "open", open_broker=True) as (open_port, open_login):
        lines = SiteAccess(tmp_path / "broker3", "ext").sync_external("127.0.0.1", open_port, open_login)
    assert any("allows publishClientSend, subscribe by default" in l and "setDefaultACLAccess subscribe deny" in l
               for l in lines), lines
    assert any("accepts anonymous clients: set `allow_anonymous false`" in l for l in lines), lines
    with pytest.raises(up.ConfigError, match=r"missing.json is not a readable JSON file .*\(broker.admin_login\)"):
        up.preflight(_site(tmp_path, port, admin_login="missing.json"))
    advice = external_advice("ext", "127.0.0.1", port)
    for needed in ("broker.admin_login", "allow_anonymous false", "mosquitto_ctrl dynsec init", "ll-gw-ext-1",
                   "ll-app-ext", "Broker accounts and ACLs"):
        assert needed in advice


def test_an_external_broker_over_tls(tmp_path):
    """With broker.tls_ca the accounts are made, and the gateway connects, over TLS checked against the
    operator's CA: no password crosses the network in the clear."""
    with external_mosquitto(tmp_path / "external", tls=True) as (port, login):
        ca = tmp_path / "external" / "tls" / "ca.pem"
        with pytest.raises(AccessError, match="did not take"):        # a broker its CA did not certify
            SiteAccess(tmp_path / "broker", "ext").sync_external("127.0.0.1", port, login,
                                                                  tls_ca=site_tls(tmp_path / "other", "x", [])["ca"])
        cfg = _site(tmp_path, port, admin_login=str(login), tls_ca=str(ca))
        up.preflight(cfg)
        up.make_ledger(cfg)
        lines: list[str] = []
        stack = up._make_stack_class()(cfg, lines.append)
        try:
            stack.start()
            assert any("broker accounts: 2 made, 0 changed" in l for l in lines), lines
            consumer = Client(stack, consumer_username("ext"), stack.consumer_login(), tls=client_tls_context(ca))
            assert consumer.accepted
            consumer.close()
            deadline = time.monotonic() + 10
            while "MQTT connected to" not in (stack.data_dir / "gateway.log").read_text():
                assert time.monotonic() < deadline, (stack.data_dir / "gateway.log").read_text()[-2000:]
                time.sleep(0.1)
        finally:
            stack.stop()


READ_ONLY = {"getDefaultACLAccess", "listClients", "listRoles", "getClient", "getRole"}


@pytest.fixture
def sent(monkeypatch):
    """The dynamic-security commands sent to a broker (by name), in order; cleared by the test."""
    from ledgerlink.tools import broker_access

    names: list[str] = []
    real = broker_access.dynsec_command

    def spy(host, port, login, commands, *args, **kwargs):
        names.extend(c["command"] for c in commands)
        return real(host, port, login, commands, *args, **kwargs)

    monkeypatch.setattr(broker_access, "dynsec_command", spy)
    return names


def test_a_restart_sends_only_what_differs_and_connected_devices_stay(tmp_path, external, sent):
    """``sync_external`` reads the broker's clients and roles and sends only what differs from the accounts:
    with nothing changed no modifying command (the plugin's file is not written) and no device
    disconnected; a new password, a disabled account, an account gone and an ACL someone widened on the
    broker are each put right."""
    port, login = external
    saved = tmp_path / "external" / "dynsec.json"
    access = SiteAccess(tmp_path / "broker", "ext")
    first = access.sync_external("127.0.0.1", port, login)
    assert "2 made, 0 changed, 0 deleted, 0 as they were" in first[0], first
    devs = [bytes([i]) * 16 for i in (1, 2, 3, 4)]
    logins = [access.add_device(d) for d in devs]                        # made there as they are added
    clients = [Client(None, x["username"], x, port=port) for x in logins]
    assert all(c.accepted for c in clients)
    del sent[:]
    before = saved.stat().st_mtime_ns, saved.read_bytes()
    again = access.sync_external("127.0.0.1", port, login)               # `up` started again, nothing changed
    assert sent and set(sent) <= READ_ONLY, sent
    assert (saved.stat().st_mtime_ns, saved.read_bytes()) == before
    assert "0 made, 0 changed, 0 deleted, 6 as they were" in again[0], again
    time.sleep(0.5)
    assert not any(c.disconnected.is_set() for c in clients)

    access.write_runtime("stopped", "127.0.0.1", port)                  # changes while nobody runs the site
    rotated = access.add_device(devs[0], rotate=True)
    access.set_disabled(device_username(devs[1]), True)
    accounts = access.load()
    del accounts[device_username(devs[2])]
    access._save(accounts)
    widened = [{"acltype": "subscribePattern", "topic": "#", "allow": True}]
    assert not dynsec_command("127.0.0.1", port, ADMIN, [{"command": "modifyRole", "rolename": consumer_username("ext"),
                                                          "acls": widened}])[0].get("error")
    del sent[:]
    lines = access.sync_external("127.0.0.1", port, login)
    changes = sorted(c for c in sent if c not in READ_ONLY)
    assert changes == ["deleteClient", "deleteRole", "disableClient", "modifyClient", "modifyRole"], changes
    assert "0 made, 3 changed, 1 deleted, 2 as they were" in lines[0], lines
    deadline = time.monotonic() + 2
    while not all(c.disconnected.is_set() for c in clients[:3]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c.disconnected.is_set() for c in clients] == [True, True, True, False]
    assert not Client(None, logins[0]["username"], logins[0], port=port).accepted     # the old password
    assert Client(None, rotated["username"], rotated, port=port).accepted
    assert not Client(None, logins[1]["username"], logins[1], port=port).accepted     # disabled
    assert not Client(None, logins[2]["username"], logins[2], port=port).accepted     # gone
    consumer = Client(None, consumer_username("ext"), access.login(consumer_username("ext")), port=port)
    assert consumer.accepted and consumer.subscribe("#") == NOT_AUTHORIZED             # its ACLs as they should be
    del sent[:]
    lines = access.sync_external("127.0.0.1", port, login)                          # and now as they were
    assert set(sent) <= READ_ONLY and "0 made, 0 changed, 0 deleted, 5 as they were" in lines[0], (sent, lines)
    for c in [consumer] + clients:
        c.close()


def test_commands_wait_while_a_slow_broker_still_answers(external):
    """A broker that answers slowly (here: stopped for 1 s at a time, 6 times) is waited for as long as it
    goes on answering within ``timeout``, however long the whole list takes; one that stops answering is not."""
    port, login = external
    proc = MOSQUITTO[port]
    stopped = threading.Event()

    def pauses() -> None:
        for i in range(6):
            if i:
                os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(1.0)
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.2)
        stopped.set()

    commands = [{"command": "createRole", "rolename": "slow-%d" % i} for i in range(320)]     # 5 messages
    os.kill(proc.pid, signal.SIGSTOP)                  # stopped before the first command, so no answer comes at once
    threading.Thread(target=pauses, daemon=True).start()
    t0 = time.monotonic()
    answers = dynsec_command("127.0.0.1", port, ADMIN, commands, timeout=2.5)
    took = time.monotonic() - t0
    assert len(answers) == len(commands) and not any(a.get("error") for a in answers), answers[-1:]
    assert took > 1.0, took                                           # it waited through a pause
    assert stopped.wait(10)
    os.kill(proc.pid, signal.SIGSTOP)                                  # and one that does not answer at all
    try:
        t0 = time.monotonic()
        with pytest.raises(AccessError):
            dynsec_command("127.0.0.1", port, ADMIN, [{"command": "listRoles"}], timeout=1.0)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
