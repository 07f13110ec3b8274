"""The CPython device client states its session chain over a real broker: every ``EVERY_FRAMES`` session
readings, ``EVERY_MS`` after a chain's first reading also when no reading follows, and when it stops, so a
gateway holding the session key cannot pass off a reading of its own as the device's."""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ledgerlink.protocol import session_chain as sc
from ledgerlink.device import core as dc
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.service import GatewayService
from ledgerlink.gateway.store import Store

from tests.device.helpers import CRYPTO, NOW, SITE, Env
from tests.device.test_client import broker, make_device  # noqa: F401 - the broker fixture

__all__ = ["broker"]


def gateway(broker, clock=lambda: NOW):  # noqa: F811
    """The real checks and store behind an MQTT client (its stored-acks keep the device's frames flowing), at the
    time ``clock()``; (env, service, queue of its Accept effects, its MQTT client)."""
    env = Env()
    env.gw.limits.burst = 100                             # the gateway's clock stands still here
    accepted: queue.Queue = queue.Queue()
    gw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-gw-chain", protocol=mqtt.MQTTv5)
    svc = GatewayService(env.gw, Store(":memory:"))

    def on_gw_message(client, userdata, msg):
        now = clock()
        checked = svc.check_many([("frame", msg.topic, msg.payload)], now)
        for e in checked.effects:
            if isinstance(e, c.Accept):
                accepted.put(e)
        h = svc.commit(checked)
        for dev_id in h.fetch:
            h.outgoing += svc.handle_registry(dev_id, env.ledger.device_proof(dev_id), now).outgoing
        for o in h.outgoing:
            client.publish(o.topic, o.payload, qos=1)

    gw.on_message = on_gw_message
    gw.on_connect = lambda cl, u, f, rc, p: cl.subscribe([("ll/%s/dev/+/up" % SITE, 1),
                                                         ("ll/%s/dev/+/session" % SITE, 1)])
    gw.connect("127.0.0.1", broker.port)
    gw.loop_start()
    time.sleep(0.3)
    return env, svc, accepted, gw


def test_client_sends_chain_statements_that_cover_its_session_readings(broker, tmp_path):  # noqa: F811
    env, svc, accepted, gw = gateway(broker)
    dev = make_device(env, broker, tmp_path, mode=dc.MODE_SESSION)
    try:
        assert dev.ensure_session(10)
        readings = [dev.publish_reading({"i": i}) for i in range(sc.EVERY_FRAMES + 1)]   # one statement due
        got = [accepted.get(timeout=10) for _ in range(len(readings) + 1)]
        readings.append(dev.publish_reading({"i": -1}))
        dev.stop(close_queue=False)                       # states the chain of the readings since
        assert not dev.core.chain_due(NOW) and dev.core.chain_statement(NOW, close=True) is None
        dev.start()
        got += [accepted.get(timeout=10) for _ in range(2)]
    finally:
        dev.stop()
        gw.loop_stop()
        gw.disconnect()
    statements = [a for a in got if a.chain is not None]
    frames = [(a.seq, a.frame) for a in got if a.mode == "session"]
    assert len(statements) == 2 and len(frames) == len(readings)
    assert (svc.chains.verified, svc.chains.refused) == (2, 0)
    covered = []
    for s in statements:
        checked = sc.verify(s.frame, dev.core.public_key, dev.core.up_topic, CRYPTO)
        covered += sc.covered(checked, frames)
    assert covered == [r.frame_hash for r in readings]


def test_client_states_a_quiet_chain_after_every_ms_without_another_reading(broker, tmp_path):  # noqa: F811
    clock = [NOW]
    env, svc, accepted, gw = gateway(broker, lambda: clock[0])
    dev = make_device(env, broker, tmp_path, mode=dc.MODE_SESSION)
    dev.clock = lambda: clock[0]
    try:
        assert dev.ensure_session(10)
        readings = [dev.publish_reading({"i": i}) for i in range(3)]       # then the device goes quiet
        got = [accepted.get(timeout=10) for _ in readings]
        clock[0] = NOW + sc.EVERY_MS - 1
        time.sleep(1.0)
        assert accepted.empty()                                          # not due yet
        clock[0] = NOW + sc.EVERY_MS
        statement = accepted.get(timeout=10)
    finally:
        dev.stop()
        gw.loop_stop()
        gw.disconnect()
    assert statement.chain is not None and (svc.chains.verified, svc.chains.refused) == (1, 0)
    checked = sc.verify(statement.frame, dev.core.public_key, dev.core.up_topic, CRYPTO)
    assert sc.covered(checked, [(a.seq, a.frame) for a in got]) == [r.frame_hash for r in readings]
