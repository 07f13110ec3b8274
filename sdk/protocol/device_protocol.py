"""The device side of the ledgerlink protocol (docs/protocol.md), sans I/O, in the portable subset.

``DeviceProtocol`` builds what a device sends (readings signed with its identity key or encrypted
under a session key, its registration request, ECQV session requests) and checks what it receives on
its ``down`` and ``cmd`` topics (session responses, receipts, refusals, commands). It moves no bytes
and keeps no files: the caller publishes the frames, and sequence numbers come from a ``counter``
object with ``next()`` that persists its own high-water mark. The same code runs on CPython (wrapped
by ``ledgerlink.device.core.DeviceCore``) and on MicroPython boards (``micropython/ledgerlink_client``).

Protects against:
- nonce reuse: every frame takes the next number of the persistent counter, and the Partial IV of a
  session frame is that number. A stored session is used again only with the counter it was opened
  with (RFC 8613 appendix B.1): its record carries the counter's last number at the session's opening
  and is refused when the counter's store was missing or damaged at start (the sequence restarted) or
  holds less than that mark (an older copy); a lost counter restarts only under a new session. A
  ``replay`` refusal of a frame sealed under the current session drops the session and moves the
  counter ahead (a step that doubles per refusal, reset by a valid receipt), so a device whose counter
  fell behind the gateway's window gets going again instead of repeating refused numbers;
- a gateway or broker lying about a reading's fate: a receipt is valid only when the frame hash is in
  the batch root, the anchor transaction carrying that root and batch size is in the tx root of a
  header certified by 2f+1 of the validators the device trusts, and (when the device knows gateway
  keys) the anchor is signed by a known gateway. Certified headers and anchor signatures already
  checked against the same trust anchors are remembered by hash (``cache_size``), so the receipts of
  one batch cost one header check;
- a forged or replayed session response: the nonce must be the pending one, the certificate must name
  this device, be for sessions and valid now, and the reconstructed key must match it
  (``ecqv.reconstruct``);
- forged or replayed commands: only commands signed by a controller whose device record (role
  controller, active) was proved by an SPV record proof are executed, for this device, in time (not
  expired, valid at most 24 h ahead of the device clock), with a per-controller sequence number above the last
  executed one, kept in a checked record that is written before a command is accepted. See
  ``open_commands`` for a lost or damaged record.
Malformed network data never escapes as IndexError, KeyError or TypeError: ``handle_down`` and
``handle_command`` return results, ``check_receipt`` raises only errors of ``ledgerlink.core.errors``.
Tested in tests/protocol/test_device_protocol.py (forged receipts, wrong header signatures, tampered
session responses; hypothesis on the decoders), tests/device/test_core.py against the gateway's own
checks, and under MicroPython in tests/micropython/test_device_protocol_in_vm.py and, against the real
broker, gateway and ledger, tests/micropython/test_stack_in_vm.py.
"""

import hashlib
import sys

from ledgerlink.core import cbor, cose
from ledgerlink.protocol.codes import (DEVICE_ID_LEN, KIND_RECEIPT, KIND_REFUSAL, KIND_REGISTRATION,  # noqa: F401
                                       KIND_SESSION, MAX_SEQ, NONCE_LEN, RECORD_DEVICE, REASON_REPLAY as REFUSAL_REPLAY,
                                       ROLE_CONTROLLER, ROLE_GATEWAY, ROLE_SENSOR, STATUS_ACTIVE, TX_ANCHOR, TX_DOMAIN,
                                       device_id as device_id_of)
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidMessage, InvalidProof, LedgerlinkError

MAX_REPLY = cose.MAX_FRAME * 4
_IS_CPYTHON = sys.implementation.name == "cpython"

MODE_SIGNED = "signed"
MODE_SESSION = "session"

SESSION_RECORD_VERSION = 2
COMMAND_RECORD_VERSION = 1
COMMAND_AHEAD_MAX_MS = 24 * 3600 * 1000     # a command's not-after is at most this far ahead of the device clock
REPLAY_SKIP_MIN = 64                        # the gateway's replay window
REPLAY_SKIP_MAX = 1 << 16                   # bounds what forged replay refusals can burn of the 2^32 numbers


class DeviceError(LedgerlinkError):
    """A device-side operation cannot be done (no session, no identity key, numbers exhausted, ...)."""


def _sha256(data):
    return hashlib.sha256(data).digest()


def _is_hash(v):
    return isinstance(v, bytes) and len(v) == 32


def partial_iv(seq):
    """The Partial IV of sequence number ``seq``: big-endian, minimal length (1..4 bytes)."""
    if not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise ValueError("seq out of range")
    n = 1
    while seq >> (8 * n):
        n += 1
    return seq.to_bytes(n, "big")


# --- results ---------------------------------------------------------------------------------------


class OutFrame:
    """A frame to publish: ``topic``, ``payload``, ``seq`` (readings) and ``frame_hash``."""

    def __init__(self, topic, payload, seq=None):
        self.topic = topic
        self.payload = payload
        self.seq = seq
        self.frame_hash = _sha256(payload)

    def __repr__(self):
        return "OutFrame(%s, seq=%s, %d bytes)" % (self.topic, self.seq, len(self.payload))


class SessionOpened:
    """A session response was checked: ``session_id``, ``gateway_id``, ``valid_until_s``, ``cert_tx``."""

    def __init__(self, session_id, gateway_id, valid_until_s, cert_tx):
        self.session_id = session_id
        self.gateway_id = gateway_id
        self.valid_until_s = valid_until_s
        self.cert_tx = cert_tx

    def __repr__(self):
        return "SessionOpened(%s)" % self.session_id.hex()


class ReceiptResult:
    """Outcome of a receipt check: ``valid`` with ``reason`` when not; ``height`` of the certified header."""

    def __init__(self, valid, seq, frame_hash, reason="", height=None, gateway_id=None, covered_by=None):
        self.valid = valid
        self.seq = seq
        self.frame_hash = frame_hash
        self.reason = reason
        self.height = height
        self.gateway_id = gateway_id
        self.covered_by = covered_by    # frame hash of the chain statement said to cover this session reading

    def __repr__(self):
        return "ReceiptResult(valid=%s, seq=%s%s)" % (self.valid, self.seq, "" if self.valid else ", " + self.reason)


class Refused:
    """The gateway refused a frame this device sent (``seq`` is None for a session or registration request).

    ``session_dropped``: the refusal (a replay of a frame sealed under the current session) dropped the session.
    """

    def __init__(self, frame_hash, code, reason, seq, session_dropped=False):
        self.frame_hash = frame_hash
        self.code = code
        self.reason = reason
        self.seq = seq
        self.session_dropped = session_dropped

    def __repr__(self):
        return "Refused(seq=%s, code=%d: %s)" % (self.seq, self.code, self.reason)


class RegistrationHeld:
    """The gateway checked this device's registration request and holds it for an admin."""

    def __init__(self, frame_hash):
        self.frame_hash = frame_hash

    def __repr__(self):
        return "RegistrationHeld(%s)" % self.frame_hash.hex()


class Ignored:
    """A reply that was dropped, with the ``reason``."""

    def __init__(self, reason):
        self.reason = reason

    def __repr__(self):
        return "Ignored(%s)" % self.reason


class Session:
    """Session keys with the gateway id, the end of validity (seconds; None: unknown), the certificate and
    ``mark``, the counter's last number when the session opened (every frame of the session has a higher one)."""

    def __init__(self, keys, gateway_id, valid_until_s, cert, mark=None):
        self.keys = keys
        self.gateway_id = gateway_id
        self.valid_until_s = valid_until_s
        self.cert = cert
        self.mark = mark
        self.first_seq = None           # the first number sealed under it since it was taken

    def __repr__(self):
        return "Session(%s, gateway=%s)" % (self.keys.session_id.hex(), self.gateway_id.hex())


# --- records kept across resets: CBOR + a 4-byte check ------------------------------------------------


def _checked(body):
    return body + _sha256(body)[:4]


def _unchecked(data, what):
    data = bytes(data)
    if len(data) < 5 or _sha256(data[:-4])[:4] != data[-4:]:
        raise InvalidMessage("%s check does not match" % what)
    return data[:-4]


# --- command records (persistence) ------------------------------------------------------------------


def encode_commands(fence_ms, seqs):
    """Bytes of the command record: cbor([1, fence-ms, {controller id: last seq}]) + 4-byte check."""
    return _checked(cbor.dumps([COMMAND_RECORD_VERSION, fence_ms, seqs]))


# --- the protocol state of one device ---------------------------------------------------------------


class DeviceProtocol:
    """Protocol state of one device of ``site``.

    ``private_key``: 32-byte identity key (``device_id``, when given, must be its id). ``counter``: the
    persistent sequence counter: ``next()`` returns the next number, ``last`` is the last one handed
    out (after a start: the stored mark), ``lost`` says its store was missing or damaged at start, and
    ``advance(n)`` makes every later number higher than ``n``; ``hold()``, where present, stores the mark at
    once (called when a session opens). ``chain_id`` and ``validator_keys``: the validator set
    trusted for receipts and record proofs (None: receipts cannot be checked). ``ca_public``: the
    fog CA key that issues session certificates. ``gateway_keys``: optional {gateway device-id:
    identity public key}; when given, receipts need an anchor signed by one of them. ``rng(n)``:
    random bytes (default os.urandom). ``max_tracked``: sent frames remembered for receipts.
    ``group_key``: the set's FROST group key (33 bytes) when its chain record holds one: headers then name
    it and may carry one threshold signature instead of 2f+1 votes (``spv.verify_certified_header``).
    """

    def __init__(self, private_key, site, counter, chain_id=None, validator_keys=None, ca_public=None,
                 gateway_keys=None, backend=None, rng=None, max_tracked=4096, device_id=None, cache_size=4,
                 group_key=None):
        self.crypto = get_backend(backend)
        if private_key is None:
            raise ValueError("an identity key is needed")
        self._priv = bytes(private_key)
        self.public_key = self.crypto.public_key(self._priv, True)
        self.device_id = device_id_of(self.public_key)
        if device_id is not None and bytes(device_id) != self.device_id:
            raise ValueError("device_id does not belong to the identity key")
        self.site = site
        self.counter = counter
        self.chain_id = chain_id
        self.validator_keys = [bytes(k) for k in validator_keys] if validator_keys is not None else None
        self.group_key = bytes(group_key) if group_key is not None else None
        self.ca_public = ca_public
        self.gateway_keys = dict(gateway_keys) if gateway_keys is not None else None
        self.rng = rng or _default_rng
        self.max_tracked = max_tracked
        self.cache_size = cache_size
        self.session = None
        self._pending_session = None
        self._registration = None       # frame hash of the last registration request
        self.sent = {}                  # seq -> frame hash, awaiting a receipt
        self.controllers = {}           # controller id -> (key, proof height)
        self._record_heights = {}       # newest proof height seen per device id
        self.command_seqs = {}          # controller id -> last executed seq (as in the command store)
        self._command_store = None
        self._command_start_ms = None
        self._command_fence_ms = None   # None until the command record is read (see open_commands)
        self._replay_skip = REPLAY_SKIP_MIN
        self._replay_upto = 0           # replay refusals of numbers up to this one moved the counter already
        self._headers = []              # [(trust-bound hash, (height, tx root))] of checked headers, newest last
        self._anchors = []              # trust-bound hashes of anchor signatures that verified
        self.chains = None              # session_chain.Chains of the session frames not yet stated

    def __repr__(self):
        return "DeviceProtocol(%s, site=%s)" % (self.device_id.hex(), self.site)

    # --- topics -----------------------------------------------------------------------------------

    def topic(self, leaf):
        return "ll/%s/dev/%s/%s" % (self.site, self.device_id.hex(), leaf)

    @property
    def up_topic(self):
        return self.topic("up")

    @property
    def down_topic(self):
        return self.topic("down")

    @property
    def cmd_topic(self):
        return self.topic("cmd")

    # --- outgoing ---------------------------------------------------------------------------------

    def _identity(self):
        return self._priv

    def registration_request(self, time_ms, role=ROLE_SENSOR, attributes=None):
        """The registration request (proof of possession, external_aad empty) for the ``reg`` topic."""
        from ledgerlink.protocol import device_records

        try:
            return device_records.registration_request(self, time_ms, role, attributes)
        finally:
            _forget_on_boards(*RECORD_MODULES)

    def reading(self, measurements, time_ms, mode=MODE_SIGNED):
        """Build the next reading as a signed or session-encrypted frame bound to the ``up`` topic."""
        if mode != MODE_SIGNED and mode != MODE_SESSION:
            raise ValueError("mode must be %r or %r" % (MODE_SIGNED, MODE_SESSION))
        if mode == MODE_SESSION and self.session is None:
            raise DeviceError("no session: open one first")
        if mode == MODE_SIGNED:
            self._identity()
        for key in measurements:
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise ValueError("measurement names must be text or integers")
        topic = self.up_topic
        seq = self.counter.next()
        body = cbor.dumps({1: self.device_id, 2: seq, 3: int(time_ms), 4: dict(measurements)})
        aad = topic.encode()
        if mode == MODE_SIGNED:
            frame = cose.sign1(body, self._priv, self.device_id, aad, self.crypto)
        else:
            keys = self.session.keys
            frame = cose.encrypt0(body, keys.key, partial_iv(seq), keys.base_iv, None, keys.session_id, aad,
                                  self.crypto)
            if self.session.first_seq is None:
                self.session.first_seq = seq
        out = OutFrame(topic, frame, seq)
        self._track(seq, out.frame_hash)
        if mode == MODE_SESSION:
            if self.chains is None:
                from ledgerlink.protocol.session_chain import Chains
                self.chains = Chains()
            self.chains.add(keys.session_id, seq, out.frame_hash, time_ms)
        return out

    # --- session chain statements (ledgerlink.protocol.session_chain) ------------------------------------

    def chain_due(self, now_ms):
        """True when a chain statement is due (``session_chain.Chains.due``)."""
        return self.chains is not None and self.chains.due(now_ms)

    def chain_statement(self, time_ms, close=False):
        """The next chain statement due (a signed reading), or None; ``close``: also the current chain
        (``session_chain.Chains.take``)."""
        chain = self.chains.take(time_ms, close) if self.chains is not None else None
        return None if chain is None else self.reading(chain.measurements(), time_ms, MODE_SIGNED)

    def _track(self, seq, frame_hash):
        self.sent[seq] = frame_hash
        while len(self.sent) > self.max_tracked:
            del self.sent[min(self.sent)]

    def session_request(self, time_ms):
        """Start an ECQV session request; a newer request replaces a pending one."""
        from ledgerlink.protocol import device_session

        return device_session.request(self, time_ms)

    @property
    def session_pending(self):
        return self._pending_session is not None

    def cancel_session_request(self):
        self._pending_session = None

    def set_session(self, session):
        """Take a session made elsewhere (tests; a stored one goes through ``restore_session``)."""
        self.session = session

    def session_record(self):
        """Bytes that keep the current session across resets (``encode_session``); DeviceError without one."""
        if self.session is None:
            raise DeviceError("no session to keep")
        from ledgerlink.protocol.device_session import encode_session

        return encode_session(self.session)

    def restore_session(self, record, now_ms):
        """Take the session kept by ``session_record`` and return it; raise a LedgerlinkError instead when
        it may not be used: damaged or not this device's (InvalidMessage, DecodeError), the counter was
        lost at start or is below the record's mark (its numbers, and so its nonces, could repeat), or the
        session has expired (DeviceError). The caller deletes a refused record."""
        from ledgerlink.protocol import device_session

        return device_session.restore(self, record, now_ms)

    def session_valid(self, now_ms, margin_s=0):
        """True when a session exists and is valid for at least ``margin_s`` more seconds."""
        s = self.session
        if s is None:
            return False
        return s.valid_until_s is None or now_ms // 1000 + margin_s < s.valid_until_s

    def drop_session(self):
        self.session = None

    # --- incoming ---------------------------------------------------------------------------------

    def decode_reply(self, payload):
        """Decode a ``gateway-reply``: the map with a known kind, or raise DecodeError/InvalidMessage."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise InvalidMessage("reply must be bytes")
        if len(payload) > MAX_REPLY:
            raise InvalidMessage("reply of %d bytes is too large" % len(payload))
        msg = cbor.loads(bytes(payload), max_depth=16, max_size=MAX_REPLY)
        if not isinstance(msg, dict) or msg.get(0) not in (KIND_RECEIPT, KIND_REFUSAL, KIND_SESSION,
                                                           KIND_REGISTRATION):
            raise InvalidMessage("reply has no known kind")
        return msg

    def handle_down(self, payload, now_ms):
        """A ``gateway-reply`` (bytes) from the ``down`` topic: SessionOpened, ReceiptResult, Refused,
        RegistrationHeld or Ignored."""
        try:
            msg = self.decode_reply(payload)
        except LedgerlinkError as exc:
            return Ignored("reply refused: %s" % exc)
        return self.handle_reply(msg, now_ms)

    def handle_reply(self, msg, now_ms):
        """Like ``handle_down`` for a reply already decoded by ``decode_reply``."""
        kind = msg.get(0)
        try:
            if kind == KIND_SESSION:
                return self.handle_session_response(msg.get(1), now_ms)
            if kind == KIND_RECEIPT:
                return self.verify_receipt(msg)
            if kind == KIND_REFUSAL:
                from ledgerlink.protocol import device_refusals

                try:
                    return device_refusals.refusal(self, msg)
                finally:
                    _forget_on_boards(("ledgerlink.protocol", "device_refusals"))
            if kind == KIND_REGISTRATION:
                if self._registration is None or msg.get(1) != self._registration:
                    return Ignored("registration reply for a request this device did not send")
                return RegistrationHeld(self._registration)
        except DeviceError as exc:
            return Ignored(str(exc))
        return Ignored("reply has no known kind")

    def check_session_response(self, resp, now_ms):
        """Check a ``session-response`` map against the pending request; return (Session, cert-tx or None).

        Raises InvalidMessage for a malformed or mismatched response, InvalidCertificate (or another
        LedgerlinkError) when the certificate or the reconstructed key does not check, DeviceError when
        nothing is pending or no CA key is configured. The pending request stays pending on failure.
        """
        from ledgerlink.protocol import device_session

        return device_session.check_response(self, resp, now_ms)

    def handle_session_response(self, resp, now_ms):
        """Reconstruct the session key from a ``session-response`` and take the session; never raises
        for bad input (returns Ignored with the reason)."""
        from ledgerlink.protocol import device_session

        return device_session.handle_response(self, resp, now_ms)

    # --- receipts ---------------------------------------------------------------------------------

    def verify_receipt(self, receipt, frame=None):
        """Check a ``receipt`` map (or its CBOR bytes); return a ReceiptResult (never raises for bad input).

        Without ``frame`` the receipt must be for a frame this device sent and has not had a receipt for.
        """
        try:
            if isinstance(receipt, (bytes, bytearray)):
                receipt = cbor.loads(bytes(receipt), max_depth=16, max_size=MAX_REPLY)
            return self._verify_receipt(receipt, frame)
        except LedgerlinkError as exc:
            seq = receipt.get(2) if isinstance(receipt, dict) else None
            return ReceiptResult(False, seq if cbor.is_uint(seq) else None, None, "%s: %s" % (type(exc).__name__, exc))

    def check_receipt(self, receipt, frame=None):
        """Like ``verify_receipt`` but raises: InvalidMessage (malformed or not this device's frame),
        InvalidProof (a proof, the anchor, the header or its signatures), DeviceError (no trust anchors)."""
        if isinstance(receipt, (bytes, bytearray)):
            receipt = cbor.loads(bytes(receipt), max_depth=16, max_size=MAX_REPLY)
        result = self._verify_receipt(receipt, frame)
        if not result.valid:
            raise InvalidProof(result.reason)
        return result

    def _verify_receipt(self, receipt, frame):
        from ledgerlink.protocol import device_receipts

        try:
            return device_receipts.verify(self, receipt, frame)
        finally:
            _forget_on_boards(*RECEIPT_MODULES)

    # --- controllers and commands -------------------------------------------------------------------

    def update_controller(self, record_proof):
        """Take a controller from a proved device record; a banned or absent record removes it.

        Returns the controller id (for an absence proof: the state key). Raises DeviceError or a
        LedgerlinkError when the proof does not check or is older than the one held.
        """
        from ledgerlink.protocol import device_records

        try:
            return device_records.update_controller(self, record_proof)
        finally:
            _forget_on_boards(*RECORD_MODULES)

    def update_gateway(self, record_proof):
        """Trust a gateway's identity key for anchor signatures from a proved, active gateway record."""
        from ledgerlink.protocol import device_records

        try:
            return device_records.update_gateway(self, record_proof)
        finally:
            _forget_on_boards(*RECORD_MODULES)

    def open_commands(self, store, now_ms, new_identity=False):
        """Take the store of the last executed seq of each controller (``load()``: bytes or None,
        ``store(data)``); call it at start, with the clock set (a start time before 2020 counts as unset:
        the fence is then the first command's time). Until then every command is refused.
        ``new_identity``: the identity key was made at this start, so no command can name the device
        yet and a missing record starts empty without a fence (provisioning writes that empty record
        for a board).

        A missing or damaged record (first start, flash erased or corrupted) cannot say which commands
        ran, so it fails closed: a new record fenced at ``now_ms`` is written (with the first command: the
        record is read then, so sensors that take no command never load ``commands``), and a controller
        with no command executed under it is taken only with a not-after of at least fence + 24 h. Every
        command executed before the loss had a not-after at most 24 h after the device time it ran at
        (the cap below), so none of them passes; a controller that signs a command after the start with
        the longest validity gets through, its seq becomes the controller's new mark, and later commands
        only need a higher seq. The fence ends by itself 24 h after the loss, when nothing from before it
        is unexpired. (Taking the first seq seen after a loss as the mark would let a captured series of
        commands be replayed in increasing order.)
        """
        self._command_store = store
        self._command_start_ms = int(now_ms)
        self._command_fence_ms = None
        if new_identity:
            from ledgerlink.protocol import commands

            commands.load(self, True)
            _forget_on_boards(*COMMAND_MODULES)

    def handle_command(self, topic, payload, now_ms):
        """Check a command (COSE_Sign1 by a controller, external_aad = the ``cmd`` topic); never raises
        (but for a failing command store). Its seq is stored before it is accepted."""
        from ledgerlink.protocol import commands

        try:
            return commands.handle_command(self, topic, payload, now_ms)
        finally:
            _forget_on_boards(*COMMAND_MODULES)


def _default_rng(n):
    import os

    return os.urandom(n)


# Code a board loads for each receipt check (``device_receipts``), device record (``device_records``) and command
# (``commands``), and forgets after it.
RECEIPT_MODULES = (("ledgerlink.protocol", "device_receipts"), ("ledgerlink.protocol", "spv"), ("ledgerlink.core", "merkle"))
RECORD_MODULES = (("ledgerlink.protocol", "device_records"), ("ledgerlink.core", "smt_proof"),
                  ("ledgerlink.protocol", "spv"))
COMMAND_MODULES = (("ledgerlink.protocol", "commands"),)


def _forget_on_boards(*modules):
    """On MicroPython, forget the modules (package, name) until they are next imported, so code a board
    runs rarely (controller records and commands, record proofs) leaves its heap after each use."""
    import sys

    if sys.implementation.name != "micropython":
        return
    for package, name in modules:
        sys.modules.pop(package + "." + name, None)
        parent = sys.modules.get(package)
        if parent is not None and name in parent.__dict__:
            delattr(parent, name)


_SESSION_NAMES = ("encode_session", "decode_session", "PendingSession")
_COMMAND_NAMES = ("CommandResult", "MemoryRecord")


def __getattr__(name):
    """The session records and pending requests (``device_session``), and the command results and the RAM
    command store (``commands``), loaded when first named. CPython keeps them here once looked up; a board
    looks them up each time, so it can forget ``commands`` after each command."""
    if name in _SESSION_NAMES:
        from ledgerlink.protocol import device_session

        value = globals()[name] = getattr(device_session, name)     # named directly from now on
        return value
    if name in _COMMAND_NAMES:
        from ledgerlink.protocol import commands

        value = getattr(commands, name)
        if _IS_CPYTHON:
            globals()[name] = value
        return value
    raise AttributeError(name)
