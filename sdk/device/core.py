"""Sans-I/O device state machine: the protocol side of a ledgerlink device (docs/protocol.md).

``DeviceCore`` builds what a device sends (readings signed with its identity key or encrypted under a
session key, its registration request, ECQV session requests) and checks what it receives (session
responses, receipts, refusals, commands). It does no network or file I/O: sequence numbers go through
a ``CounterStorage`` (``load() -> int``, ``store(int)``), and the caller moves the bytes.

Protects against:
- nonce reuse and replays of the device's own frames: every frame takes the next sequence number,
  and the counter is stored before a number is handed out (in blocks of ``reserve``), so numbers
  never repeat across restarts; the Partial IV of a session frame is that sequence number;
- a gateway or broker lying about a reading's fate: a receipt is only valid when the frame hash is in
  the batch root, the anchor transaction carrying that root and batch size is in the tx root of a
  header certified by 2f+1 of the validators the device trusts, and (when the device knows gateway
  keys) the anchor is signed by a known gateway;
- a forged session response: the reconstructed key must match the certificate (``ecqv.reconstruct``),
  the certificate must name this device and be for sessions, and the nonce must be the pending one;
- forged or replayed commands: only commands signed by a controller whose device record (role
  controller, active) was proved by an SPV record proof are executed; the target must be this device,
  the time not past, and the per-controller sequence number higher than the last executed one.
Tested in tests/device/test_core.py against the gateway's own checks (``GatewayCore``), ``cose``
verification, ledger state from ``DevNet`` and certified headers signed by real validator keys.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Iterable, Mapping

from ledgerlink.core import cbor, cose, ecqv, merkle, session_keys, spv
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import LedgerlinkError

MAX_SEQ = 0xFFFFFFFF
DEVICE_ID_LEN = 16
NONCE_LEN = 16
TX_DOMAIN = "ledgerlink-tx-v1"

KIND_RECEIPT = 1
KIND_REFUSAL = 2
KIND_SESSION = 3

ROLE_SENSOR = 1
ROLE_GATEWAY = 3
ROLE_CONTROLLER = 6
STATUS_ACTIVE = 1
RECORD_DEVICE = 1
TX_ANCHOR = 5

MODE_SIGNED = "signed"
MODE_SESSION = "session"


class DeviceError(Exception):
    """A device-side operation cannot be done (no session, sequence numbers exhausted, ...)."""


def device_id_of(public_key: bytes) -> bytes:
    """First 16 bytes of SHA-256 of the compressed identity public key."""
    from ledgerlink.core import p256

    compressed = p256.encode_point(p256.decode_point(bytes(public_key)), True)
    return hashlib.sha256(compressed).digest()[:DEVICE_ID_LEN]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_hash(v: Any) -> bool:
    return isinstance(v, bytes) and len(v) == 32


# --- sequence numbers -------------------------------------------------------------------------------


class MemoryCounter:
    """Counter storage in memory (tests, or devices that re-register after every power cycle)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self.stores = 0

    def load(self) -> int:
        return self.value

    def store(self, value: int) -> None:
        self.value = value
        self.stores += 1


class SequenceCounter:
    """Strictly increasing sequence numbers 1..2^32-1 that survive restarts.

    The storage holds a high-water mark: every number handed out is at most the stored value, and a
    restart continues above it. With ``reserve`` > 1 the mark is written once per ``reserve`` numbers
    (fewer flash writes); a restart then skips the unused rest of the block.
    """

    def __init__(self, storage: Any, reserve: int = 16) -> None:
        if reserve < 1:
            raise ValueError("reserve must be at least 1")
        self.storage = storage
        self.reserve = reserve
        mark = storage.load()
        if not _is_uint(mark) or mark > MAX_SEQ:
            raise DeviceError("stored sequence mark %r is out of range" % (mark,))
        self.last = mark
        self.mark = mark

    def next(self) -> int:
        seq = self.last + 1
        if seq > MAX_SEQ:
            raise DeviceError("sequence numbers exhausted; the device needs a new identity")
        if seq > self.mark:
            self.mark = min(MAX_SEQ, self.last + self.reserve)
            self.storage.store(self.mark)
        self.last = seq
        return seq


# --- results ---------------------------------------------------------------------------------------


class OutFrame:
    """A frame to publish: ``topic``, ``payload``, ``seq`` (readings) and ``frame_hash``."""

    def __init__(self, topic: str, payload: bytes, seq: int | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.seq = seq
        self.frame_hash = _sha256(payload)

    def __repr__(self) -> str:
        return "OutFrame(%s, seq=%s, %d bytes)" % (self.topic, self.seq, len(self.payload))


class SessionOpened:
    def __init__(self, session_id: bytes, gateway_id: bytes, valid_until_s: int, cert_tx: bytes | None) -> None:
        self.session_id = session_id
        self.gateway_id = gateway_id
        self.valid_until_s = valid_until_s
        self.cert_tx = cert_tx


class ReceiptResult:
    """Outcome of a receipt check: ``valid`` with ``reason`` when not; ``height`` of the certified header."""

    def __init__(self, valid: bool, seq: int | None, frame_hash: bytes | None, reason: str = "",
                 height: int | None = None, gateway_id: bytes | None = None) -> None:
        self.valid = valid
        self.seq = seq
        self.frame_hash = frame_hash
        self.reason = reason
        self.height = height
        self.gateway_id = gateway_id

    def __repr__(self) -> str:
        return "ReceiptResult(valid=%s, seq=%s%s)" % (self.valid, self.seq, "" if self.valid else ", " + self.reason)


class Refused:
    def __init__(self, frame_hash: bytes, code: int, reason: str, seq: int | None) -> None:
        self.frame_hash = frame_hash
        self.code = code
        self.reason = reason
        self.seq = seq


class Ignored:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class CommandResult:
    """A checked command: ``accepted`` with ``action``/``args``, or refused with ``reason``."""

    def __init__(self, accepted: bool, reason: str = "", controller: bytes | None = None, seq: int | None = None,
                 action: str | None = None, args: Any = None, not_after_ms: int | None = None) -> None:
        self.accepted = accepted
        self.reason = reason
        self.controller = controller
        self.seq = seq
        self.action = action
        self.args = args
        self.not_after_ms = not_after_ms

    def __repr__(self) -> str:
        if self.accepted:
            return "CommandResult(accepted, %r, seq=%s)" % (self.action, self.seq)
        return "CommandResult(refused: %s)" % self.reason


class _Pending:
    def __init__(self, secret: bytes, nonce: bytes, time_ms: int) -> None:
        self.secret = secret
        self.nonce = nonce
        self.time_ms = time_ms


class Session:
    def __init__(self, keys: session_keys.SessionKeys, gateway_id: bytes, valid_until_s: int, cert: bytes) -> None:
        self.keys = keys
        self.gateway_id = gateway_id
        self.valid_until_s = valid_until_s
        self.cert = cert

    def __repr__(self) -> str:
        return "Session(%s, gateway=%s)" % (self.keys.session_id.hex(), self.gateway_id.hex())


# --- the device -------------------------------------------------------------------------------------


class DeviceCore:
    """Protocol state of one device of ``site``.

    ``private_key``: 32-byte identity key. ``counter``: a ``SequenceCounter``. ``chain_id`` and
    ``validator_keys``: the validator set the device trusts for receipts and record proofs.
    ``ca_public``: the fog CA key that issues session certificates. ``gateway_keys``: optional
    {gateway device-id: identity public key}; when given, receipts need an anchor signed by one of them.
    """

    def __init__(self, private_key: bytes, site: str, counter: SequenceCounter, chain_id: str,
                 validator_keys: Iterable[bytes], ca_public: bytes | None = None,
                 gateway_keys: Mapping[bytes, bytes] | None = None, backend: Any = None,
                 rng: Callable[[int], bytes] | None = None, max_tracked: int = 4096) -> None:
        self.crypto = get_backend(backend)
        self._priv = bytes(private_key)
        self.public_key = self.crypto.public_key(self._priv, True)
        self.device_id = device_id_of(self.public_key)
        self.site = site
        self.counter = counter
        self.chain_id = chain_id
        self.validator_keys = [bytes(k) for k in validator_keys]
        self.ca_public = ca_public
        self.gateway_keys = dict(gateway_keys) if gateway_keys is not None else None
        self.rng = rng or os.urandom
        self.max_tracked = max_tracked
        self.session: Session | None = None
        self._pending_session: _Pending | None = None
        self.sent: dict[int, bytes] = {}            # seq -> frame hash, awaiting a receipt
        self.controllers: dict[bytes, tuple[bytes, int]] = {}   # id -> (key, proof height)
        self._record_heights: dict[bytes, int] = {}              # newest proof height seen per device
        self.command_seqs: dict[bytes, int] = {}

    def __repr__(self) -> str:
        return "DeviceCore(%s, site=%s)" % (self.device_id.hex(), self.site)

    # --- topics -----------------------------------------------------------------------------------

    def topic(self, leaf: str) -> str:
        return "ll/%s/dev/%s/%s" % (self.site, self.device_id.hex(), leaf)

    @property
    def up_topic(self) -> str:
        return self.topic("up")

    @property
    def down_topic(self) -> str:
        return self.topic("down")

    @property
    def cmd_topic(self) -> str:
        return self.topic("cmd")

    # --- outgoing ---------------------------------------------------------------------------------

    def registration_request(self, time_ms: int, role: int = ROLE_SENSOR,
                             attributes: Mapping[str, Any] | None = None) -> OutFrame:
        """The registration request (proof of possession, external_aad empty) for the ``reg`` topic."""
        payload = {1: self.device_id, 2: self.public_key, 3: int(role), 4: dict(attributes or {}), 5: int(time_ms)}
        frame = cose.sign1(cbor.dumps(payload), self._priv, self.device_id, b"", self.crypto)
        return OutFrame(self.topic("reg"), frame)

    def reading(self, measurements: Mapping[Any, Any], time_ms: int, mode: str = MODE_SIGNED) -> OutFrame:
        """Build the next reading as a signed or session-encrypted frame bound to the ``up`` topic."""
        if mode not in (MODE_SIGNED, MODE_SESSION):
            raise ValueError("mode must be %r or %r" % (MODE_SIGNED, MODE_SESSION))
        if mode == MODE_SESSION and self.session is None:
            raise DeviceError("no session: open one first")
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
            frame = cose.encrypt0(body, keys.key, partial_iv=partial_iv(seq), base_iv=keys.base_iv,
                                  kid=keys.session_id, external_aad=aad, backend=self.crypto)
        out = OutFrame(topic, frame, seq)
        self._track(seq, out.frame_hash)
        return out

    def _track(self, seq: int, frame_hash: bytes) -> None:
        self.sent[seq] = frame_hash
        while len(self.sent) > self.max_tracked:
            del self.sent[next(iter(self.sent))]

    def session_request(self, time_ms: int) -> OutFrame:
        """Start an ECQV session request; a newer request replaces a pending one."""
        secret, point = ecqv.create_request(self.rng)
        nonce = self.rng(NONCE_LEN)
        topic = self.topic("session")
        payload = cbor.dumps({1: self.device_id, 2: point, 3: nonce, 4: int(time_ms)})
        frame = cose.sign1(payload, self._priv, self.device_id, topic.encode(), self.crypto)
        self._pending_session = _Pending(secret, nonce, int(time_ms))
        return OutFrame(topic, frame)

    # --- incoming ---------------------------------------------------------------------------------

    def handle_down(self, payload: bytes, now_ms: int) -> Any:
        """A ``gateway-reply`` from the ``down`` topic: SessionOpened, ReceiptResult, Refused or Ignored."""
        try:
            if len(payload) > cose.MAX_FRAME * 4:
                return Ignored("reply of %d bytes is too large" % len(payload))
            msg = cbor.loads(bytes(payload), max_depth=16, max_size=cose.MAX_FRAME * 4)
        except (LedgerlinkError, TypeError) as exc:
            return Ignored("reply is not deterministic CBOR: %s" % exc)
        if not isinstance(msg, dict) or msg.get(0) not in (KIND_RECEIPT, KIND_REFUSAL, KIND_SESSION):
            return Ignored("reply has no known kind")
        kind = msg[0]
        try:
            if kind == KIND_SESSION:
                return self.handle_session_response(msg.get(1), now_ms)
            if kind == KIND_RECEIPT:
                return self.verify_receipt(msg)
            return self._refusal(msg)
        except DeviceError as exc:
            return Ignored(str(exc))

    def _refusal(self, msg: dict) -> Any:
        frame_hash, code, text = msg.get(1), msg.get(2), msg.get(3)
        if not _is_hash(frame_hash) or not _is_uint(code) or not isinstance(text, str):
            return Ignored("malformed refusal")
        seq = None
        for s, h in self.sent.items():
            if h == frame_hash:
                seq = s
                break
        if seq is None:
            return Ignored("refusal of a frame this device did not send")
        del self.sent[seq]
        return Refused(frame_hash, code, text, seq)

    def handle_session_response(self, resp: Any, now_ms: int) -> Any:
        """Reconstruct the session key from a ``session-response`` and derive the session keys."""
        pending = self._pending_session
        if pending is None:
            return Ignored("no session request is pending")
        if self.ca_public is None:
            raise DeviceError("no fog CA key configured: sessions cannot be checked")
        if not isinstance(resp, dict) or not {1, 2, 3, 4, 5} <= set(resp) or not set(resp) <= {1, 2, 3, 4, 5, 6}:
            return Ignored("malformed session response")
        nonce, cert, r, q_gw, gw_id = resp[1], resp[2], resp[3], resp[4], resp[5]
        if nonce != pending.nonce:
            return Ignored("session response for another request")
        if (not isinstance(cert, bytes) or not isinstance(r, bytes) or len(r) != 32 or not isinstance(q_gw, bytes)
                or not isinstance(gw_id, bytes) or not 0 < len(gw_id) <= 64):
            return Ignored("malformed session response")
        try:
            parsed = ecqv.decode_cert(cert)
            if parsed.subject != self.device_id:
                return Ignored("session certificate names another device")
            if parsed.usage != ecqv.USAGE_SESSION:
                return Ignored("certificate is not a session certificate")
            if not parsed.valid_at(now_ms // 1000):
                return Ignored("session certificate is not valid now")
            d_u, _ = ecqv.reconstruct(pending.secret, cert, r, self.ca_public)
            keys = session_keys.derive(d_u, q_gw, cert, self.device_id, gw_id, self.crypto)
        except LedgerlinkError as exc:
            return Ignored("session response refused: %s" % exc)
        self._pending_session = None
        self.session = Session(keys, gw_id, parsed.valid_until, cert)
        return SessionOpened(keys.session_id, gw_id, parsed.valid_until, resp.get(6))

    def session_valid(self, now_ms: int, margin_s: int = 0) -> bool:
        return self.session is not None and now_ms // 1000 + margin_s < self.session.valid_until_s

    def drop_session(self) -> None:
        self.session = None

    # --- receipts ---------------------------------------------------------------------------------

    def verify_receipt(self, receipt: Any, frame: bytes | None = None) -> ReceiptResult:
        """Check a ``receipt`` map (or its CBOR bytes) against the trusted validator set.

        Without ``frame`` the receipt must be for a frame this device sent and has not had a receipt for.
        """
        try:
            if isinstance(receipt, (bytes, bytearray)):
                receipt = cbor.loads(bytes(receipt), max_depth=16, max_size=cose.MAX_FRAME * 4)
            return self._verify_receipt(receipt, frame)
        except (LedgerlinkError, DeviceError) as exc:
            seq = receipt.get(2) if isinstance(receipt, dict) else None
            return ReceiptResult(False, seq if _is_uint(seq) else None, None, "%s: %s" % (type(exc).__name__, exc))

    def _verify_receipt(self, r: Any, frame: bytes | None) -> ReceiptResult:
        if not isinstance(r, dict) or r.get(0) != KIND_RECEIPT or set(r) != {0, 1, 2, 3, 4, 5, 6, 7}:
            raise DeviceError("receipt must be a map with keys 0..7 and kind 1")
        frame_hash, seq, index, size, path, anchor = r[1], r[2], r[3], r[4], r[5], r[6]
        if not _is_hash(frame_hash) or not _is_uint(seq) or not _is_uint(index) or not _is_uint(size):
            raise DeviceError("receipt fields 1..4 have the wrong types")
        if not isinstance(path, list) or not all(_is_hash(h) for h in path):
            raise DeviceError("receipt inclusion proof must be a list of hashes")
        if frame is not None:
            if _sha256(bytes(frame)) != frame_hash:
                return ReceiptResult(False, seq, frame_hash, "receipt is for another frame")
        elif self.sent.get(seq) != frame_hash:
            return ReceiptResult(False, seq, frame_hash, "receipt is not for a frame this device sent with seq %d" % seq)
        if not isinstance(anchor, dict) or set(anchor) != {1, 2, 3, 4}:
            raise DeviceError("anchor-tx-proof must be a map with keys 1..4")
        tx, tx_index, tx_count, tx_path = anchor[1], anchor[2], anchor[3], anchor[4]
        if not isinstance(tx, bytes) or not _is_uint(tx_index) or not _is_uint(tx_count) or not isinstance(tx_path, list):
            raise DeviceError("anchor-tx-proof fields have the wrong types")
        sign1 = cose.decode_sign1(tx)
        body = cbor.loads(sign1.payload, max_depth=8)
        if not isinstance(body, dict) or body.get(1) != TX_ANCHOR:
            return ReceiptResult(False, seq, frame_hash, "anchor transaction is not a tx-anchor")
        root, count = body.get(5), body.get(6)
        if not _is_hash(root) or not _is_uint(count):
            raise DeviceError("tx-anchor lacks its batch root or size")
        if count != size:
            return ReceiptResult(False, seq, frame_hash, "batch size %d differs from the anchored %d" % (size, count))
        gateway = sign1.kid
        if self.gateway_keys is not None:
            key = self.gateway_keys.get(gateway)
            if key is None:
                return ReceiptResult(False, seq, frame_hash, "anchor is not signed by a known gateway")
            aad = cbor.dumps([TX_DOMAIN, self.chain_id])
            if not self.crypto.verify(key, sign1.to_be_signed(aad), sign1.signature):
                return ReceiptResult(False, seq, frame_hash, "anchor signature does not verify")
        merkle.verify_inclusion(merkle.leaf_hash(frame_hash), index, size, path, root)
        header = spv.verify_certified_header(r[7], self.chain_id, self.validator_keys, self.crypto)
        spv.verify_tx_inclusion(header, tx, tx_index, tx_count, tx_path)
        if frame is None:
            del self.sent[seq]
        return ReceiptResult(True, seq, frame_hash, "", header.height, gateway)

    # --- controllers and commands -------------------------------------------------------------------

    def _device_record(self, record_proof: Any) -> tuple[int, dict | None, bytes]:
        header, key, value = spv.verify_record_proof(record_proof, self.chain_id, self.validator_keys, self.crypto)
        if value is None:
            return header.height, None, key
        record = cbor.loads(value, max_depth=8)
        if not isinstance(record, dict) or not isinstance(record.get(1), bytes) or not isinstance(record.get(2), bytes):
            raise DeviceError("not a device record")
        if spv.state_key(RECORD_DEVICE, record[1]) != key:
            raise DeviceError("record is not the device record of its key")
        return header.height, record, key

    def update_controller(self, record_proof: Any) -> bytes:
        """Take a controller from a proved device record; a banned or absent record removes it.

        Returns the controller id (for an absence proof: the state key). Raises DeviceError or a
        LedgerlinkError when the proof does not check or is older than the one held.
        """
        height, record, key = self._device_record(record_proof)
        if record is None:
            for cid in list(self.controllers):
                if spv.state_key(RECORD_DEVICE, cid) == key and self.controllers[cid][1] <= height:
                    del self.controllers[cid]
                    self._record_heights[cid] = height
            return key
        cid = record[1]
        seen = self._record_heights.get(cid, -1)
        if height < seen:
            raise DeviceError("record proof of height %d is older than one already taken (%d)" % (height, seen))
        self._record_heights[cid] = height
        if record.get(3) != ROLE_CONTROLLER or record.get(5) != STATUS_ACTIVE:
            self.controllers.pop(cid, None)
            if record.get(3) != ROLE_CONTROLLER:
                raise DeviceError("device %s is not a controller" % cid.hex())
            return cid
        self.controllers[cid] = (record[2], height)
        return cid

    def update_gateway(self, record_proof: Any) -> bytes:
        """Trust a gateway's identity key for anchor signatures from a proved, active gateway record."""
        _, record, _ = self._device_record(record_proof)
        if record is None or record.get(3) != ROLE_GATEWAY or record.get(5) != STATUS_ACTIVE:
            raise DeviceError("record proof does not show an active gateway")
        if self.gateway_keys is None:
            self.gateway_keys = {}
        self.gateway_keys[record[1]] = record[2]
        return record[1]

    def handle_command(self, topic: str, payload: bytes, now_ms: int) -> CommandResult:
        """Check a command (COSE_Sign1 by a controller, external_aad = the ``cmd`` topic); never raises."""
        if topic != self.cmd_topic:
            return CommandResult(False, "command on topic %r, not this device's" % (topic,))
        try:
            msg = cose.decode_sign1(bytes(payload))
        except (LedgerlinkError, TypeError) as exc:
            return CommandResult(False, "malformed command: %s" % exc)
        cid = msg.kid
        held = self.controllers.get(cid) if cid is not None else None
        if held is None:
            return CommandResult(False, "signer %s is not a controller listed by the ledger"
                                 % (cid.hex() if cid else "(no kid)"), cid)
        if not self.crypto.verify(held[0], msg.to_be_signed(topic.encode()), msg.signature):
            return CommandResult(False, "command signature does not verify with the controller key", cid)
        try:
            body = cbor.loads(msg.payload, max_depth=16)
        except LedgerlinkError as exc:
            return CommandResult(False, "command body is not deterministic CBOR: %s" % exc, cid)
        if (not isinstance(body, dict) or set(body) != {1, 2, 3, 4, 5} or not isinstance(body[3], str)
                or not _is_uint(body[2]) or not 1 <= body[2] <= MAX_SEQ or not _is_uint(body[5])):
            return CommandResult(False, "command must be {1: target, 2: seq, 3: action, 4: args, 5: not-after}", cid)
        seq = body[2]
        if body[1] != self.device_id:
            return CommandResult(False, "command is for another device", cid, seq)
        if now_ms > body[5]:
            return CommandResult(False, "command expired %d ms ago" % (now_ms - body[5]), cid, seq)
        if seq <= self.command_seqs.get(cid, 0):
            return CommandResult(False, "command seq %d already used (last %d)" % (seq, self.command_seqs[cid]), cid, seq)
        self.command_seqs[cid] = seq
        return CommandResult(True, "", cid, seq, body[3], body[4], body[5])


def partial_iv(seq: int) -> bytes:
    """The Partial IV of sequence number ``seq``: big-endian, minimal length (1..4 bytes)."""
    if not 1 <= seq <= MAX_SEQ:
        raise ValueError("seq out of range")
    n = 1
    while seq >> (8 * n):
        n += 1
    return seq.to_bytes(n, "big")
