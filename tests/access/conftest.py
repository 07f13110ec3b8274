"""A live site per broker (mosquitto with its dynamic security plugin, and the embedded broker): the
broker, a 4-node ledger and the gateway (``Stack``), with MQTT clients that log in as the site's accounts
or as nobody."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.device.core import DeviceCore, MemoryCounter, ReceiptResult, SequenceCounter
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.tools.broker_access import ROLE_CONTROLLER
from ledgerlink.tools.stack import Stack

SITE = "acc"
CRYPTO = get_backend("cpython")
NOT_AUTHORIZED = 0x87


def now_ms() -> int:
    return int(time.time() * 1000)


class Client:
    """A paho MQTT 5 client that records what happens to it: CONNACK, SUBACK and PUBACK codes, messages."""

    def __init__(self, stack: Stack, client_id: str, login: dict[str, str] | None = None, port: int | None = None,
                 tls: Any = None) -> None:
        self.connack = queue.Queue()
        self.subacks = queue.Queue()
        self.pubacks: dict[int, int] = {}
        self.messages: queue.Queue = queue.Queue()
        self.disconnected = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if login is not None:
            self.c.username_pw_set(login["username"], login["password"])
        if tls is not None:
            self.c.tls_set_context(tls)
        self.c.on_connect = lambda c, u, f, r, p: self.connack.put(r.value)
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put([x.value for x in codes])
        self.c.on_publish = lambda c, u, mid, r, p: self.pubacks.__setitem__(mid, r.value)
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload), m.retain))
        self.c.on_disconnect = lambda c, u, f, r, p: self.disconnected.set()
        self.c.reconnect_delay_set(60, 60)          # a refused client stays refused during a test
        self.c.connect("127.0.0.1", port or stack.broker_port)
        self.c.loop_start()
        self.code = self.connack.get(timeout=10)

    @property
    def accepted(self) -> bool:
        return self.code == 0

    def subscribe(self, topic: str) -> int:
        """The SUBACK code of one subscription."""
        self.c.subscribe(topic, qos=1)
        return self.subacks.get(timeout=10)[0]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """The PUBACK reason code of one QoS 1 publish."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        deadline = time.monotonic() + 10
        while info.mid not in self.pubacks and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.pubacks[info.mid]

    def drain(self, wait: float = 0.0) -> list[tuple[str, bytes, bool]]:
        out = []
        deadline = time.monotonic() + wait
        while True:
            try:
                out.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Dev:
    """A registered device with its broker login; builds its own signed readings."""

    def __init__(self, stack: Stack, role: int = 1) -> None:
        self.role = role
        self.priv = CRYPTO.generate_private_key()
        self.core = DeviceCore(self.priv, stack.site, SequenceCounter(MemoryCounter()), stack.chain_id,
                               stack.validators, ca_public=stack.public_key("gw-ca"),
                               gateway_keys={stack.gateway_id: stack.public_key("gateway")}, backend="cpython")
        self.id = self.core.device_id
        self.username = "ll-" + self.id.hex()
        self.stack = stack

    def registration(self) -> bytes:
        return enc.registration_request(self.priv, self.role, {"name": "access-test"}, now_ms())

    def login(self) -> dict[str, str]:
        if self.role == ROLE_CONTROLLER:
            return self.stack.access.add_device(self.id, "controller")
        return self.stack.device_login(self.id)

    def client(self) -> Client:
        c = Client(self.stack, self.username, self.login())
        assert c.accepted, "device %s refused: 0x%02x" % (self.username, c.code)
        return c

    def served(self, c: Client, count: int = 1) -> None:
        """``count`` fresh readings through client ``c``: each gets a receipt that verifies."""
        assert c.subscribe(self.core.down_topic) == 1
        frames = [self.core.reading({"n": i}, now_ms()).payload for i in range(count)]
        for f in frames:
            assert c.publish(self.core.up_topic, f) == 0
        waiting = {hashlib.sha256(f).digest() for f in frames}
        deadline = time.monotonic() + 20
        while waiting and time.monotonic() < deadline:
            for topic, payload, _ in c.drain(0.2):
                res = self.core.handle_down(payload, now_ms())
                if isinstance(res, ReceiptResult) and res.valid:
                    waiting.discard(res.frame_hash)
        hashes = waiting
        assert not hashes, "%d readings without a valid receipt" % len(hashes)


@pytest.fixture(scope="package", params=["mosquitto", "embedded"])
def stack(request, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("access-" + request.param), site=SITE, broker=request.param,
              batch={"max": 256, "interval_ms": 50})
    try:
        s.start()
        yield s
    finally:
        s.stop()


def registrar(stack: Stack, make_dev: Callable[[Stack], Any]) -> Callable[[int], list]:
    """``register(n)``: ``n`` new devices ``make_dev(stack)``, registered on the ledger in one batch of
    admin-signed txs, each with its broker account."""

    def register(n: int) -> list:
        devs = [make_dev(stack) for _ in range(n)]
        stack.register([d.registration() for d in devs])
        return devs

    return register


@pytest.fixture(scope="package")
def register(stack):
    return registrar(stack, Dev)
