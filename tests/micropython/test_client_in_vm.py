"""The device client running in MicroPython against a real mosquitto broker.

The WASI VM has no sockets: the test lends it TCP sockets through host functions (``sock_connect``,
``sock_send``, ``sock_recv``, ``sock_close``), so every MQTT byte the client writes reaches the broker.
board32 uses its own sockets, except in the offline test, where the bridge refuses the first attempts.
A paho-mqtt subscriber on the host receives the frames, checks them with the CPython side of the
protocol and answers on the device's down topic.
"""

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from ledgerlink.core import cbor, cose, ecdsa
from tests.device.test_board_client_delivery import ack_reply
from tests.micropython.bridge import SocketBridge

pytestmark = pytest.mark.micropython

SITE = "vm-site"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """``mosquitto -p PORT`` started and stopped on demand."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/sbin/mosquitto", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Gateway:
    """A paho subscriber that records the device frames and answers each with a receipt-shaped reply."""

    def __init__(self, port: int, session=None) -> None:
        self.frames: list[tuple[str, bytes]] = []
        self.session = session
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-gw")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("ll/%s/dev/+/up" % SITE, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(5):
            raise RuntimeError("test subscriber did not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        frame = bytes(msg.payload)
        self.frames.append((msg.topic, frame))
        seq = 0
        if self.session is not None:
            key, base_iv = self.session
            seq = cbor.loads(cose.decrypt0(frame, key, base_iv, external_aad=msg.topic.encode()))[2]
        reply = {0: 1, 1: hashlib.sha256(frame).digest(), 2: seq, 3: len(self.frames) - 1, 4: 0}
        client.publish(msg.topic[:-2] + "down", cbor.dumps(reply), qos=1)
        if self.session is None:
            seq = cbor.loads(cose.decode_sign1(frame).payload)[2]
        dev = bytes.fromhex(msg.topic.split("/")[3])     # stored: the device may drop the frame
        client.publish(msg.topic[:-2] + "down", ack_reply(dev, SITE, seq, hashlib.sha256(frame).digest()), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker():
    b = Broker(free_port())
    yield b
    b.stop()


@pytest.fixture
def bridge():
    b = SocketBridge()
    yield b
    b.close()


def vm_program(port: int, config: str, body: str, call: str = "host_call", session=None) -> str:
    """``call``: ``host_call`` (the host's sockets through the bridge) or ``None`` (the board's own TCP).
    ``session``: (key, base_iv, session_id) of a session set on the client before ``body`` runs."""
    setup = ""
    if session is not None:
        setup = ("from ledgerlink.core import session_keys\n"
                 "from ledgerlink.protocol import device_protocol as dp\n"
                 "client.protocol.set_session(dp.Session(session_keys.SessionKeys(bytes.fromhex(%r), "
                 "bytes.fromhex(%r), bytes.fromhex(%r)), b'gw', None, None, 0))\n" % tuple(v.hex() for v in session))
    return """
import json
from ledgerlink_client import device, mqtt, transport
def factory():
    return mqtt.MQTTClient(transport.open_stream('127.0.0.1', %d, %s), 'vm-dev', keepalive=30)
cfg = %s
client = device.DeviceClient(cfg, factory, rng=host_urandom)
%s%s
print(json.dumps(out))
""" % (port, call, config, setup, body)


def own_sockets(runtime, bridge) -> tuple[str, dict]:
    """(``call`` for vm_program, host functions): board32 uses its own sockets, the WASI VM the bridge."""
    if runtime.sockets:
        return "None", {}
    return "host_call", bridge.functions()


SESSION_KEY = bytes(31) + b"\x07"       # identity key of the session-mode device (its session is set directly)
SESSION_DEVICE = hashlib.sha256(ecdsa.public_key(SESSION_KEY, compressed=True)).digest()[:16]


def session_config(device_id: bytes, key: bytes, base_iv: bytes, sid: bytes, **extra) -> str:
    """Config of the session-mode device; pass ``session=(key, base_iv, sid)`` to ``vm_program``."""
    cfg = ("{'site': %r, 'device_id': bytes.fromhex(%r), 'identity_key': bytes.fromhex(%r), "
           "'ca_public': bytes.fromhex(%r)" % (SITE, device_id.hex(), SESSION_KEY.hex(), (b"\x02" + bytes(32)).hex()))
    for k, v in extra.items():
        cfg += ", %r: %r" % (k, v)
    return cfg + "}"


def readings_of(frames, key, base_iv, sid):
    out = []
    for topic, frame in frames:
        msg = cose.decode_encrypt0(frame)
        assert msg.kid == sid
        reading = cbor.loads(cose.decrypt0(frame, key, base_iv, external_aad=topic.encode()))
        assert cbor.dumps(reading) == cose.decrypt0(frame, key, base_iv, external_aad=topic.encode())
        assert int.from_bytes(msg.partial_iv, "big") == reading[2]
        out.append(reading)
    return out


def test_session_readings_reach_the_broker_and_a_reply_comes_back(client_vm, broker, bridge):
    broker.start()
    device_id, key, base_iv, sid = SESSION_DEVICE, os.urandom(16), os.urandom(13), os.urandom(8)
    gw = Gateway(broker.port, (key, base_iv))
    n = 12
    body = """
for i in range(%d):
    client.publish({'t': 20 + i, 'i': i})
flushed = client.flush(10000)
reply = client.wait_reply(5000)
out = {'flushed': flushed, 'pending': client.pending(), 'stats': client.stats,
       'reply': [reply[0], reply[1].hex(), reply[2]] if reply else None}
client.close()
""" % n
    try:
        before = time.time() * 1000
        call, functions = own_sockets(client_vm, bridge)
        result = client_vm.run(vm_program(broker.port, session_config(device_id, key, base_iv, sid), body, call,
                                          (key, base_iv, sid)),
                               host_functions=functions, fuel=1_500_000_000, timeout=60)
        deadline = time.monotonic() + 3
        while len(gw.frames) < n and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        gw.close()
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["flushed"] is True and out["pending"] == 0
    assert out["stats"]["acked"] == n and out["stats"]["connects"] == 1
    assert len(gw.frames) == n
    assert {t for t, _ in gw.frames} == {"ll/%s/dev/%s/up" % (SITE, device_id.hex())}
    readings = readings_of(gw.frames, key, base_iv, sid)
    assert [r[2] for r in readings] == list(range(1, n + 1))
    assert [r[4] for r in readings] == [{"t": 20 + i, "i": i} for i in range(n)]
    assert all(r[1] == device_id for r in readings)
    assert all(abs(r[3] - before) < 120_000 for r in readings)
    kind, frame_hash, seq = out["reply"]
    assert kind == 1 and seq == 1
    assert bytes.fromhex(frame_hash) == hashlib.sha256(gw.frames[0][1]).digest()
    if client_vm.counts_fuel:
        assert result.fuel_used < 1_500_000_000
        print("session mode: %d readings, %d fuel in all, %d bytes sent" % (n, result.fuel_used, bridge.bytes_up))


def test_signed_readings_verify_with_the_identity_key(client_vm, broker, bridge):
    broker.start()
    priv = ecdsa.generate_private_key()
    pub = ecdsa.public_key(priv)
    device_id = hashlib.sha256(ecdsa.public_key(priv, compressed=True)).digest()[:16]
    gw = Gateway(broker.port)
    config = "{'site': %r, 'device_id': bytes.fromhex(%r), 'mode': 'signed', 'identity_key': bytes.fromhex(%r)}" % (
        SITE, device_id.hex(), priv.hex())
    body = """
client.publish({'t': 1})
client.publish({'t': 2})
out = {'flushed': client.flush(10000), 'stats': client.stats}
client.close()
"""
    try:
        call, functions = own_sockets(client_vm, bridge)
        result = client_vm.run(vm_program(broker.port, config, body, call), host_functions=functions,
                               fuel=1_500_000_000, timeout=60)
        deadline = time.monotonic() + 3
        while len(gw.frames) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        gw.close()
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["flushed"] is True
    seqs = []
    for topic, frame in gw.frames:
        assert cose.sign1_kid(frame) == device_id
        reading = cbor.loads(cose.verify_sign1(frame, pub, external_aad=topic.encode()))
        seqs.append(reading[2])
        with pytest.raises(Exception):
            cose.verify_sign1(frame, pub, external_aad=b"ll/other/dev/x/up")
    assert seqs == [1, 2]


def test_offline_readings_are_queued_and_delivered_in_order_when_the_broker_comes_up(client_vm, broker, bridge):
    device_id, key, base_iv, sid = SESSION_DEVICE, os.urandom(16), os.urandom(13), os.urandom(8)
    gateways = []

    def before_connect(attempt: int) -> None:
        if attempt == 3:
            broker.start()
            gateways.append(Gateway(broker.port, (key, base_iv)))

    bridge.before_connect = before_connect
    body = """
failed_at = []
for i in range(6):
    client.publish({'i': i})
    if client.stats['connect_failures'] < 2:
        client.step(50)
        failed_at.append(client.stats['connect_failures'])
queued = client.pending()
flushed = client.flush(15000)
out = {'queued': queued, 'flushed': flushed, 'stats': client.stats, 'failed_at': failed_at,
       'dropped': client.queue.dropped}
client.close()
"""
    config = session_config(device_id, key, base_iv, sid, backoff_min_ms=40, backoff_max_ms=200)
    try:
        result = client_vm.run(vm_program(broker.port, config, body, session=(key, base_iv, sid)),
                               host_functions=bridge.functions(), fuel=1_500_000_000, timeout=60)
        deadline = time.monotonic() + 3
        while gateways and len(gateways[0].frames) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        for gw in gateways:
            gw.close()
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert bridge.refused == 2 and bridge.attempts == 3
    assert out["queued"] == 6 and out["flushed"] is True and out["dropped"] == 0
    assert out["stats"]["connect_failures"] == 2 and out["stats"]["connects"] == 1
    readings = readings_of(gateways[0].frames, key, base_iv, sid)
    assert [r[2] for r in readings] == [1, 2, 3, 4, 5, 6]
    assert [r[4] for r in readings] == [{"i": i} for i in range(6)]
