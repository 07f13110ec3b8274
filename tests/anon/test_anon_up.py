"""Anonymous sessions on a site from ``ledgerlink up`` (mosquitto with its dynamic security plugin, a 4-node
ledger, the gateway process): with ``anon.enabled`` the gateway runs the fog's service, and a device opens a
session through the broker with the shared anonymous login and a fresh client id, the cloud side takes the
grant and the reading with its own login and names the device; the fog's key file is 0600."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import signal
import stat
import time

import paho.mqtt.client as paho
import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.gateway.anon_cloud import AnonCloud
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import free_base_port
from ledgerlink.protocol import anon_device, anon_wire
from ledgerlink.protocol.codes import device_id
from ledgerlink.protocol.ledger_tx import anon_certs_tx
from ledgerlink.tools.broker_access import SiteAccess, anon_client_id, anon_cloud_username, anon_username
from tests.test_up import _rest, _start_up, free_port, write_config

pytestmark = pytest.mark.slow

SITE = "hall-9"
BATCH = 2
WAIT_S = 30.0
RESEND_S = 2.0
CRYPTO = get_backend("cpython")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _client(port: int, client_id: str, login: dict, topics: list[str], box: queue.Queue) -> paho.Client:
    ready: queue.Queue = queue.Queue()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.username_pw_set(login["username"], login["password"])
    c.on_message = lambda cl, u, m: box.put((m.topic, bytes(m.payload)))
    c.on_subscribe = lambda cl, u, mid, codes, p: ready.put([x.value for x in codes])
    c.on_connect = lambda cl, u, f, r, p: cl.subscribe([(t, 1) for t in topics]) if not r.is_failure else ready.put(r)
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert ready.get(timeout=WAIT_S) == [1] * len(topics)
    return c


def _close(c: paho.Client) -> None:
    c.disconnect()
    c.loop_stop()


def test_an_anonymous_session_through_a_running_site(tmp_path):
    escrow = CRYPTO.generate_private_key()
    broker = free_port()
    cfg = write_config(tmp_path / "up.json", data_dir="site", site=SITE, broker={"port": broker},
                       ledger={"nodes": 4, "base_port": free_base_port(4)},
                       anon={"enabled": True, "cloud_public": CRYPTO.public_key(escrow, True).hex()})
    proc, q, text = _start_up("--config", str(cfg), "--broker", "mosquitto")
    clients = []
    try:
        fog_public = bytes.fromhex(re.search(r"anonymous sessions: on; fog request key ([0-9a-f]{66})", text).group(1))
        keys = tmp_path / "site" / "ledger" / "keys"
        assert stat.S_IMODE(os.stat(keys / "anon-fog.key").st_mode) == 0o600
        admin = bytes.fromhex((keys / "admin.key").read_text().strip())
        gateway = bytes.fromhex((keys / "gateway.key").read_text().strip())
        secret = hashlib.sha256(b"anon-up-test device secret").digest()
        with LedgerClient(tmp_path / "site" / "ledger" / "cluster.json") as ledger:
            chain_id = ledger.validators()["chain_id"]
            tx = anon_certs_tx(chain_id, admin, anon_wire.certificate_batch(secret, 1, BATCH), _now_ms())
            answer = ledger.submit(tx, 20_000)
            assert answer.get("status") == "committed" and answer.get("code") == 0, answer

        dev_priv = CRYPTO.generate_private_key()
        dev_pub = CRYPTO.public_key(dev_priv, True)
        dev_id = device_id(dev_pub)
        counter = anon_device.AnonCounter(str(tmp_path / "anon.counter"), secret)
        counter.provision()
        device = anon_device.AnonDevice(SITE, dev_id, dev_priv, secret, counter, BATCH, fog_public,
                                        CRYPTO.public_key(escrow, True), os.urandom)
        access = SiteAccess(tmp_path / "site" / "broker", SITE)
        grants: queue.Queue = queue.Queue()
        clients.append(_client(broker, anon_cloud_username(SITE), access.login(anon_cloud_username(SITE)),
                               [anon_wire.grant_topic(SITE), "ll/%s/anon/up/+" % SITE], grants))
        cloud = AnonCloud(escrow, {device_id(CRYPTO.public_key(gateway, True)): CRYPTO.public_key(gateway, True)},
                          lambda d: dev_pub if d == dev_id else None)

        request = device.request(_now_ms())
        answers: queue.Queue = queue.Queue()
        dev_client = _client(broker, anon_client_id(), access.login(anon_username(SITE)), [request.reply_topic],
                             answers)
        clients.append(dev_client)
        deadline = time.monotonic() + WAIT_S
        while answers.empty() and time.monotonic() < deadline:      # as the board's AnonClient: sent again until
            dev_client.publish(request.topic, request.payload, qos=1)  # the fog, maybe still connecting, answers
            time.sleep(RESEND_S)
        topic, payload = answers.get(timeout=1)
        assert answers.empty()                                      # a copy the fog saw is a replay: one answer
        session = anon_device.check_response(request, payload)
        grant_topic, grant = grants.get(timeout=WAIT_S)
        assert grant_topic == anon_wire.grant_topic(SITE)
        cloud_session = cloud.on_grant(grant)
        assert cloud_session.key == session.key and cloud.deanonymize(cloud_session) == dev_id
        data_topic, frame = session.seal(SITE, b"temp=21.5 C")
        dev_client.publish(data_topic, frame, qos=1).wait_for_publish(WAIT_S)
        assert cloud.open_data(*grants.get(timeout=WAIT_S), _now_ms())[2] == b"temp=21.5 C"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        for c in clients:
            _close(c)
        _rest(proc, q)

    # turned off again: the same site starts without the fog's service and the anonymous logins are refused
    write_config(cfg, data_dir="site", site=SITE, broker={"port": broker}, ledger={"nodes": 4})
    proc, q, text = _start_up("--config", str(cfg), "--broker", "mosquitto")
    try:
        assert "anonymous sessions: off" in text
        for username in (anon_username(SITE), anon_cloud_username(SITE)):
            refused: queue.Queue = queue.Queue()
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                            client_id=anon_client_id() if username == anon_username(SITE) else username)
            login = access.login(username)
            c.username_pw_set(login["username"], login["password"])
            c.on_connect = lambda cl, u, f, r, p: refused.put(r.is_failure)
            c.reconnect_delay_set(60, 60)
            c.connect("127.0.0.1", broker)
            c.loop_start()
            try:
                assert refused.get(timeout=WAIT_S), username
            finally:
                c.loop_stop()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        _rest(proc, q)
