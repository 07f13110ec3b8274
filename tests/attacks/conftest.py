"""One live site per test module and broker (mosquitto, and the embedded broker): the broker, a 4-node PBFT
ledger and the gateway (``Stack``).

The attacker publishes with its own paho MQTT 5 client straight to the broker; an observer subscribed
to every device's ``down`` topic and to the ``verified`` topics sees what the gateway answers. The
gateway's store (SQLite) and its ``/metrics`` are read to show that a refused frame was neither stored
nor anchored and was counted under the right reason code.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest

from ledgerlink.core import cbor, cose
from ledgerlink.core.backend import get_backend
from ledgerlink.device.core import DeviceCore, MemoryCounter, SequenceCounter
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools.stack import Stack
from tests.access.conftest import registrar

SITE = "atk"
LIMITS = {"rate_per_s": 5, "burst": 10, "registry_ttl_ms": 500, "registry_timeout_ms": 2000}
CRYPTO = get_backend("cpython")

RECEIPT, REFUSAL = 1, 2


def now_ms() -> int:
    return int(time.time() * 1000)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Dev:
    """A device key (registered or not) that builds its own readings with ``DeviceCore``."""

    def __init__(self, stack: Stack, site: str = SITE, priv: bytes | None = None) -> None:
        self.priv = priv or CRYPTO.generate_private_key()
        self.core = DeviceCore(self.priv, site, SequenceCounter(MemoryCounter()), stack.chain_id, stack.validators,
                               ca_public=stack.public_key("gw-ca"),
                               gateway_keys={stack.gateway_id: stack.public_key("gateway")}, backend="cpython")
        self.id = self.core.device_id
        self.pub = self.core.public_key
        self.up = self.core.up_topic
        self.down = self.core.down_topic
        self.site = site

    def reading(self, meas: dict | None = None, t: int | None = None) -> bytes:
        """The next signed reading (sequence numbers from the device counter)."""
        return self.core.reading(meas or {"t": 21}, now_ms() if t is None else t).payload

    def signed(self, body: Any, seq_topic: str | None = None, priv: bytes | None = None,
               kid: bytes | None = None) -> bytes:
        """A COSE_Sign1 over any payload (bytes, or an object CBOR-encoded), bound to ``seq_topic``."""
        payload = body if isinstance(body, bytes) else cbor.dumps(body)
        return cose.sign1(payload, priv or self.priv, kid or self.id, (seq_topic or self.up).encode(), CRYPTO)

    def registration(self) -> bytes:
        return enc.registration_request(self.priv, 1, {"name": "attack-test"}, now_ms())


class Net:
    """The attacker's and the observer's MQTT 5 clients on the stack's broker."""

    def __init__(self, stack: Stack, site: str = SITE, db: Path | None = None) -> None:
        self.stack = stack
        self.site = site
        self.db = db or stack.data_dir / "gateway.db"
        self.lock = threading.Lock()
        self.msgs: list[tuple[str, bytes]] = []
        self.observer = self._client("observer-%s-%d" % (site, os.getpid()))
        subscribed = threading.Event()
        self.observer.on_message = self._on_message
        self.observer.on_subscribe = lambda *a: subscribed.set()
        self.observer.subscribe([("ll/%s/dev/+/down" % site, 1), ("ll/%s/verified/+" % site, 1)])
        assert subscribed.wait(5)
        self.attacker = self._client("attacker-%s-%d" % (site, os.getpid()))

    def _client(self, cid: str) -> mqtt.Client:
        """A client with an operator account: it may publish and read every topic of the site, as a party in
        the broker's position could."""
        login = self.stack.access.add(cid, "operator", site=self.site)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.username_pw_set(login["username"], login["password"])
        c.connect("127.0.0.1", self.stack.broker_port)
        c.loop_start()
        return c

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        with self.lock:
            self.msgs.append((m.topic, bytes(m.payload)))

    def close(self) -> None:
        for c in (self.observer, self.attacker):
            c.disconnect()
            c.loop_stop()

    # --- sending ------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, wait: bool = True) -> None:
        info = self.attacker.publish(topic, payload, qos=1)
        if wait:
            info.wait_for_publish(5)

    # --- what the gateway said ------------------------------------------------------------------------

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.msgs)

    def replies(self, down: str) -> list[dict]:
        out = []
        for t, p in self.snapshot():
            if t == down:
                out.append(cbor.loads(p))
        return out

    def refusal_of(self, frame: bytes) -> dict | None:
        """The refusal of ``frame`` on any device's down topic."""
        h = sha256(frame)
        for t, p in self.snapshot():
            if t.endswith("/down"):
                r = cbor.loads(p)
                if r.get(0) == REFUSAL and r.get(1) == h:
                    return r
        return None

    def receipt_of(self, frame: bytes) -> dict | None:
        h = sha256(frame)
        for t, p in self.snapshot():
            if t.endswith("/down"):
                r = cbor.loads(p)
                if r.get(0) == RECEIPT and r.get(1) == h:
                    return r
        return None

    def verified_of(self, frame: bytes) -> dict | None:
        h = sha256(frame)
        for t, p in self.snapshot():
            if "/verified/" in t:
                v = cbor.loads(p)
                if v.get(5) == h:
                    return v
        return None

    def wait(self, cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = cond()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s" % what)
            time.sleep(0.02)

    # --- gateway state ------------------------------------------------------------------------------

    def stored(self, frame: bytes) -> bool:
        """The frame is in the gateway's store of accepted messages (hence batched and anchored)."""
        db = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=5)
        try:
            return bool(db.execute("SELECT count(*) FROM messages WHERE frame_hash = ?", (sha256(frame),)).fetchone()[0])
        finally:
            db.close()

    def refused_counts(self, url: str | None = None) -> dict[int, float]:
        """``ledgerlink_gateway_refused_total`` by reason code from /metrics."""
        text = urllib.request.urlopen((url or self.stack.dashboard_url).rstrip("/") + "/metrics", timeout=5).read().decode()
        out: dict[int, float] = {}
        for m in re.finditer(r'^ledgerlink_gateway_refused_total\{code="(\d+)"[^}]*\} (\S+)$', text, re.M):
            out[int(m.group(1))] = float(m.group(2))
        return out

    def metric(self, name: str, url: str | None = None) -> float:
        text = urllib.request.urlopen((url or self.stack.dashboard_url).rstrip("/") + "/metrics", timeout=5).read().decode()
        m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
        assert m is not None, "no metric %s" % name
        return float(m.group(1))

    # --- assertions ------------------------------------------------------------------------------------

    def assert_refused(self, frame: bytes, code: int, timeout: float = 10.0) -> dict:
        """``frame`` was answered with a refusal of ``code`` and was neither republished, receipted nor stored."""
        r = self.wait(lambda: self.refusal_of(frame), timeout, "refusal of %s" % sha256(frame).hex()[:16])
        assert r[2] == code, "refused with %d (%s), expected %d" % (r[2], r[3], code)
        assert self.verified_of(frame) is None
        assert self.receipt_of(frame) is None
        assert not self.stored(frame)
        return r

    def assert_served(self, dev: Dev, count: int = 1) -> None:
        """``dev`` publishes ``count`` fresh readings; each is republished and gets a valid receipt."""
        frames = [dev.reading({"ok": i}) for i in range(count)]
        for f in frames:
            self.publish(dev.up, f)
        for f in frames:
            self.wait(lambda: self.verified_of(f), 15, "verified republish")
            r = self.wait(lambda: self.receipt_of(f), 15, "receipt")
            res = dev.core.verify_receipt(r, f)
            assert res.valid, res.reason


@pytest.fixture(scope="module", params=["mosquitto", "embedded"])
def stack(request, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("attack-stack-" + request.param), site=SITE, limits=LIMITS,
              batch={"max": 256, "interval_ms": 50}, broker=request.param)
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def net(stack):
    n = Net(stack)
    try:
        yield n
    finally:
        n.close()


@pytest.fixture(scope="module")
def register(stack):
    return registrar(stack, Dev)
