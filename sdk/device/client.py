"""``Device``: the ledgerlink device API over MQTT 5 (paho-mqtt 2.x), QoS 1.

One I/O thread owns the connection: it connects with a keepalive, reconnects after a failure with
exponential backoff and jitter (``backoff_delay``), resubscribes to the device's ``down`` and ``cmd``
topics, and publishes queued frames in queue order. Session requests are sent only while connected
(they are time-bound); in session mode a reading made without a valid session is signed instead.

Delivery is end to end (docs/protocol.md, "Delivery"): every reading and registration request is first
put in the durable ``OfflineQueue`` and leaves it only when the gateway says it is stored (a
gateway-signed stored-ack checked with ``ledgerlink.protocol.stored_ack``, a valid receipt, or the held
reply to a registration request) or refuses it for good. A broker PUBACK only marks a frame sent; a
PUBACK with reason 0x10 (no gateway subscribed) or a failure code, a transient refusal (rate-limited,
ledger-unavailable) and a frame with no ack within ``ack_timeout`` are published again after the
backoff delay. At most ``MAX_IN_FLIGHT`` frames wait for their ack, within the ``MAX_AHEAD`` oldest (so
a resent frame stays inside the gateway's replay window), and a backlog is paced at ``PACE_PER_S``
frames/s with bursts of ``PACE_BURST``, under the gateway's per-device limit (10/s, burst 20), so a
backlog of any length drains without refusals. Stored readings wait for their receipts in the queue
file, also across restarts; the device asks the gateway (``ask`` topic) for receipts that have not come
``receipt_wait`` seconds after the ack, and ``request_receipts`` asks for any frame by seq or hash.

Incoming gateway replies and commands go through ``DeviceCore`` (receipts checked against the
trusted validator set, commands only from controllers proved by the ledger) and are handed to the
``on_receipt``, ``on_refusal`` and ``on_command`` callbacks. Tested in tests/device/test_client.py
against a real mosquitto broker that is stopped and restarted.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any, Callable, Iterable, Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ledgerlink.core import cbor
from ledgerlink.protocol import stored_ack
from ledgerlink.protocol.device_protocol import KIND_REGISTRATION
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.device.core import (KIND_RECEIPT, KIND_REFUSAL, MODE_SESSION, MODE_SIGNED, CommandResult, DeviceCore,
                                    DeviceError, OutFrame, ReceiptResult, Refused, RegistrationHeld, SequenceCounter,
                                    SessionOpened)
from ledgerlink.device.keystore import FileCounter, FileKeystore, FileRecord
from ledgerlink.device.offline_queue import OfflineQueue, QueuedFrame

log = logging.getLogger(__name__)

QOS = 1
MAX_IN_FLIGHT = 16              # frames published and not yet acknowledged by the gateway
MAX_AHEAD = 32                  # frames published from the head of the queue (inside the gateway's 64-seq window)
PACE_PER_S = 8.0                # frames published per second in a backlog: under the gateway's 10/s per device
PACE_BURST = 16.0               # and its burst of 20
ASK_EVERY_S = 2.0               # at most one receipt request per this many seconds
NO_SUBSCRIBERS = 0x10           # PUBACK reason: the broker had no subscriber for the frame
BROKER_REFUSED_FOR_GOOD = (0x95, 0x99)   # packet too large, payload format invalid: sending again cannot help
PUBLISHED, SENT = 1, 2          # a frame's state: published (no PUBACK yet), sent (PUBACK, no gateway ack yet)


def now_ms() -> int:
    return int(time.time() * 1000)


def wall_ms() -> int:
    return int(time.time() * 1000)


class _Pacer:
    """Token bucket on the monotonic clock: ``rate`` frames per second, at most ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Delivery:
    """What the I/O thread knows of a queued frame: state (None: waiting), MQTT mid, tries, next time."""

    __slots__ = ("state", "mid", "tries", "due")

    def __init__(self) -> None:
        self.state: int | None = None
        self.mid = -1
        self.tries = 0
        self.due = 0.0             # monotonic time: publish again (waiting) / resend (sent, no ack)


def backoff_delay(attempt: int, initial: float, maximum: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before reconnect ``attempt`` (0-based): half of min(maximum, initial * 2^attempt), plus up to the other half at random."""
    cap = min(maximum, initial * (2 ** min(attempt, 32)))
    return cap / 2 + rand() * cap / 2


class Device:
    """A device connected to a site broker.

    ``core``: the protocol state (``DeviceCore``); ``queue``: the durable ``OfflineQueue``. ``mode`` is
    ``"signed"`` or ``"session"``. Callbacks run on the I/O thread and must not block. ``password`` (and
    ``username``): the device's broker account; ``tls``: an ``ssl.SSLContext`` that checks the broker.
    """

    def __init__(self, core: DeviceCore, queue: OfflineQueue, host: str, port: int = 1883, mode: str = MODE_SIGNED,
                 keepalive: int = 30, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 session_margin_s: int = 300, client_id: str | None = None, ack_timeout: float = 10.0,
                 receipt_wait: float = 30.0,
                 on_receipt: Callable[[ReceiptResult], None] | None = None,
                 on_refusal: Callable[[Refused], None] | None = None,
                 on_command: Callable[[CommandResult], None] | None = None,
                 clock: Callable[[], int] = now_ms, username: str | None = None, password: str | None = None,
                 tls: Any = None) -> None:
        if mode not in (MODE_SIGNED, MODE_SESSION):
            raise ValueError("mode must be %r or %r" % (MODE_SIGNED, MODE_SESSION))
        self.core = core
        self.queue = queue
        self.host = host
        self.port = port
        self.mode = mode
        self.keepalive = keepalive
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.session_margin_s = session_margin_s
        self.on_receipt = on_receipt
        self.on_refusal = on_refusal
        self.on_command = on_command
        self.clock = clock
        self.connects = 0
        self.receipts_valid = 0
        self.receipts_invalid = 0
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._session_event = threading.Event()
        self._registration_held = threading.Event()
        self._session_result: SessionOpened | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.ack_timeout = ack_timeout
        self.receipt_wait = receipt_wait
        self.acks_valid = 0
        self.acks_invalid = 0
        self.resent = 0            # publishes of a frame again (no subscriber, transient refusal, no ack in time)
        self._deliveries: dict[int, _Delivery] = {}       # queue id -> delivery state (I/O thread)
        self._by_mid: dict[int, int] = {}                  # MQTT mid -> queue id of frames awaiting a PUBACK
        self._pacer = _Pacer(PACE_PER_S, PACE_BURST)
        self._statements: list = []                        # commit statements whose signature checked
        self._next_ask = 0.0
        self._attempt = 0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "ll-" + core.device_id.hex(),
                                   protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        if password is not None:
            self.set_login(password, username)
        if tls is not None:
            self._client.tls_set_context(tls)

    def set_login(self, password: str, username: str | None = None) -> None:
        """The broker account used from the next connect on (``username`` defaults to ``ll-<device id>``, the
        client id; ``ledgerlink.tools.broker_access`` binds each account to its client id)."""
        self._client.username_pw_set(username or "ll-" + self.core.device_id.hex(), password)

    def key_rotated(self, identity_key: bytes, login_key: bytes) -> dict[str, str]:
        """After the ledger recorded the rotation of this device's key to ``identity_key`` (its device id
        stays): sign with that key from now on, and log in with the broker password the site gives the
        account for it (``ledgerlink.protocol.broker_login``, the board's code too, with the site's
        broker-login public key ``login_key``) from the next connect on; the broker ends the old login's
        connection when the site follows the rotation. Returns the new login for the caller to store."""
        from ledgerlink.protocol import broker_login

        core = self.core
        login = broker_login.login(core.device_id, identity_key, login_key, core.crypto)
        public_key = core.crypto.public_key(bytes(identity_key), True)
        with self._lock:
            core._priv = bytes(identity_key)
            core.public_key = public_key
            self.set_login(login["password"], login["username"])
        return login

    @classmethod
    def open(cls, directory: str, site: str, host: str, port: int, chain_id: str, validator_keys: Iterable[bytes],
             ca_public: bytes | None = None, gateway_keys: Mapping[bytes, bytes] | None = None,
             max_queued: int = 10_000, backend: Any = None, group_key: bytes | None = None, **kw: Any) -> "Device":
        """A device whose key (made on first use), sequence mark, command record and queue live in ``directory``
        (``group_key``: the validator set's FROST group key, when its chain has one)."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        keystore = FileKeystore(os.path.join(directory, "identity.key"), backend)
        new_identity = not keystore.exists()
        priv = keystore.load_or_create()
        counter = SequenceCounter(FileCounter(os.path.join(directory, "seq")))
        core = DeviceCore(priv, site, counter, chain_id, validator_keys, ca_public, gateway_keys, backend,
                          group_key=group_key)
        core.open_commands(FileRecord(os.path.join(directory, "commands")), kw.get("clock", now_ms)(), new_identity)
        queue = OfflineQueue(os.path.join(directory, "queue.db"), max_queued)
        return cls(core, queue, host, port, **kw)

    def __repr__(self) -> str:
        return "Device(%s, %s:%d)" % (self.core.device_id.hex(), self.host, self.port)

    # --- lifecycle ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        if self._thread is not None:
            raise DeviceError("device already started")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="ll-device-io", daemon=True)
        self._thread.start()

    def stop(self, close_queue: bool = True) -> None:
        try:
            while self.state_chain() is not None:
                pass
        except Exception as exc:  # noqa: BLE001 - the queue was closed by an earlier stop
            log.warning("chain statement not queued at stop: %s", exc)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if close_queue:
            self.queue.close()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_registration_held(self, timeout: float) -> bool:
        """Wait until the gateway answers that it holds the registration request for an admin."""
        return self._registration_held.wait(timeout)

    def wait_flushed(self, timeout: float) -> bool:
        """Wait until every queued frame is stored by the gateway (or refused for good)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.queue) == 0:
                return True
            time.sleep(0.02)
        return len(self.queue) == 0

    def wait_sent(self, timeout: float) -> bool:
        """Wait until every queued frame was accepted by the broker at least once (PUBACK); they stay in
        the queue until the gateway stores them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = [f.id for f in self.queue.peek(MAX_AHEAD)]
            if all((d := self._deliveries.get(i)) is not None and d.state == SENT for i in ids):
                return True
            time.sleep(0.02)
        return False

    def request_receipts(self, items: Iterable[int | bytes]) -> None:
        """Ask the gateway for the stored-acks and receipts of frames named by seq or frame hash (at most
        ``stored_ack.MAX_ASK``); the answers arrive like any other (``on_receipt``, ``receipt``)."""
        if not self.connected:
            raise DeviceError("not connected: a receipt request is only sent live")
        info = self._client.publish(self.core.topic("ask"), stored_ack.request(items), qos=QOS)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise DeviceError("receipt request not sent: %s" % mqtt.error_string(info.rc))

    def receipt(self, seq: int | None = None, frame_hash: bytes | None = None) -> bytes | None:
        """The checked receipt (CBOR) kept for a frame of this device, by seq or frame hash; None when none came."""
        return self.queue.receipt(frame_hash, seq)

    @property
    def awaiting_receipts(self) -> int:
        """Stored frames whose receipt has not come yet."""
        return self.queue.awaiting_count()

    # --- sending ------------------------------------------------------------------------------------

    def register(self, role: int, attributes: Mapping[str, Any] | None = None) -> OutFrame:
        """Queue the registration request for the ``reg`` topic; the gateway holds it until an admin
        registers the device (``ledgerlink admin pending``, ``ledgerlink admin register --pending``)."""
        self._registration_held.clear()
        with self._lock:
            out = self.core.registration_request(self.clock(), role, attributes)
        self._enqueue(out)
        return out

    def publish_reading(self, measurements: Mapping[Any, Any], time_ms: int | None = None) -> OutFrame:
        """Build the next reading (signed, or encrypted under the session) and queue it for publishing."""
        t = self.clock() if time_ms is None else time_ms
        with self._lock:
            mode = self.mode
            if mode == MODE_SESSION and not self.core.session_valid(t, self.session_margin_s):
                log.info("no valid session; reading %s is signed instead", self.core.device_id.hex())
                mode = MODE_SIGNED
            out = self.core.reading(measurements, t, mode)
            statement = self.core.chain_statement(t) if self.core.chain_due(t) else None
        self._enqueue(out)
        if statement is not None:
            self._enqueue(statement)
        return out

    def state_chain(self, time_ms: int | None = None) -> OutFrame | None:
        """Queue the device-signed chain statement of the session frames not stated yet (``session_chain``;
        done on its own every ``session_chain.EVERY_FRAMES`` session frames, ``EVERY_MS`` after a chain's first
        frame even when no frame follows, and when the session changes), or return None
        when there are none. ``stop`` calls it, so a closed session's last readings are covered too."""
        t = self.clock() if time_ms is None else time_ms
        with self._lock:
            statement = self.core.chain_statement(t, close=True)
        if statement is not None:
            self._enqueue(statement)
        return statement

    def _chain_step(self) -> None:
        """Queue a chain statement that came due with no reading to carry it (``session_chain.EVERY_MS`` after
        the chain's first frame), so the last readings of a device that goes quiet are covered too."""
        t = self.clock()
        with self._lock:
            statement = self.core.chain_statement(t) if self.core.chain_due(t) else None
        if statement is not None:
            self._enqueue(statement)

    def _enqueue(self, out: OutFrame) -> None:
        self.queue.put(out.topic, out.payload, out.seq)
        self._wake.set()

    def open_session(self, timeout: float = 10.0) -> SessionOpened:
        """Request a session certificate and wait for the verified response; DeviceError when none comes."""
        if not self.connected:
            raise DeviceError("not connected: a session request is only sent live")
        self._session_event.clear()
        self._session_result = None
        with self._lock:
            out = self.core.session_request(self.clock())
        info = self._client.publish(out.topic, out.payload, qos=QOS)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise DeviceError("session request not sent: %s" % mqtt.error_string(info.rc))
        if not self._session_event.wait(timeout) or self._session_result is None:
            raise DeviceError("no valid session response within %.1f s" % timeout)
        return self._session_result

    def ensure_session(self, timeout: float = 10.0) -> bool:
        """Open or refresh the session when it is missing or within ``session_margin_s`` of expiry."""
        with self._lock:
            if self.core.session_valid(self.clock(), self.session_margin_s):
                return True
        if not self.connected:
            return False
        self.open_session(timeout)
        return True

    # --- I/O thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._chain_step()
            if not self._connected.is_set() and not self._try_connect():
                continue
            rc = self._client.loop(timeout=0.05)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._lost("loop: %s" % mqtt.error_string(rc))
                continue
            self._flush_step()
            self._ask_step()
        try:
            if self._connected.is_set():
                self._client.disconnect()
                self._client.loop(timeout=0.1)
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass
        self._connected.clear()

    def _try_connect(self) -> bool:
        """Connect and wait for CONNACK; after a failure, sleep the backoff delay and return False."""
        try:
            self._client.connect(self.host, self.port, keepalive=self.keepalive, clean_start=True)
            deadline = time.monotonic() + max(5.0, float(self.keepalive))
            while not self._connected.is_set() and time.monotonic() < deadline and not self._stopping.is_set():
                if self._client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            if self._connected.is_set():
                return True
            raise ConnectionError("no CONNACK")
        except (OSError, ConnectionError) as exc:
            delay = backoff_delay(self._attempt, self.backoff_initial, self.backoff_max)
            self._attempt += 1
            log.info("connect to %s:%d failed (%s); retry in %.2f s", self.host, self.port, exc, delay)
            try:
                self._client.disconnect()
            except Exception:  # noqa: BLE001 - the socket may be half open
                pass
            self._stopping.wait(delay)
            return False

    def _lost(self, why: str) -> None:
        log.info("connection lost (%s)", why)
        self._connected.clear()
        self._unpublish()

    def _unpublish(self) -> None:
        """Frames published without a PUBACK go out again on the next connection (a new session)."""
        for d in self._deliveries.values():
            if d.state == PUBLISHED:
                d.state = None
        self._by_mid.clear()

    def _retry_later(self, d: _Delivery) -> None:
        d.state = None
        d.due = time.monotonic() + backoff_delay(d.tries, self.backoff_initial, self.backoff_max)
        d.tries += 1
        self.resent += 1

    def _flush_step(self) -> None:
        """Publish the frames that are due, oldest first, within the in-flight and pacing limits."""
        if not self._connected.is_set():
            return
        frames = self.queue.peek(MAX_AHEAD)
        deliveries = self._deliveries
        if len(deliveries) > len(frames):               # frames that left the queue
            ids = {f.id for f in frames}
            for i in [i for i in deliveries if i not in ids]:
                del deliveries[i]
        now = time.monotonic()
        in_flight = 0
        for f in frames:
            d = deliveries.get(f.id)
            if d is None:
                d = deliveries[f.id] = _Delivery()
            if d.state == SENT and now >= d.due:         # no ack in time: the gateway may not have it
                self._retry_later(d)
                d.due = now
            if d.state is not None:
                in_flight += 1
        for f in frames:
            if in_flight >= MAX_IN_FLIGHT:
                return
            d = deliveries[f.id]
            if d.state is not None or d.due > now:
                continue
            if not self._pacer.take():
                return
            info = self._client.publish(f.topic, f.payload, qos=QOS)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._lost("publish: %s" % mqtt.error_string(info.rc))
                return
            d.state, d.mid = PUBLISHED, info.mid
            self._by_mid[info.mid] = f.id
            in_flight += 1

    def _ask_step(self) -> None:
        """Ask for the receipts of stored frames that have waited ``receipt_wait`` for them."""
        if not self._connected.is_set() or time.monotonic() < self._next_ask:
            return
        self._next_ask = time.monotonic() + ASK_EVERY_S
        now = wall_ms()
        due = self.queue.due_for_asking(now, int(self.receipt_wait * 1000), stored_ack.MAX_ASK)
        if due:
            self._client.publish(self.core.topic("ask"), stored_ack.request([a.hash for a in due]), qos=QOS)
            self.queue.asked([a.hash for a in due], now)

    # --- paho callbacks (I/O thread) ----------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        self.connects += 1
        self._attempt = 0
        self._unpublish()
        client.subscribe([(self.core.down_topic, QOS), (self.core.cmd_topic, QOS)])
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._lost("disconnect: %s" % reason_code)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        """A PUBACK: the frame is sent, not delivered. With no subscriber (0x10) or a failure it is
        published again after the backoff delay; a frame the broker can never take is refused for good."""
        frame_id = self._by_mid.pop(mid, None)
        d = self._deliveries.get(frame_id) if frame_id is not None else None
        if d is None or d.state != PUBLISHED:
            return
        code = getattr(reason_code, "value", 0)
        if code in BROKER_REFUSED_FOR_GOOD:
            log.warning("broker refuses a frame for good: %s", reason_code)
            self.queue.refuse(frame_id)
            del self._deliveries[frame_id]
        elif code == NO_SUBSCRIBERS or code >= 0x80:
            log.info("frame not delivered by the broker (%s); sent again later", reason_code)
            self._retry_later(d)
        else:
            d.state = SENT
            d.due = time.monotonic() + self.ack_timeout * (1 + min(d.tries, 5))

    def _down(self, payload: bytes) -> bool:
        """Delivery replies on the down topic (stored-acks, receipts, refusals and held replies of queued or
        awaiting frames, not-stored answers); False for a reply the protocol core handles alone."""
        try:
            msg = cbor.loads(bytes(payload), max_depth=16, max_size=len(payload))
        except LedgerlinkError:
            return False
        kind = msg.get(0) if isinstance(msg, dict) else None
        if kind == stored_ack.KIND_STORED:
            try:
                ack = stored_ack.check(msg, self.core.device_id, self.core.site, self.core.gateway_keys,
                                       self.core.crypto, self._statements)
            except LedgerlinkError as exc:
                self.acks_invalid += 1
                log.warning("invalid stored-ack: %s", exc)
                return True
            self.acks_valid += 1
            frame = self.queue.find(ack.frame_hash, MAX_AHEAD)
            if frame is not None and frame.seq == ack.seq:
                self._stored(frame)
            return True
        if kind == stored_ack.KIND_NOT_STORED:
            item = msg.get(1)
            awaiting = self.queue.awaiting(item if isinstance(item, bytes) else None,
                                           item if isinstance(item, int) else None)
            if awaiting is not None and self.queue.not_stored(awaiting.hash):
                log.warning("the gateway does not hold seq %s; it is delivered again", awaiting.seq)
            return True
        if kind == KIND_RECEIPT and isinstance(msg.get(1), bytes):
            return self._receipt(msg, payload)
        if kind in (KIND_REFUSAL, KIND_REGISTRATION) and isinstance(msg.get(1), bytes):
            frame = self.queue.find(msg[1], MAX_AHEAD)
            if frame is None:
                return False
            if kind == KIND_REGISTRATION:
                self._stored(frame)
                return False                    # the core reports RegistrationHeld
            code, text = msg.get(2), msg.get(3)
            if code in stored_ack.TRANSIENT_REFUSALS:
                d = self._deliveries.get(frame.id)
                if d is not None:
                    self._retry_later(d)
                return True
            self.queue.refuse(frame.id)
            self._deliveries.pop(frame.id, None)
            with self._lock:                    # the protocol's own handling (session, counter) first
                event = self.core.handle_down(payload, self.clock())
            if not isinstance(event, Refused):  # sent before a restart: not in the protocol's RAM list
                event = Refused(frame.hash, code if cbor.is_uint(code) else 0, text if isinstance(text, str) else "",
                                frame.seq)
            self._dispatch(event)
            return True
        return False

    def _stored(self, frame: QueuedFrame) -> None:
        self.queue.stored(frame, wall_ms())
        self._deliveries.pop(frame.id, None)

    def _receipt(self, msg: dict, payload: bytes) -> bool:
        """A receipt of a frame awaiting it (or still queued: its ack was lost) is checked against that
        frame and kept; False when no such frame is known here (the core checks it against its sent list)."""
        frame_hash = msg[1]
        awaiting = self.queue.awaiting(frame_hash)
        queued = None if awaiting is not None else self.queue.find(frame_hash, MAX_AHEAD)
        frame = awaiting.payload if awaiting is not None else queued.payload if queued is not None else None
        if frame is None:
            if self.queue.receipt(frame_hash) is not None:
                return True                     # a copy of a receipt already kept
            return False
        with self._lock:
            result = self.core.verify_receipt(msg, frame)
        if result.valid:
            if queued is not None:
                self._stored(queued)
            self.queue.receipt_received(frame_hash, result.seq, bytes(payload))
            if self.core.sent.get(result.seq) == frame_hash:
                del self.core.sent[result.seq]
        self._dispatch(result)
        return True

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.core.down_topic:
                if self._down(msg.payload):
                    return
                with self._lock:
                    event = self.core.handle_down(msg.payload, self.clock())
                self._dispatch(event)
            elif msg.topic == self.core.cmd_topic:
                with self._lock:
                    result = self.core.handle_command(msg.topic, msg.payload, self.clock())
                if not result.accepted:
                    log.warning("command refused: %s", result.reason)
                if self.on_command is not None:
                    self.on_command(result)
        except Exception:  # noqa: BLE001 - a callback bug must not stop the I/O thread
            log.exception("handling a message on %s failed", msg.topic)

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, SessionOpened):
            self._session_result = event
            self._session_event.set()
        elif isinstance(event, ReceiptResult):
            if event.valid:
                self.receipts_valid += 1
            else:
                self.receipts_invalid += 1
                log.warning("invalid receipt: %s", event.reason)
            if self.on_receipt is not None:
                self.on_receipt(event)
        elif isinstance(event, RegistrationHeld):
            log.info("the gateway holds the registration request for an admin")
            self._registration_held.set()
        elif isinstance(event, Refused):
            log.warning("gateway refused seq %s: %s (%d)", event.seq, event.reason, event.code)
            if self.on_refusal is not None:
                self.on_refusal(event)
        else:
            log.info("reply ignored: %s", getattr(event, "reason", event))


__all__ = ["Device", "backoff_delay"]
