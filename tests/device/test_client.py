"""Device over a real mosquitto broker: live readings, queueing while the broker is down, sessions,
receipts and commands through MQTT."""

from __future__ import annotations

import getpass
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ledgerlink.core import cbor, cose
from ledgerlink.device import core as dc
from ledgerlink.device.client import Device, backoff_delay
from ledgerlink.device.offline_queue import OfflineQueue
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.batcher import Batcher
from ledgerlink.gateway.mqtt_adapter import MqttGateway
from ledgerlink.gateway.service import GatewayService
from ledgerlink.gateway.store import Store

from tests.device.helpers import CRYPTO, NOW, SITE, Env

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on a free port, with persistence so sessions and queued messages survive a restart.

    ``user`` keeps the broker as the test's user, so it can write its database into the test directory.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             "persistence_location %s/\nautosave_interval 0\nuser %s\n"
                             % (self.port, workdir, getpass.getuser()))
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start on port %d" % self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture()
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A paho subscriber with a persistent session (it gets what was published while it reconnected)."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-sub-%d" % os.getpid(),
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.redelivered: list = []
        self.client.on_message = self._on_message
        self.subscribed = False
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, keepalive=5, clean_start=False, properties=props)
        self.client.loop_start()

    def _on_message(self, client, userdata, m) -> None:
        # A broker restart may redeliver (DUP set) a frame whose PUBACK from this subscriber it never
        # saw: QoS 1 is at-least-once between broker and subscriber, and that is not the device's doing.
        (self.redelivered.append if m.dup else self.messages.put)((m.topic, m.payload))

    def take(self, n: int, timeout: float = 15.0) -> list:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            try:
                out.append(self.messages.get(timeout=0.1))
            except queue.Empty:
                pass
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def seq_of(env: Env, dev: dc.DeviceCore, topic: str, payload: bytes) -> int:
    body = cose.verify_sign1(payload, dev.public_key, topic.encode(), CRYPTO)
    return cbor.loads(body)[2]


def make_device(env: Env, broker: Broker, tmp_path: Path, **kw) -> Device:
    dev = Device(env.device(), OfflineQueue(tmp_path / "queue.db"), "127.0.0.1", broker.port, keepalive=5,
                 backoff_initial=0.05, backoff_max=0.4, clock=lambda: NOW, **kw)
    dev.start()
    assert dev.wait_connected(10)
    return dev


def test_backoff_grows_with_jitter_and_is_capped():
    assert backoff_delay(0, 0.5, 30, lambda: 0.0) == 0.25
    assert backoff_delay(0, 0.5, 30, lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 30, lambda: 0.0) == 2.0
    assert backoff_delay(50, 0.5, 30, lambda: 1.0) == 30
    delays = {round(backoff_delay(4, 0.5, 30), 6) for _ in range(20)}
    assert len(delays) > 1 and all(4.0 <= d <= 8.0 for d in delays)


def test_readings_are_published_and_queued_while_the_broker_is_down(broker, tmp_path):
    env = Env()
    sub = Subscriber(broker.port, "ll/%s/dev/+/up" % SITE)
    time.sleep(0.3)
    dev = make_device(env, broker, tmp_path)
    try:
        live = [dev.publish_reading({"t": 20 + i}) for i in range(3)]
        got = sub.take(3)
        assert [seq_of(env, dev.core, t, p) for t, p in got] == [o.seq for o in live] == [1, 2, 3]
        assert dev.wait_sent(5)

        broker.stop()
        assert wait_for(lambda: not dev.connected)
        offline = [dev.publish_reading({"t": 30 + i}) for i in range(5)]
        time.sleep(0.5)                                          # several reconnect attempts fail meanwhile
        assert len(dev.queue) == 8                               # no gateway stored the first 3 either

        broker.start()
        assert dev.wait_connected(10)
        got = sub.take(5)
        assert [seq_of(env, dev.core, t, p) for t, p in got] == [o.seq for o in offline] == [4, 5, 6, 7, 8]
        assert [p for _, p in got] == [o.payload for o in offline]             # the original frames
        assert dev.wait_sent(5) and dev.connects >= 2
        assert sub.take(1, timeout=0.3) == []                                  # nothing twice
        assert {p for _, p in sub.redelivered} <= {o.payload for o in live}
    finally:
        dev.stop()
        sub.close()


def test_queue_survives_a_device_restart(broker, tmp_path):
    env = Env()
    sub = Subscriber(broker.port, "ll/%s/dev/+/up" % SITE)
    time.sleep(0.3)
    broker.stop()
    dev = Device(env.device(), OfflineQueue(tmp_path / "queue.db"), "127.0.0.1", broker.port,
                 backoff_initial=0.05, backoff_max=0.2, clock=lambda: NOW)
    dev.start()
    frames = [dev.publish_reading({"n": i}) for i in range(4)]
    dev.stop()                                                   # never connected; frames stay on disk
    broker.start()
    dev2 = Device(dev.core, OfflineQueue(tmp_path / "queue.db"), "127.0.0.1", broker.port, clock=lambda: NOW)
    dev2.start()
    try:
        got = sub.take(4)
        assert [p for _, p in got] == [f.payload for f in frames]
        assert dev2.wait_sent(5)
    finally:
        dev2.stop()
        sub.close()


def test_session_receipts_and_commands_over_mqtt(broker, tmp_path):
    env = Env()
    receipts: list = []
    commands: list = []
    # a minimal gateway: the real checks on the site topics, replies published back
    gw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-gw", protocol=mqtt.MQTTv5)
    accepted: queue.Queue = queue.Queue()

    def on_gw_message(client, userdata, msg):
        for e in env.feed(msg.topic, msg.payload):
            if isinstance(e, c.Reply):
                client.publish(e.topic, e.payload, qos=1)
            elif isinstance(e, c.Accept):
                accepted.put(e)

    gw.on_message = on_gw_message
    gw.on_connect = lambda cl, u, f, rc, p: cl.subscribe([("ll/%s/dev/+/up" % SITE, 1),
                                                         ("ll/%s/dev/+/session" % SITE, 1)])
    gw.connect("127.0.0.1", broker.port)
    gw.loop_start()
    time.sleep(0.3)
    dev = make_device(env, broker, tmp_path, mode=dc.MODE_SESSION, on_receipt=receipts.append,
                      on_command=commands.append)
    try:
        signed = dev.publish_reading({"t": 1})                     # no session yet: signed
        assert dev.ensure_session(10)
        enc = dev.publish_reading({"t": 2})
        assert cose.decode_encrypt0(enc.payload).kid == dev.core.session.keys.session_id
        got = [accepted.get(timeout=10) for _ in range(2)]
        assert [(a.seq, a.mode) for a in got] == [(signed.seq, "sign1"), (enc.seq, "session")]

        for r in env.receipts([a.frame_hash for a in got], [a.seq for a in got]):
            gw.publish(dev.core.down_topic, cbor.dumps(r), qos=1)
        forged = env.receipts([bytes(32)], [99])[0]
        gw.publish(dev.core.down_topic, cbor.dumps(forged), qos=1)
        assert wait_for(lambda: len(receipts) == 3)
        assert [(r.valid, r.seq) for r in receipts] == [(True, 1), (True, 2), (False, 99)]

        dev.core.open_commands(dc.MemoryRecord(), NOW, new_identity=True)
        dev.core.update_controller(env.ledger.device_proof(env.net["controller"].id))
        gw.publish(dev.core.cmd_topic, env.command("controller", dev.core.device_id, 1, "reboot", None, NOW + 1000),
                   qos=1)
        gw.publish(dev.core.cmd_topic, env.command("sensor", dev.core.device_id, 2, "reboot", None, NOW + 1000),
                   qos=1)
        assert wait_for(lambda: len(commands) == 2)
        assert commands[0].accepted and commands[0].action == "reboot"
        assert not commands[1].accepted and "not a controller" in commands[1].reason
    finally:
        dev.stop()
        gw.loop_stop()
        gw.disconnect()


# --- end to end: the real gateway (checks, store, batcher, MQTT transport) in this process ------------

class LiveGateway:
    """The site gateway over the test's mosquitto and the FakeLedgerAdapter ledger of ``env``; its clock
    (and the ledger's) runs from NOW, so rate limits refill."""

    def __init__(self, env: Env, broker: Broker, path: Path, limits: c.Limits | None = None,
                 batch_interval_ms: int = 100) -> None:
        start = time.monotonic()
        clock = lambda: NOW + int((time.monotonic() - start) * 1000)   # noqa: E731
        env.ledger.clock = clock
        net = env.net
        keys = c.GatewayKeys(net["gateway"].priv, net["gw-ca"].priv, net["gw-site"].priv)
        core = c.GatewayCore(SITE, keys, net.chain_id, env.ledger.keys, limits, backend=CRYPTO)
        self.store = Store(path)
        self.service = GatewayService(core, self.store)
        batcher = Batcher(self.store, env.ledger, SITE, net.chain_id, env.ledger.keys, net["gateway"].priv,
                          interval_ms=batch_interval_ms)
        self.gw = MqttGateway(self.service, batcher, env.ledger, SITE, "127.0.0.1", broker.port, "test-gw-live",
                              clock=clock)
        self.thread = threading.Thread(target=self.gw.run, daemon=True)
        self.thread.start()
        assert self.gw.connected.wait(10)

    def seqs(self) -> list[int]:
        return [m.seq for m in self.store.unbatched(10_000)] + [
            seq for b in self.store.batches("pending") + self.store.batches("anchored")
            for _, _, seq, _ in self.store.batch_leaves(b.id)]

    def stop(self) -> None:
        self.gw.stop()
        self.thread.join(30)
        self.store.close()


def gateway_keys(env: Env) -> dict:
    gw = env.net["gateway"]
    return {gw.id: CRYPTO.public_key(gw.priv, True)}


def test_frames_a_broker_had_no_gateway_for_stay_queued_until_a_gateway_stores_them(broker, tmp_path):
    """mosquitto answers a frame no one subscribed to with PUBACK 0x10 and drops it: the frame stays."""
    env = Env()
    dev = make_device(env, broker, tmp_path)
    gw = None
    try:
        frames = [dev.publish_reading({"n": i}) for i in range(5)]
        time.sleep(1.0)                                   # each published, PUBACK 0x10, published again...
        assert len(dev.queue) == 5 and dev.resent >= 5
        gw = LiveGateway(env, broker, tmp_path / "gw.db")
        assert dev.wait_flushed(20)
        assert sorted(gw.seqs()) == [f.seq for f in frames]
        assert wait_for(lambda: dev.receipts_valid == 5 and dev.awaiting_receipts == 0, 20)
        assert all(dev.receipt(seq=f.seq) is not None for f in frames) and dev.acks_valid >= 5
    finally:
        dev.stop()
        if gw is not None:
            gw.stop()


def test_a_backlog_drains_within_the_gateway_rate_limit_and_nothing_is_lost(broker, tmp_path):
    """40 readings made offline, flushed to a gateway with its default limit (10/s, burst 20)."""
    env = Env()
    gw = LiveGateway(env, broker, tmp_path / "gw.db", c.Limits())
    dev = Device(env.device(gateway_keys=gateway_keys(env)), OfflineQueue(tmp_path / "queue.db"), "127.0.0.1",
                 broker.port, keepalive=5, backoff_initial=0.05, backoff_max=0.4, clock=lambda: NOW)
    refusals: list = []
    dev.on_refusal = refusals.append
    try:
        frames = [dev.publish_reading({"n": i}) for i in range(40)]
        dev.start()
        assert dev.wait_flushed(30), len(dev.queue)
        assert sorted(gw.seqs()) == [f.seq for f in frames] and refusals == [] and dev.queue.refused == 0
        assert dev.acks_valid >= 40 and dev.acks_invalid == 0
    finally:
        dev.stop()
        gw.stop()


def test_receipts_after_a_device_restart_are_checked_against_the_queue_file(broker, tmp_path):
    """Frames stored before the device restarts get their receipts after it: they are valid."""
    env = Env()
    gw = LiveGateway(env, broker, tmp_path / "gw.db", batch_interval_ms=2000)
    counter = dc.MemoryCounter()
    path = tmp_path / "queue.db"
    dev = Device(env.device(counter=counter), OfflineQueue(path), "127.0.0.1", broker.port, keepalive=5,
                 backoff_initial=0.05, backoff_max=0.4, clock=lambda: NOW)
    dev2 = None
    results: list = []
    try:
        dev.start()
        frames = [dev.publish_reading({"n": i}) for i in range(3)]
        assert dev.wait_flushed(10) and dev.receipts_valid == 0
        dev.stop()
        dev2 = Device(env.device(counter=counter), OfflineQueue(path), "127.0.0.1", broker.port, keepalive=5,
                      backoff_initial=0.05, backoff_max=0.4, clock=lambda: NOW, on_receipt=results.append)
        dev2.start()
        assert wait_for(lambda: len(results) >= 3, 20)
        assert sorted((r.valid, r.seq) for r in results) == [(True, f.seq) for f in frames], results
        assert dev2.awaiting_receipts == 0 and all(dev2.receipt(frame_hash=f.frame_hash) for f in frames)
    finally:
        (dev2 or dev).stop()
        gw.stop()


def test_receipts_published_while_the_device_was_down_are_asked_for(broker, tmp_path):
    env = Env()
    gw = LiveGateway(env, broker, tmp_path / "gw.db", batch_interval_ms=1000)
    counter = dc.MemoryCounter()
    path = tmp_path / "queue.db"
    dev = Device(env.device(counter=counter), OfflineQueue(path), "127.0.0.1", broker.port, keepalive=5,
                 backoff_initial=0.05, backoff_max=0.4, clock=lambda: NOW)
    dev2 = None
    results: list = []
    try:
        dev.start()
        frames = [dev.publish_reading({"n": i}) for i in range(3)]
        assert dev.wait_flushed(10)
        dev.stop()
        time.sleep(2.5)                                  # anchored; the receipts go to no one (clean session)
        dev2 = Device(env.device(counter=counter), OfflineQueue(path), "127.0.0.1", broker.port, keepalive=5,
                      backoff_initial=0.05, backoff_max=0.4, clock=lambda: NOW, receipt_wait=0.5,
                      on_receipt=results.append)
        assert dev2.awaiting_receipts == 3
        dev2.start()
        assert wait_for(lambda: dev2.awaiting_receipts == 0, 20)
        assert sorted((r.valid, r.seq) for r in results) == [(True, f.seq) for f in frames]
        receipt = dev2.receipt(seq=frames[0].seq)
        assert receipt is not None and dev2.core.verify_receipt(receipt, frames[0].payload).valid
        dev2.request_receipts([frames[1].seq])           # on demand, by seq: answered again, a copy
        time.sleep(1.0)
        assert dev2.receipts_invalid == 0
    finally:
        (dev2 or dev).stop()
        gw.stop()


def test_a_frame_refused_for_good_leaves_the_queue_and_is_counted(broker, tmp_path):
    env = Env()
    gw = LiveGateway(env, broker, tmp_path / "gw.db")
    refusals: list = []
    dev = make_device(env, broker, tmp_path, on_refusal=refusals.append)
    try:
        stale = dev.publish_reading({"t": 1}, time_ms=NOW - 2 * 24 * 3600 * 1000)     # older than the gateway takes
        fresh = dev.publish_reading({"t": 2})
        assert dev.wait_flushed(10)
        assert sorted(gw.seqs()) == [fresh.seq] and dev.queue.refused == 1
        assert [(r.seq, r.code) for r in refusals] == [(stale.seq, c.CLOCK_SKEW)]
    finally:
        dev.stop()
        gw.stop()
