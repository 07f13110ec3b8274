"""End to end: a real mosquitto broker, a 4-node ledger cluster (processes) and the gateway process.

Devices are registered and banned through the ledger client; readings are published with paho; the
test checks republished verified readings, receipts (as a device checks them), refusals with their
reason codes, a flood that leaves another device unaffected, a ban taking effect, and a session.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from ledgerlink.core import cbor, cose, ecqv, session_keys
from ledgerlink.core.backend import get_backend
from ledgerlink.gateway.batcher import verify_receipt
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster, write_key
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools.stack import stop_process

MOSQUITTO = "/usr/sbin/mosquitto"
SITE = "e2e"
CRYPTO = get_backend("cpython")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now_ms() -> int:
    return int(time.time() * 1000)


class Device:
    def __init__(self) -> None:
        self.priv = CRYPTO.generate_private_key()
        self.pub = CRYPTO.public_key(self.priv, True)
        self.id = enc.device_id(self.pub)
        self.up = "ll/%s/dev/%s/up" % (SITE, self.id.hex())
        self.down = "ll/%s/dev/%s/down" % (SITE, self.id.hex())

    def reading(self, seq: int, meas: dict | None = None) -> bytes:
        body = cbor.dumps({1: self.id, 2: seq, 3: now_ms(), 4: meas or {"t": seq}})
        return cose.sign1(body, self.priv, self.id, self.up.encode(), CRYPTO)


class Listener:
    def __init__(self, port: int) -> None:
        self.q: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-app", protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, bytes(m.payload), m.retain))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        for t in ("ll/%s/verified/+" % SITE, "ll/%s/dev/+/down" % SITE, "ll/%s/ledger/header" % SITE):
            self.c.subscribe(t, qos=1)
        time.sleep(0.2)

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def collect(self, want, timeout: float = 10.0) -> list:
        """Messages until ``want(messages)`` holds (or the timeout)."""
        got: list = []
        deadline = time.monotonic() + timeout
        while not want(got) and time.monotonic() < deadline:
            try:
                got.append(self.q.get(timeout=0.1))
            except queue.Empty:
                pass
        return got

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise RuntimeError("gateway exited: " + path.read_text())
        time.sleep(0.05)
    raise TimeoutError("no %r in %s" % (text, path))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    port = free_port()
    broker = subprocess.Popen([MOSQUITTO, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = LocalCluster(tmp / "ledger", nodes=4)
    gw_proc = None
    listener = None
    client = None
    try:
        cluster.start()
        client = LedgerClient(cluster.config_path)
        devices = {n: Device() for n in ("a", "b", "c", "s")}
        admin = cluster.key("admin")
        chain = cluster.config.chain_id
        for d in devices.values():
            req = enc.registration_request(d.priv, 1, {"name": "sensor"}, now_ms())
            res = client.submit(enc.register_tx(chain, admin, req, now_ms()))
            assert res["status"] == "committed" and res["code"] == 0, res
        for name in ("gw-ca", "gw-site"):
            write_key(tmp / "ledger" / "keys" / (name + ".key"), CRYPTO.generate_private_key())
        cfg = {
            "site": SITE,
            "mqtt": {"host": "127.0.0.1", "port": port, "client_id": "gw-e2e-1"},
            "store": str(tmp / "gw.db"),
            "keys": {"identity": "ledger/keys/gateway.key", "ca": "ledger/keys/gw-ca.key",
                     "site": "ledger/keys/gw-site.key"},
            "ledger": {"cluster": "ledger/cluster.json"},
            "limits": {"rate_per_s": 2, "burst": 10, "registry_ttl_ms": 300},
            "batch": {"max": 64, "interval_ms": 100},
        }
        (tmp / "gw.json").write_text(json.dumps(cfg))
        log = tmp / "gw.log"
        with open(log, "wb") as f:
            gw_proc = subprocess.Popen([sys.executable, "-m", "ledgerlink.gateway.main", "--config", str(tmp / "gw.json"),
                                        "--log-level", "INFO"], stdout=f, stderr=subprocess.STDOUT)
        _wait_for(log, "subscribed", gw_proc)
        listener = Listener(port)
        time.sleep(0.3)
        yield {"listener": listener, "devices": devices, "cluster": cluster, "client": client, "log": log,
               "admin": admin, "chain": chain}
    finally:
        if listener is not None:
            listener.close()
        stop_process(gw_proc, 15)
        if client is not None:
            client.close()
        cluster.stop()
        broker.terminate()
        broker.wait(10)


def _kind(payload: bytes) -> int:
    return cbor.loads(payload)[0]


def test_signed_readings_verified_receipted_and_refusals(system):
    L, d = system["listener"], system["devices"]
    a = d["a"]
    frames = [a.reading(s) for s in (1, 2, 3)]
    for f in frames:
        L.publish(a.up, f)
    got = L.collect(lambda g: sum(1 for t, p, _ in g if t == a.down and _kind(p) == 1) >= 3
                    and sum(1 for t, _, _ in g if t.endswith("/verified/" + a.id.hex())) >= 3)
    verified = [cbor.loads(p) for t, p, _ in got if t.endswith("/verified/" + a.id.hex())]
    assert [v[2] for v in verified] == [1, 2, 3] and all(v[1] == a.id for v in verified)
    assert [v[5] for v in verified] == [CRYPTO.sha256(f) for f in frames]
    receipts = [p for t, p, _ in got if t == a.down and _kind(p) == 1]
    keys = list(system["cluster"].config.validators)
    by_hash = {CRYPTO.sha256(f): f for f in frames}
    for r in receipts:
        verify_receipt(r, by_hash[cbor.loads(r)[1]], system["chain"], keys)
    header = L.collect(lambda g: any(t.endswith("/ledger/header") for t, _, _ in g), timeout=3)
    assert any(t.endswith("/ledger/header") for t, _, _ in header)

    # tampered, replayed, unregistered
    bad = bytearray(a.reading(10, {"t": 1000}))
    bad[bad.index(b"\x19\x03\xe8") + 2] ^= 1
    L.publish(a.up, bytes(bad))
    L.publish(a.up, frames[0])
    stranger = Device()
    L.publish(stranger.up, stranger.reading(1))
    codes = L.collect(lambda g: len([1 for t, p, _ in g if t == a.down and _kind(p) == 2]) >= 1
                      and any(t == a.down and _kind(p) == 5 for t, p, _ in g)
                      and any(t == stranger.down for t, _, _ in g))
    assert sorted(cbor.loads(p)[2] for t, p, _ in codes if t == a.down and _kind(p) == 2) == [5]
    # the replayed frame is stored: answered with its stored-ack (and receipt), not refused
    assert [cbor.loads(p)[1] for t, p, _ in codes if t == a.down and _kind(p) == 5] == [CRYPTO.sha256(frames[0])]
    assert [cbor.loads(p)[2] for t, p, _ in codes if t == stranger.down] == [3]


def test_flood_is_limited_and_others_unaffected(system):
    L, d = system["listener"], system["devices"]
    flooder, other = d["b"], d["c"]
    L.publish(flooder.up, flooder.reading(1))                   # the gateway fetches b's registry record
    assert L.collect(lambda g: any(t.endswith("/verified/" + flooder.id.hex()) for t, _, _ in g))
    for s in range(2, 42):
        L.c.publish(flooder.up, flooder.reading(s), qos=1)
    L.publish(other.up, other.reading(1))
    got = L.collect(lambda g: len([1 for t, p, _ in g if t == flooder.down and _kind(p) == 2]) >= 20
                    and any(t.endswith("/verified/" + other.id.hex()) for t, _, _ in g), timeout=15)
    limited = [cbor.loads(p)[2] for t, p, _ in got if t == flooder.down and _kind(p) == 2]
    accepted = [1 for t, _, _ in got if t.endswith("/verified/" + flooder.id.hex())]
    assert set(limited) == {9} and 9 <= len(accepted) <= 20
    assert any(t.endswith("/verified/" + other.id.hex()) for t, _, _ in got)


def test_ban_takes_effect(system):
    L, d = system["listener"], system["devices"]
    c = d["c"]
    res = system["client"].submit(enc.ban_tx(system["chain"], system["admin"], c.id, "tampering", now_ms()))
    assert res["status"] == "committed" and res["code"] == 0
    time.sleep(1.0)                              # registry_ttl_ms = 300: the gateway refetches the record
    L.publish(c.up, c.reading(2))
    got = L.collect(lambda g: any(t == c.down and _kind(p) == 2 for t, p, _ in g))
    assert [cbor.loads(p)[2] for t, p, _ in got if t == c.down and _kind(p) == 2] == [4]


def test_session_mode(system):
    L, d = system["listener"], system["devices"]
    s = d["s"]
    secret, r_u = ecqv.create_request()
    topic = "ll/%s/dev/%s/session" % (SITE, s.id.hex())
    req = cose.sign1(cbor.dumps({1: s.id, 2: r_u, 3: b"\x07" * 16, 4: now_ms()}), s.priv, s.id, topic.encode(), CRYPTO)
    L.publish(topic, req)
    got = L.collect(lambda g: any(t == s.down and _kind(p) == 3 for t, p, _ in g))
    resp = [cbor.loads(p)[1] for t, p, _ in got if t == s.down and _kind(p) == 3][0]
    ca_pub = CRYPTO.public_key(system["cluster"].key("gw-ca"), True)
    d_u, _ = ecqv.reconstruct(secret, resp[2], resp[3], ca_pub)
    keys = session_keys.derive(d_u, resp[4], resp[2], s.id, resp[5], CRYPTO)
    body = cbor.dumps({1: s.id, 2: 1, 3: now_ms(), 4: {"t": 5}})
    frame = cose.encrypt0(body, keys.key, partial_iv=b"\x01", base_iv=keys.base_iv, kid=keys.session_id,
                          external_aad=s.up.encode(), backend=CRYPTO)
    L.publish(s.up, frame)
    got = L.collect(lambda g: any(t.endswith("/verified/" + s.id.hex()) for t, _, _ in g)
                    and any(t == s.down and _kind(p) == 1 for t, p, _ in g))
    v = [cbor.loads(p) for t, p, _ in got if t.endswith("/verified/" + s.id.hex())][0]
    assert v[4] == {"t": 5} and v[2] == 1
    # the certificate is recorded on the ledger by the gateway
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rec = system["client"].record(4, CRYPTO.sha256(resp[2]))
        if rec.get("ok") and rec["proof"][3] is not None:
            break
        time.sleep(0.1)
    assert cbor.loads(rec["proof"][3])[1] == s.id
