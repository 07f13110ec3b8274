"""``Device``: the ledgerlink device API over MQTT 5 (paho-mqtt 2.x), QoS 1.

One I/O thread owns the connection: it connects with a keepalive, reconnects after a failure with
exponential backoff and jitter (``backoff_delay``), resubscribes to the device's ``down`` and ``cmd``
topics, and publishes queued frames one at a time in queue order. Every reading and registration
request is first put in the durable ``OfflineQueue`` and removed only when the broker acknowledges it
(PUBACK), so readings made while the broker is down are published, in order and with their original
sequence numbers, once it is back. Session requests are sent only while connected (they are
time-bound); in session mode a reading made without a valid session is signed instead.

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

from ledgerlink.device.core import (MODE_SESSION, MODE_SIGNED, CommandResult, DeviceCore, DeviceError, OutFrame,
                                    ReceiptResult, Refused, RegistrationHeld, SequenceCounter, SessionOpened)
from ledgerlink.device.keystore import FileCounter, FileKeystore
from ledgerlink.device.offline_queue import OfflineQueue

log = logging.getLogger(__name__)

QOS = 1


def now_ms() -> int:
    return int(time.time() * 1000)


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
                 session_margin_s: int = 300, client_id: str | None = None,
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
        self._inflight: tuple[int, int] | None = None     # (mid, queue id)
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

    @classmethod
    def open(cls, directory: str, site: str, host: str, port: int, chain_id: str, validator_keys: Iterable[bytes],
             ca_public: bytes | None = None, gateway_keys: Mapping[bytes, bytes] | None = None,
             max_queued: int = 10_000, backend: Any = None, **kw: Any) -> "Device":
        """A device whose key (made on first use), sequence mark and queue live in ``directory``."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        priv = FileKeystore(os.path.join(directory, "identity.key"), backend).load_or_create()
        counter = SequenceCounter(FileCounter(os.path.join(directory, "seq")))
        core = DeviceCore(priv, site, counter, chain_id, validator_keys, ca_public, gateway_keys, backend)
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
        """Wait until every queued frame is acknowledged by the broker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.queue) == 0:
                return True
            time.sleep(0.02)
        return len(self.queue) == 0

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
        self._enqueue(out)
        return out

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
            if not self._connected.is_set() and not self._try_connect():
                continue
            rc = self._client.loop(timeout=0.05)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._lost("loop: %s" % mqtt.error_string(rc))
                continue
            self._flush_step()
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
        self._inflight = None

    def _flush_step(self) -> None:
        if self._inflight is not None or not self._connected.is_set():
            return
        head = self.queue.peek()
        if not head:
            return
        frame = head[0]
        info = self._client.publish(frame.topic, frame.payload, qos=QOS)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._inflight = (info.mid, frame.id)
        else:
            self._lost("publish: %s" % mqtt.error_string(info.rc))

    # --- paho callbacks (I/O thread) ----------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        self.connects += 1
        self._attempt = 0
        self._inflight = None
        client.subscribe([(self.core.down_topic, QOS), (self.core.cmd_topic, QOS)])
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._lost("disconnect: %s" % reason_code)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        inflight = self._inflight
        if inflight is not None and inflight[0] == mid:
            if getattr(reason_code, "is_failure", False):
                log.warning("broker refused a frame: %s", reason_code)
            self.queue.remove(inflight[1])
            self._inflight = None

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.core.down_topic:
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
