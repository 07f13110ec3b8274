"""Device side of the ledgerlink protocol over MQTT: readings, offline queue, reconnects, replies.

``DeviceClient(config, mqtt_factory)`` seals each reading (docs/protocol.md, "Device readings") the
moment it is taken, with the next sequence number, and appends it to the offline queue; ``step`` /
``flush`` deliver the queue oldest first over MQTT with QoS 1. ``mqtt_factory()`` returns a new,
unconnected MQTT object with the interface of ``mqtt.MQTTClient`` (``connect``, ``publish`` returning
a packet id, ``subscribe``, ``ping``, ``poll`` returning events, ``close``); it may raise OSError
(broker unreachable).

Delivery: up to ``max_inflight`` publishes are outstanding; a publish without PUBACK after ``retry_ms``
is sent again with the same packet id and DUP set, and one still unacknowledged after ``keepalive_s``
drops the connection; a record leaves the queue only when it and every
older record are acknowledged. Connections use a clean session, so after a reconnect everything
unacknowledged is published again from the queue (at least once: the gateway's replay window drops
duplicates). Keepalive: a PINGREQ after ``keepalive_s / 2`` without traffic; no answer within
``keepalive_s`` drops the connection. Reconnects wait ``backoff_min_ms * 2**failures`` (capped at
``backoff_max_ms``) with full jitter in the upper half, drawn from ``rng``.

Modes: "session" (default): COSE_Encrypt0 with the session key, kid = session id, Partial IV = seq;
"signed": COSE_Sign1 with the identity key, kid = device id. Both bind the topic as external AAD.

Protects against: reading loss while offline or across resets (flash queue, persistent sequence
counter), nonce reuse (a sequence number is never handed out twice), reconnect storms (jittered
backoff) and hostile replies (decoded strictly by ``cbor.loads``; undecodable ones are counted and
ignored). Tested in MicroPython against a real mosquitto broker (tests/micropython/test_client_in_vm.py).
"""

import time

from ledgerlink.core import cbor, cose
from ledgerlink.core.errors import LedgerlinkError

from ledgerlink_client.queue import MemoryStorage, OfflineQueue, SeqCounter

DEFAULTS = {
    "mode": "session",
    "keepalive_s": 60,
    "backoff_min_ms": 500,
    "backoff_max_ms": 60000,
    "retry_ms": 5000,
    "max_inflight": 4,
    "queue_bytes": 32768,
    "queue_frames": 256,
    "max_replies": 16,
}


def _ticks_ms():
    if hasattr(time, "ticks_ms"):
        return time.ticks_ms()
    return int(time.monotonic() * 1000)


def _ticks_diff(a, b):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(a, b)
    return a - b


def _sleep_ms(ms):
    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


def _time_ms():
    return int(time.time() * 1000)


def _default_rng(n):
    import os

    return os.urandom(n)


def partial_iv(seq):
    """The Partial IV of a sequence number: big-endian, minimal length (at least one byte)."""
    n = 1
    while seq >> (8 * n):
        n += 1
    return seq.to_bytes(n, "big")


class DeviceClient:
    """A device's link to its gateway.

    ``config`` (dict): "site", "device_id" (16 bytes), "mode", and "session" (an object or dict with
    ``key``, ``base_iv``, ``session_id``) for session mode or "identity_key" (32 bytes) for signed mode;
    optional tuning keys as in ``DEFAULTS`` and "client_id". ``storage`` holds the queue and the
    sequence counter (``queue.FileStorage`` on flash; RAM when omitted). ``rng(n)``, ``ticks_ms()``,
    ``ticks_diff(a, b)``, ``time_ms()`` (epoch milliseconds) and ``sleep_ms(ms)`` can be injected.
    """

    def __init__(self, config, mqtt_factory, storage=None, rng=None, ticks_ms=None, ticks_diff=None,
                 time_ms=None, sleep_ms=None, on_reply=None, backend=None):
        cfg = dict(DEFAULTS)
        cfg.update(config)
        self.config = cfg
        self.device_id = bytes(cfg["device_id"])
        if len(self.device_id) != 16:
            raise ValueError("device_id must be 16 bytes")
        self.mode = cfg["mode"]
        if self.mode == "session":
            s = cfg["session"]
            if isinstance(s, dict):
                self._key, self._base_iv, self._kid = s["key"], s["base_iv"], s["session_id"]
            else:
                self._key, self._base_iv, self._kid = s.key, s.base_iv, s.session_id
        elif self.mode == "signed":
            self._identity = cfg["identity_key"]
        else:
            raise ValueError("mode must be 'session' or 'signed'")
        dev = self.device_id.hex()
        base = "ll/%s/dev/%s/" % (cfg["site"], dev)
        self.topic_up = base + "up"
        self.topic_down = base + "down"
        self.client_id = cfg.get("client_id") or "ll-" + dev
        self.mqtt_factory = mqtt_factory
        storage = storage if storage is not None else MemoryStorage()
        self.queue = OfflineQueue(storage, "llq", cfg["queue_bytes"], cfg["queue_frames"])
        self.seq = SeqCounter(storage, "llseq")
        self.rng = rng or _default_rng
        self.ticks_ms = ticks_ms or _ticks_ms
        self.ticks_diff = ticks_diff or _ticks_diff
        self.time_ms = time_ms or _time_ms
        self.sleep_ms = sleep_ms or _sleep_ms
        self.on_reply = on_reply
        self.backend = backend
        self.replies = []
        self.mqtt = None
        self.failures = 0
        self._retry_from = None
        self._retry_wait = 0
        self._inflight = []
        self._last_tx = 0
        self._ping_sent = None
        self.stats = {"connects": 0, "connect_failures": 0, "drops": 0, "published": 0, "retransmitted": 0,
                      "acked": 0, "pings": 0, "bad_replies": 0}

    @property
    def connected(self):
        return self.mqtt is not None

    def seal(self, reading_bytes, seq):
        """The device frame (COSE) for an encoded reading with sequence number ``seq``."""
        aad = self.topic_up.encode()
        if self.mode == "signed":
            return cose.sign1(reading_bytes, self._identity, kid=self.device_id, external_aad=aad,
                              backend=self.backend)
        return cose.encrypt0(reading_bytes, self._key, partial_iv=partial_iv(seq), base_iv=self._base_iv,
                             kid=self._kid, external_aad=aad, backend=self.backend)

    def publish(self, measurements, time_ms=None):
        """Seal a reading with the next sequence number and queue it; return the sequence number."""
        seq = self.seq.next()
        reading = cbor.dumps({1: self.device_id, 2: seq, 3: self.time_ms() if time_ms is None else time_ms,
                              4: measurements})
        self.queue.push(self.topic_up, self.seal(reading, seq))
        return seq

    def pending(self):
        """Readings not yet acknowledged by the broker."""
        return len(self.queue)

    def _backoff_ms(self):
        cfg = self.config
        delay = cfg["backoff_min_ms"] << min(self.failures, 16)
        if delay > cfg["backoff_max_ms"]:
            delay = cfg["backoff_max_ms"]
        half = delay // 2
        r = int.from_bytes(self.rng(4), "big")
        return half + r % (delay - half + 1)

    def _drop(self, now):
        if self.mqtt is not None:
            try:
                self.mqtt.close()
            except OSError:
                pass
            self.mqtt = None
            self.stats["drops"] += 1
        self._inflight = []
        self._ping_sent = None
        self._retry_from = now
        self._retry_wait = self._backoff_ms()
        self.failures += 1

    def _connect(self, now):
        client = None
        try:
            client = self.mqtt_factory()
            client.connect()
            client.subscribe(self.topic_down, 1)
        except OSError:
            if client is not None:
                try:
                    client.close()
                except OSError:
                    pass
            self.stats["connect_failures"] += 1
            self._drop(now)
            return False
        self.mqtt = client
        self.stats["connects"] += 1
        self.failures = 0
        self._last_tx = now
        self._ping_sent = None
        return True

    def _send_window(self, now):
        cfg = self.config
        keepalive_ms = cfg["keepalive_s"] * 1000
        for entry in self._inflight:
            if not entry[2] and keepalive_ms and self.ticks_diff(now, entry[3]) > keepalive_ms:
                raise OSError("no PUBACK within the keepalive interval")
            if not entry[2] and self.ticks_diff(now, entry[1]) >= cfg["retry_ms"]:
                topic, payload = self.queue.peek(self._inflight.index(entry))
                self.mqtt.publish(topic, payload, 1, False, entry[0], True)
                entry[1] = now
                self._last_tx = now
                self.stats["retransmitted"] += 1
        while len(self._inflight) < cfg["max_inflight"] and len(self._inflight) < len(self.queue):
            topic, payload = self.queue.peek(len(self._inflight))
            pid = self.mqtt.publish(topic, payload, 1)
            self._inflight.append([pid, now, False, now])
            self._last_tx = now
            self.stats["published"] += 1

    def _on_puback(self, pid):
        for entry in self._inflight:
            if entry[0] == pid and not entry[2]:
                entry[2] = True
                self.stats["acked"] += 1
                break
        while self._inflight and self._inflight[0][2]:
            self._inflight.pop(0)
            self.queue.pop()

    def _on_message(self, topic, payload):
        if topic != self.topic_down:
            return
        try:
            reply = cbor.loads(payload)
        except LedgerlinkError:
            self.stats["bad_replies"] += 1
            return
        if not isinstance(reply, dict) or reply.get(0) not in (1, 2, 3):
            self.stats["bad_replies"] += 1
            return
        self.replies.append(reply)
        if len(self.replies) > self.config["max_replies"]:
            self.replies.pop(0)
        if self.on_reply is not None:
            self.on_reply(reply)

    def step(self, timeout_ms=100):
        """One round: (re)connect when due, send and retransmit, keep alive, handle what arrives."""
        now = self.ticks_ms()
        if self.mqtt is None:
            if self._retry_from is not None:
                left = self._retry_wait - self.ticks_diff(now, self._retry_from)
                if left > 0:
                    self.sleep_ms(min(timeout_ms, left))
                    return
            if not self._connect(now):
                return
        keepalive_ms = self.config["keepalive_s"] * 1000
        try:
            self._send_window(now)
            if self._ping_sent is not None:
                if self.ticks_diff(now, self._ping_sent) > keepalive_ms:
                    raise OSError("no answer to PINGREQ")
            elif keepalive_ms and self.ticks_diff(now, self._last_tx) >= keepalive_ms // 2:
                self.mqtt.ping()
                self._ping_sent = now
                self._last_tx = now
                self.stats["pings"] += 1
            for event in self.mqtt.poll(timeout_ms):
                self._ping_sent = None
                if event[0] == "puback":
                    self._on_puback(event[1])
                elif event[0] == "msg":
                    self._on_message(event[1], event[2])
                elif event[0] == "suback" and 0x80 in event[2]:
                    raise OSError("subscription refused")
        except OSError:
            self._drop(self.ticks_ms())

    def flush(self, timeout_ms=10000, step_ms=50):
        """Run ``step`` until the queue is empty; return True if it emptied within ``timeout_ms``."""
        start = self.ticks_ms()
        while len(self.queue):
            if self.ticks_diff(self.ticks_ms(), start) >= timeout_ms:
                return False
            self.step(step_ms)
        return True

    def wait_reply(self, timeout_ms=5000, step_ms=50):
        """Run ``step`` until a reply arrives; return it (oldest first) or None."""
        start = self.ticks_ms()
        while not self.replies:
            if self.ticks_diff(self.ticks_ms(), start) >= timeout_ms:
                return None
            self.step(step_ms)
        return self.replies.pop(0)

    def close(self):
        if self.mqtt is not None:
            try:
                self.mqtt.disconnect()
            except OSError:
                pass
            self.mqtt = None
