"""The CPython device client states its session chain over a real broker: every 16 session readings and
when it stops, so a gateway holding the session key cannot pass off a reading of its own as the device's."""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ledgerlink.core import session_chain as sc
from ledgerlink.device import core as dc
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.service import GatewayService
from ledgerlink.gateway.store import Store

from tests.device.helpers import CRYPTO, NOW, SITE, Env
from tests.device.test_client import broker, make_device  # noqa: F401 - the broker fixture

__all__ = ["broker"]


def test_client_sends_chain_statements_that_cover_its_session_readings(broker, tmp_path):  # noqa: F811
    env = Env()
    env.gw.limits.burst = 100                             # the gateway's clock stands still here
    accepted: queue.Queue = queue.Queue()
    gw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-gw-chain", protocol=mqtt.MQTTv5)
    svc = GatewayService(env.gw, Store(":memory:"))     # the real checks and store: its stored-acks keep frames flowing

    def on_gw_message(client, userdata, msg):
        checked = svc.check_many([("frame", msg.topic, msg.payload)], NOW)
        for e in checked.effects:
            if isinstance(e, c.Accept):
                accepted.put(e)
        h = svc.commit(checked)
        for dev_id in h.fetch:
            h.outgoing += svc.handle_registry(dev_id, env.ledger.device_proof(dev_id), NOW).outgoing
        for o in h.outgoing:
            client.publish(o.topic, o.payload, qos=1)

    gw.on_message = on_gw_message
    gw.on_connect = lambda cl, u, f, rc, p: cl.subscribe([("ll/%s/dev/+/up" % SITE, 1),
                                                         ("ll/%s/dev/+/session" % SITE, 1)])
    gw.connect("127.0.0.1", broker.port)
    gw.loop_start()
    time.sleep(0.3)
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
