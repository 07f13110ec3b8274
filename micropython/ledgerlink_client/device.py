"""Device side of the ledgerlink protocol over MQTT: sessions, readings, offline queue, reconnects, receipts.

``DeviceClient(config, mqtt_factory)`` seals each reading (docs/protocol.md, "Device readings") the
moment it is taken, with the next sequence number, and appends it to the offline queue; ``step`` /
``flush`` deliver the queue oldest first over MQTT with QoS 1. ``mqtt_factory()`` returns a new,
unconnected MQTT object with the interface of ``mqtt.MQTTClient`` (``connect``, ``publish`` returning
a packet id, ``subscribe``, ``ping``, ``poll`` returning events, ``close``); it may raise OSError
(broker unreachable). The protocol itself (frames, session requests and responses, receipts) is
``ledgerlink.protocol.device_protocol``, the same code the CPython SDK runs.

Delivery (docs/protocol.md, "Delivery"; ``delivery.py``, loaded on the first connected step): up to
``max_inflight`` frames in flight, paced under the gateway's per-device limit so a backlog drains without
refusals; a PUBACK only says the broker has a frame, which leaves the queue once a gateway says it is
stored (stored-ack, receipt) or refuses it for good; a frame with no stored-ack in time, or refused as
rate-limited or ledger-unavailable, is published again. Stored readings wait for their receipts on the
storage (``lla``), across resets, and the client asks for receipts that do not come. Connections use a
clean session, so after a reconnect everything not yet stored is published again from the queue.
Keepalive: a PINGREQ after ``keepalive_s / 2`` without traffic; no answer within ``keepalive_s`` drops
the connection. Reconnects wait ``backoff_min_ms * 2**failures`` (capped at ``backoff_max_ms``) with full
jitter in the upper half, drawn from ``rng``.

Modes: "session" (default): COSE_Encrypt0 with the session key, kid = session id, Partial IV = seq;
"signed": COSE_Sign1 with the identity key, kid = device id. Both bind the topic as external AAD.

Sessions: with the identity key and the fog CA key ("ca_public"), the client opens its session itself
(ECQV): while connected without a session valid for ``session_margin_s`` more seconds it publishes a
signed session request on its ``session`` topic and takes the checked response from its ``down`` topic;
a request unanswered (or refused) for ``session_timeout_ms`` is replaced by a new one. The session
(certificate, key, Base IV, gateway id, the counter mark it was opened at) is kept in the storage as
``llsess`` and restored after a reset while it is valid, only with an intact counter at or above its mark
(``device_protocol.restore_session``): a counter file that is missing or fails its check restarts the
sequence, and the stored session is then deleted and a new one opened, so no (session id, Partial IV)
pair is ever sent twice. A ``replay`` refusal of a frame sealed under the current session also drops
it (and moves the counter ahead). A gateway that no longer knows the session (refusal codes 10, 11) makes the
client drop it and open a new one; the readings it refused that way go back to the held queue and are
sealed again under the next session (while they are among the last ``max_tracked`` sent; the
plaintext is kept in RAM until the receipt, so not across a reset). Readings taken while there is no
session are held in a second queue (``llh``) on the same storage and sealed, in order, once a
session is open.

Commands: the last executed seq of each controller is kept as ``llcmd`` (``device_protocol.open_commands``:
a lost record refuses the commands from before the loss), for ``client.protocol.handle_command``.

Receipts: with "chain_id" and "validators" (and optionally "gateway_keys") every receipt on the
``down`` topic is checked (batch inclusion proof, anchor transaction inclusion, certified header with
2f+1 validator signatures); ``stats`` counts valid and invalid ones and ``receipts`` keeps the last
``max_results`` results.

Protects against: reading loss while offline or across resets (flash queues, persistent sequence
counter), nonce reuse (a sequence number is never handed out twice, also across sessions), reconnect
storms (jittered backoff), forged session responses and receipts (checked by the protocol; refused
ones are counted, never taken) and hostile replies (decoded strictly; undecodable ones are counted and
ignored). Tested in MicroPython against a real mosquitto broker (tests/micropython/test_client_in_vm.py)
and against the real broker, gateway and ledger (tests/micropython/test_stack_in_vm.py).
"""

import time

from ledgerlink.core import cbor
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.protocol.device_protocol import partial_iv  # noqa: F401  (part of this module's API)
from ledgerlink.core.errors import LedgerlinkError

SESSION_FILE = "llsess"
COMMAND_FILE = "llcmd"


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


# Modules a session opening needs and nothing after it (device_protocol imports them when the next one opens);
# p256_ct: multiplications with secret scalars (the request's, ECDH, the key check; also the public key at start).
SESSION_OPEN_MODULES = ("ecqv", "session_keys", "ecdh", "kdf", "p256_ct")
# Modules sealing a reading loads (AES-CCM; session_keys through the session-chain code; signing: p256_ct and
# RFC 6979's HMAC, kdf) and nothing until the next reading: unloaded after each, so a receipt check does not
# hold them.
SEAL_MODULES = ("ccm", "aes", "session_keys", "kdf", "p256_ct")
# Modules the broker password after a key rotation needs (``key_rotated``) and nothing after it.
KEY_ROTATION_MODULES = ("ecdh", "kdf", "p256_ct")


def _unload(names, package_name="ledgerlink.core"):
    """On MicroPython, forget the modules ``names`` of ``package_name`` (sys.modules and the package's
    attribute), so their functions and tables are freed until they are imported again; a no-op on CPython."""
    import sys

    if sys.implementation.name != "micropython":
        return
    package = sys.modules.get(package_name)
    for name in names:
        sys.modules.pop(package_name + "." + name, None)
        if package is not None and name in package.__dict__:
            delattr(package, name)


def _unload_session_code():
    """Forget the code that opens, checks and restores sessions (``SESSION_OPEN_MODULES`` and
    ``ledgerlink.protocol.device_session``) until the next session needs it."""
    _unload(SESSION_OPEN_MODULES)
    _unload(("device_session",), "ledgerlink.protocol")


class DeviceClient:
    """A device's link to its gateway.

    ``config`` (dict): "site"; "identity_key" (32 bytes) and optionally "device_id" (16 bytes, checked
    against it); "mode"; "ca_public" (fog CA key: sessions through ECQV; needed in session mode);
    "chain_id", "validators" (list of public keys), optional "gateway_keys" ({id: key}) and "group_key"
    (the set's FROST group key, when its chain has one) to check receipts; optional tuning keys as in ``device_setup.DEFAULTS`` ("gc_threshold": see
    ``device_setup._collect_every``) and "client_id"; "login": the broker login ``mqtt_factory`` connects with ({"username", "password",
    "login_key"}: the site's broker-login public key), whose password ``key_rotated`` changes in place;
    "key_rotated": true after a rotation, when "identity_key" is the rotated key and "device_id" the id
    the device registered with.
    ``storage`` holds the queues,
    the sequence counter, the session and the command record (``queue.FileStorage`` on flash; RAM when omitted).
    ``rng(n)``, ``ticks_ms()``, ``ticks_diff(a, b)``, ``time_ms()`` (epoch milliseconds) and
    ``sleep_ms(ms)`` can be injected. ``on_reply(reply)`` gets each decoded reply map, ``on_result(r)``
    each protocol result (SessionOpened, ReceiptResult, Refused, RegistrationHeld, Ignored).
    """

    def __init__(self, config, mqtt_factory, storage=None, rng=None, ticks_ms=None, ticks_diff=None,
                 time_ms=None, sleep_ms=None, on_reply=None, backend=None, on_result=None):
        from ledgerlink_client import device_setup

        try:
            device_setup.start(self, config, mqtt_factory, storage, rng, ticks_ms, ticks_diff, time_ms, sleep_ms,
                               on_reply, backend, on_result)
        finally:
            _unload(("device_setup",), "ledgerlink_client")
        _unload(SEAL_MODULES)                   # the public key's multiplication

    @property
    def session(self):
        """The current ``device_protocol.Session`` or None."""
        return self.protocol.session

    def session_valid(self, margin_s=0):
        return self.protocol.session_valid(self.time_ms(), margin_s)

    @property
    def connected(self):
        return self.mqtt is not None

    def publish(self, measurements, time_ms=None):
        """Seal a reading with the next sequence number and queue it; return the sequence number.

        In session mode without a valid session the reading is held (on the storage) until a session
        opens, and None is returned.
        """
        t = self.time_ms() if time_ms is None else time_ms
        if self.mode == "session" and (len(self.held) or not self.protocol.session_valid(t)):
            self.held.push("h", cbor.dumps([t, measurements]))
            return None
        return self._seal(measurements, t)

    def register(self, role=1, attributes=None, time_ms=None):
        """Queue this device's own registration request for the ``reg`` topic; the gateway checks it and
        holds it until an admin registers the device (``stats["registrations_held"]`` counts its answers)."""
        out = self.protocol.registration_request(self.time_ms() if time_ms is None else time_ms, role, attributes)
        self._registration = out.frame_hash
        self.queue.push(out.topic, out.payload)
        return out.frame_hash

    def _seal(self, measurements, t):
        out = self.protocol.reading(measurements, t, self.mode)
        self.queue.push(out.topic, out.payload)
        if self.ecqv:
            self._plain[out.seq] = (self.protocol.session.keys.session_id, cbor.dumps([t, measurements]))
            self._plain_order.append(out.seq)
            while len(self._plain_order) > self.config["max_tracked"]:
                self._plain.pop(self._plain_order.pop(0), None)
            if self.protocol.chain_due(t):
                self.state_chain(t, False)
        _unload(SEAL_MODULES)
        return out.seq

    def state_chain(self, time_ms=None, close=True):
        """Queue the device-signed chain statements of the session readings (``ledgerlink.protocol.session_chain``):
        those due (``EVERY_FRAMES`` readings or a session change: done by ``publish``; ``EVERY_MS`` after a
        chain's first reading with no reading since: done by ``step``), and with ``close`` the rest too
        (call it before a reset or power-down that ends the session). Returns how many were queued. A chain
        lost with a reset is never stated: its readings stay uncovered."""
        t = self.time_ms() if time_ms is None else time_ms
        n = 0
        while True:
            out = self.protocol.chain_statement(t, close)
            if out is None:
                return n
            self.queue.push(out.topic, out.payload)
            n += 1

    def _release_held(self):
        """Seal the held readings in order under the session now open."""
        while len(self.held) and self.protocol.session_valid(self.time_ms()):
            item = cbor.loads(self.held.peek(0)[1])
            self._seal(item[1], item[0])
            self.held.pop()

    def pending(self):
        """Readings no gateway has said it stored yet (held ones included)."""
        return len(self.queue) + len(self.held)

    @property
    def delivery(self):
        """Frames in flight and readings waiting for receipts (``delivery.Delivery``), loaded when first needed."""
        if self._delivery is None:
            from ledgerlink_client.delivery import Delivery

            self._delivery = Delivery(self)
        return self._delivery

    def request_receipts(self, items):
        """Ask the gateway now for the stored-acks and receipts of frames named by seq or frame hash."""
        if self.mqtt is None:
            raise OSError("not connected")
        self.delivery.request(items)

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
        if self._delivery is not None:
            self._delivery.inflight = []
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

    def _reply_of(self, topic, payload):
        """The decoded reply of a message on the ``down`` topic, or None when nothing more is to be done
        with it (another topic; a stored-ack, a not-stored answer or a bad reply, handled here)."""
        if topic != self.topic_down:
            return None
        try:
            return self.protocol.decode_reply(payload)
        except LedgerlinkError:
            if not self.delivery.reply(payload):
                self.stats["bad_replies"] += 1
            return None

    def _on_reply(self, reply):
        if self.on_reply is not None:
            self.on_reply(reply)
        if reply[0] != dp.KIND_RECEIPT or not self.check_receipts:
            self._keep_reply(reply)  # a checked receipt is kept as its result (``receipts``), not whole
        if reply[0] == dp.KIND_RECEIPT and not self.check_receipts:
            return
        result = self.delivery.down(reply)
        if result is False:                     # a transient refusal: the frame goes out again later
            return
        if result is None:
            result = self.protocol.handle_reply(reply, self.time_ms())
        self._on_result(result)
        if self.on_result is not None:
            self.on_result(result)

    def _keep_reply(self, reply):
        self.replies.append(reply)
        if len(self.replies) > self.config["max_replies"]:
            self.replies.pop(0)

    def _on_result(self, result):
        if isinstance(result, dp.ReceiptResult):
            if result.valid and result.seq in self._plain:
                del self._plain[result.seq]
                self._plain_order.remove(result.seq)
            self.stats["receipts_valid" if result.valid else "receipts_invalid"] += 1
            self.receipts.append(result)
            if len(self.receipts) > self.config["max_results"]:
                self.receipts.pop(0)
        elif isinstance(result, dp.SessionOpened):
            self.stats["sessions_opened"] += 1
            self._session_at = None
            self.storage.replace(SESSION_FILE, self.protocol.session_record())
            _unload_session_code()
            self._release_held()
        elif isinstance(result, dp.RegistrationHeld):
            self.stats["registrations_held"] += 1
        elif isinstance(result, dp.Refused):
            from ledgerlink_client import refused

            refused.taken(self, result)
            _unload(("refused",), "ledgerlink_client")
        else:
            self.stats["ignored_replies"] += 1

    def _maintain_session(self, now):
        """Send a session request when the session is missing or close to its end and none is in time."""
        if not self.ecqv:
            return
        if self.protocol.session_valid(self.time_ms(), self.config["session_margin_s"]):
            if len(self.held):
                self._release_held()
            return
        if self._session_at is not None and self.ticks_diff(now, self._session_at) < self.config["session_timeout_ms"]:
            return
        out = self.protocol.session_request(self.time_ms())
        self.mqtt.publish(out.topic, out.payload, 1)
        self._session_at = now
        self._last_tx = now
        self.stats["session_requests"] += 1

    def open_session(self, timeout_ms=60000, step_ms=50):
        """Run ``step`` until a session valid for ``session_margin_s`` is open; True if within ``timeout_ms``."""
        start = self.ticks_ms()
        while not self.protocol.session_valid(self.time_ms(), self.config["session_margin_s"]):
            if self.ticks_diff(self.ticks_ms(), start) >= timeout_ms:
                return False
            self.step(step_ms)
        return True

    def step(self, timeout_ms=100):
        """One round: state a quiet session chain when due, (re)connect when due, send and retransmit, keep
        alive, handle what arrives."""
        if self.protocol.chains is not None and self.protocol.chain_due(self.time_ms()):
            self.state_chain(None, False)
            _unload(SEAL_MODULES)
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
        pending = getattr(self.mqtt, "pending", None)
        try:
            if pending is None or not pending():    # what already arrived is handled before anything is resent
                self._maintain_session(now)
                self.delivery.send(now)
                self.delivery.ask(now)
            if self._ping_sent is not None:
                if self.ticks_diff(now, self._ping_sent) > keepalive_ms:
                    raise OSError("no answer to PINGREQ")
            elif keepalive_ms and self.ticks_diff(now, self._last_tx) >= keepalive_ms // 2:
                self.mqtt.ping()
                self._ping_sent = now
                self._last_tx = now
                self.stats["pings"] += 1
            events = self.mqtt.poll(timeout_ms)
            while events:
                event = events.pop(0)
                self._ping_sent = None
                if event[0] == "puback":
                    self.delivery.puback(event[1])
                elif event[0] == "msg":
                    reply = self._reply_of(event[1], event[2])
                    event = None                # the raw payload is not kept while the reply is checked
                    if reply is not None:
                        self._on_reply(reply)
                elif event[0] == "suback" and 0x80 in event[2]:
                    raise OSError("subscription refused")
                if not events and pending is not None and pending():
                    events = self.mqtt.poll(0)  # the next message already received, decoded only now
        except OSError:
            self._drop(self.ticks_ms())

    def flush(self, timeout_ms=10000, step_ms=50):
        """Run ``step`` until no reading is queued or held; return True if that happened within ``timeout_ms``."""
        start = self.ticks_ms()
        while len(self.queue) or len(self.held):
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

    def wait_receipts(self, n, timeout_ms=30000, step_ms=50):
        """Run ``step`` until ``n`` receipts (valid or not) were checked in all; return that count."""
        start = self.ticks_ms()
        while self.stats["receipts_valid"] + self.stats["receipts_invalid"] < n:
            if self.ticks_diff(self.ticks_ms(), start) >= timeout_ms:
                break
            self.step(step_ms)
        return self.stats["receipts_valid"] + self.stats["receipts_invalid"]

    def key_rotated(self, identity_key):
        """After the ledger recorded the rotation of this device's key to ``identity_key`` (its device id
        stays): sign with that key from now on, set ``login``'s password to the one the site gives the
        account for it (``ledgerlink.protocol.broker_login``, the site's code, with "login_key"; ECDH is
        imported for it and unloaded after) and reconnect with it at the next step. Returns
        ``login`` for the board to store."""
        from ledgerlink_client import device_setup

        try:
            return device_setup.key_rotated(self, identity_key)
        finally:
            _unload(("device_setup",), "ledgerlink_client")

    def close(self):
        if self.mqtt is not None:
            try:
                self.mqtt.disconnect()
            except OSError:
                pass
            self.mqtt = None
