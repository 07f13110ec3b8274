"""The broker accounts of anonymous sessions, on a real mosquitto (dynamic security plugin) and the embedded
broker: made only when the site turns anonymous sessions on; the shared anonymous account connects with a
fresh client id per session and reaches only ``ll/S/anon/...``: the request topic, its own data topics and the
one answer topic it names (never a wildcard, so no session reads or finds another's answer); a registered
device's account cannot read anonymous answers, nor send a request."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ledgerlink.protocol import anon_wire
from ledgerlink.tools.broker_access import (SiteAccess, anon_client_id, anon_cloud_username, anon_fog_username,
                                            anon_username, device_username, gateway_username)
from ledgerlink.tools.stack import mosquitto_config
from tests.access.conftest import NOT_AUTHORIZED
from tests.gateway.test_mqtt_client import MOSQUITTO, free_port, wait_port

SITE = "plant-7"
OTHER_DEVICE = bytes(range(16))
GRANTED_QOS1 = 1
CUT_OFF_S = 5.0             # the embedded broker reads the accounts every 0.2 s; mosquitto is told at once
SENT = (0x00, 0x10)           # PUBACK success, or success with no matching subscribers


class _Port:
    def __init__(self, port: int) -> None:
        self.broker_port = port


def _start(kind: str, access: SiteAccess, folder) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if kind == "mosquitto":
        conf = folder / "mosquitto.conf"
        conf.write_text(mosquitto_config(folder, "127.0.0.1", port, access.mosquitto_lines()))
        cmd = [MOSQUITTO, "-c", str(conf)]
    else:
        cmd = [sys.executable, "-m", "ledgerlink.tools.mqtt_broker", "--port", str(port), "--accounts",
               str(access.accounts_path), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def _site(tmp_path):
    access = SiteAccess(tmp_path / "broker", SITE)
    access.site_accounts(1, broker_admin=False)
    off = access.load()
    access.anon_accounts(1)
    access.add_device(OTHER_DEVICE)
    return access, off


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request, tmp_path):
    access, off = _site(tmp_path)
    proc, port = _start(request.param, access, tmp_path)
    try:
        yield request.param, access, _Port(port), off
    finally:
        proc.terminate()
        proc.wait(10)


def _client(port, client_id, login):
    from tests.access.conftest import Client

    return Client(port, client_id, login)


def test_anonymous_accounts_exist_only_when_turned_on(broker):
    _, access, _, off = broker
    assert not any("anon" in username for username in off)
    assert {anon_username(SITE), anon_fog_username(SITE, 1), anon_cloud_username(SITE)} <= set(access.load())


def test_the_anonymous_account_reaches_only_its_own_anonymous_topics(broker):
    kind, access, port, _ = broker
    login = access.login(anon_username(SITE))
    tag_a, tag_b = b"\x01" * anon_wire.REPLY_TAG_LEN, b"\x02" * anon_wire.REPLY_TAG_LEN
    fog = _client(port, anon_fog_username(SITE, 1), access.login(anon_fog_username(SITE, 1)))
    a = _client(port, anon_client_id(), login)
    b = _client(port, anon_client_id(), login)
    dev = _client(port, device_username(OTHER_DEVICE), access.login(device_username(OTHER_DEVICE)))
    clients = [fog, a, b, dev]
    try:
        assert all(c.accepted for c in clients), [hex(c.code) for c in clients]
        assert fog.subscribe("$share/ll-anon-%s/%s" % (SITE, anon_wire.request_topic(SITE))) == GRANTED_QOS1
        assert a.subscribe(anon_wire.reply_topic(SITE, tag_a)) == GRANTED_QOS1
        assert b.subscribe(anon_wire.reply_topic(SITE, tag_b)) == GRANTED_QOS1
        for filt in ("ll/%s/anon/rsp/+" % SITE, "ll/%s/anon/rsp/#" % SITE, "ll/%s/anon/#" % SITE, "#",
                     "ll/%s/anon/+/%s" % (SITE, tag_a.hex()), "$share/g/" + anon_wire.reply_topic(SITE, tag_a),
                     anon_wire.request_topic(SITE), anon_wire.grant_topic(SITE), "ll/%s/anon/up/+" % SITE,
                     "ll/%s/dev/+/down" % SITE, "ll/%s/dev/%s/down" % (SITE, OTHER_DEVICE.hex()),
                     "ll/%s/verified/+" % SITE, "ll/%s/ledger/header" % SITE):
            assert b.subscribe(filt) == NOT_AUTHORIZED, filt
        for topic in ("ll/%s/dev/%s/up" % (SITE, OTHER_DEVICE.hex()), "ll/%s/dev/%s/down" % (SITE, OTHER_DEVICE.hex()),
                      anon_wire.reply_topic(SITE, tag_a), anon_wire.grant_topic(SITE), "ll/%s/verified/x" % SITE):
            assert b.publish(topic, b"x") == NOT_AUTHORIZED, topic
        for filt in ("ll/%s/anon/rsp/+" % SITE, anon_wire.reply_topic(SITE, tag_a), anon_wire.request_topic(SITE),
                     "ll/%s/anon/up/+" % SITE, anon_wire.grant_topic(SITE)):
            assert dev.subscribe(filt) == NOT_AUTHORIZED, filt
        assert dev.publish(anon_wire.request_topic(SITE), b"request") == NOT_AUTHORIZED
        assert a.publish(anon_wire.request_topic(SITE), b"request") in SENT
        assert a.publish("ll/%s/anon/up/%s" % (SITE, "00" * anon_wire.SESSION_ID_LEN), b"data") in SENT
        assert [m[:2] for m in fog.drain(2.0)] == [(anon_wire.request_topic(SITE), b"request")]
        assert fog.publish(anon_wire.reply_topic(SITE, tag_a), b"answer") in SENT
        assert [m[:2] for m in a.drain(1.0)] == [(anon_wire.reply_topic(SITE, tag_a), b"answer")]
        assert b.drain(0.3) == [] and dev.drain(0.1) == []
    finally:
        for c in clients:
            c.close()


def test_accounts_of_anonymous_sessions_turned_off_are_refused(tmp_path):
    access, _ = _site(tmp_path)
    access.anon_accounts(1, enabled=False)
    logins = [access.login(u) for u in (anon_username(SITE), anon_fog_username(SITE, 1), anon_cloud_username(SITE))]
    for kind in ("mosquitto", "embedded"):
        proc, port = _start(kind, access, tmp_path)
        try:
            for login in logins:
                c = _client(_Port(port), anon_client_id() if login["username"] == anon_username(SITE)
                            else login["username"], login)
                assert not c.accepted, (kind, login["username"])
                c.close()
        finally:
            proc.terminate()
            proc.wait(10)
    access.anon_accounts(1)                                  # on again: the same accounts, enabled
    assert not any(a.get("disabled") for a in access.load().values())


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_turning_anonymous_sessions_off_cuts_connected_anonymous_clients_off(kind, tmp_path):
    access, _ = _site(tmp_path)
    access.site_accounts(1)                                  # with the broker admin, which applies changes live
    proc, port = _start(kind, access, tmp_path)
    access.write_runtime(kind, "127.0.0.1", port)
    clients = []
    try:
        anon = [_client(_Port(port), anon_client_id(), access.login(anon_username(SITE))) for _ in range(2)]
        dev = _client(_Port(port), device_username(OTHER_DEVICE), access.login(device_username(OTHER_DEVICE)))
        clients = anon + [dev]
        assert all(c.accepted for c in clients)
        access.anon_accounts(1, enabled=False)
        assert all(c.disconnected.wait(CUT_OFF_S) for c in anon)
        assert not dev.disconnected.is_set()
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(10)


def test_the_anonymous_accounts_on_an_external_mosquitto(tmp_path):
    from tests.access.test_external_broker import external_mosquitto

    with external_mosquitto(tmp_path / "external") as (port, admin_login):
        access = SiteAccess(tmp_path / "broker", SITE)
        access.anon_accounts(1)
        lines = access.sync_external("127.0.0.1", port, admin_login)
        assert any("5 made, 0 changed" in line for line in lines), lines       # gateway, consumer and the three
        tag = b"\x03" * anon_wire.REPLY_TAG_LEN
        c = _client(_Port(port), anon_client_id(), access.login(anon_username(SITE)))
        try:
            assert c.accepted
            assert c.subscribe(anon_wire.reply_topic(SITE, tag)) == GRANTED_QOS1
            assert c.subscribe("ll/%s/anon/rsp/+" % SITE) == NOT_AUTHORIZED
        finally:
            c.close()
        again = access.sync_external("127.0.0.1", port, admin_login)
        assert any("0 made, 0 changed, 0 deleted, 5 as they were" in line for line in again), again


def test_the_anonymous_account_takes_no_registered_client_id_on_the_embedded_broker(tmp_path):
    access, _ = _site(tmp_path)
    proc, port = _start("embedded", access, tmp_path)
    login = access.login(anon_username(SITE))
    try:
        for client_id in (gateway_username(SITE, 1), device_username(OTHER_DEVICE), anon_username(SITE), "",
                          "anon-" + "0" * 15, "anon-" + "G" * 16):
            c = _client(_Port(port), client_id, login)
            assert not c.accepted, client_id
            c.close()
        c = _client(_Port(port), anon_client_id(), login)
        assert c.accepted
        c.close()
    finally:
        proc.terminate()
        proc.wait(10)
