"""Sans-I/O message checks of a site gateway: every device frame is accepted or refused with a reason.

``GatewayCore`` is fed events (``on_frame``, ``on_registry_proof``, ``on_header``, ``on_block``,
``on_gap``, ``tick``) and returns effects (``Accept``, ``Refuse``, ``Reply``, ``FetchRegistry``,
``CertIssued``, ``HeaderUpdated``, ``RegistrationReceived``, ``RegistrationSettled``, ``Ignored``); it
does no I/O, so the MQTT adapter, the batcher and the tests drive it alike.

A reading frame passes, in order: the 4096-byte size limit (oversized) -> COSE decoding (malformed;
COSE_Sign1 with kid = device id, or COSE_Encrypt0 with kid = session id) -> topic binding (wrong-topic)
-> the registry: the device is registered and not banned (unknown-device, banned-device) -> the ES256
signature or the AES-CCM tag with external_aad = the MQTT topic (bad-signature, bad-tag) -> the
reading structure of docs/protocol.md (malformed) -> replay: a per-device sliding window over the
sequence number, a time at most 30 s ahead and at most 24 h old (replay, clock-skew) -> a per-device token bucket
(rate-limited). Every refusal carries the reason code of docs/protocol.md "Gateway replies".

Protects against:
- forged, altered or impersonating frames and frames moved to another topic: signatures and tags
  cover the topic; the kid must match the topic's device;
- a ban reaching the gateway late: committed blocks are followed (``on_block``), so a device whose
  record a block may change leaves the cache and its next frame waits for a proof from that block on;
- a lying broker or ledger node: the registry view only takes device records (or their absence)
  proved by a sparse-Merkle proof under a header certified by 2f+1 of the trusted validators
  (the checks of ``spv.verify_record_proof``; the quorum signatures of a certified header are checked
  once per exact header bytes, the last ``HEADER_CACHE`` of them remembered); an older proof never
  replaces a newer one, and a ban in a newer certified proof applies to the next frame;
- replays and reordering beyond the window, floods from one device (the others keep their budget);
- a flood of bad frames filling the ledger with warnings: every refusal is answered and counted, but the
  warnings posted to the ledger are bounded per offender and per gateway (``Limits.report_*``);
- malformed input: any bytes on any topic give a refusal, never an exception out of ``on_frame``;
- session certificate reuse: a request nonce, request point or certificate is issued only once.
Tested in tests/gateway/test_checks.py with real keys, COSE frames, ledger state and certified headers,
one test per reason code and hypothesis-fuzzed frames.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from ledgerlink.core import cbor, cose, ecdsa, ecqv, session_keys
from ledgerlink.protocol import reading, session_chain, spv, stored_ack
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidMessage, LedgerlinkError
from ledgerlink.protocol.codes import (DEVICE_ID_LEN, KIND_RECEIPT, KIND_REFUSAL, KIND_REGISTRATION,  # noqa: F401
                                       KIND_SESSION, MAX_SEQ, RECORD_DEVICE, STATUS_BANNED)
from ledgerlink.protocol.codes import (  # the gateway's names of its reason codes  # noqa: F401
    REASON_MALFORMED as MALFORMED, REASON_OVERSIZED as OVERSIZED, REASON_UNKNOWN_DEVICE as UNKNOWN_DEVICE,
    REASON_BANNED_DEVICE as BANNED_DEVICE, REASON_BAD_SIGNATURE as BAD_SIGNATURE, REASON_BAD_TAG as BAD_TAG,
    REASON_REPLAY as REPLAY, REASON_CLOCK_SKEW as CLOCK_SKEW, REASON_RATE_LIMITED as RATE_LIMITED,
    REASON_UNKNOWN_SESSION as UNKNOWN_SESSION, REASON_EXPIRED_SESSION as EXPIRED_SESSION,
    REASON_WRONG_TOPIC as WRONG_TOPIC, REASON_CERTIFICATE_REUSE as CERTIFICATE_REUSE,
    REASON_LEDGER_UNAVAILABLE as LEDGER_UNAVAILABLE, REASON_CHAIN_MISMATCH as CHAIN_MISMATCH)
from ledgerlink.protocol.ledger_tx import (MAX_TEXT as MAX_DETAIL, REASON_BAD_PROOF_OF_POSSESSION, TX_BAN, TX_REGISTER,
                                           TX_ROTATE_KEY, TX_UNBAN, Refusal, check_registration_request, tx_root)

REASON_TEXT = {
    MALFORMED: "malformed frame", OVERSIZED: "frame larger than 4096 bytes", UNKNOWN_DEVICE: "unknown device",
    BANNED_DEVICE: "device is banned", BAD_SIGNATURE: "signature does not verify", BAD_TAG: "tag does not verify",
    REPLAY: "sequence number already seen or too old", CLOCK_SKEW: "device time more than 30 s off",
    RATE_LIMITED: "rate limit exceeded", UNKNOWN_SESSION: "unknown session", EXPIRED_SESSION: "session expired",
    WRONG_TOPIC: "frame does not belong to this topic", CERTIFICATE_REUSE: "request or certificate reused",
    LEDGER_UNAVAILABLE: "registry not available from the ledger",
    CHAIN_MISMATCH: "chain statement does not match the stored session frames",
}

TOPIC_CACHE = 1 << 16              # parsed device topics remembered (emptied when full)
REPORT_BUCKETS = 4096              # offenders whose warning budget is remembered (least recent forgotten)
HEADER_CACHE = 16                  # certified headers whose quorum signatures were checked, by exact bytes
ENC_AADS = 1 << 14                 # Enc_structures of session frames remembered by (protected, topic) (emptied when full)
MAX_PROTECTED_KEPT = 16            # longest protected header whose Enc_structure is remembered (ours is 3 bytes)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


_TEXT_CACHE: dict[str, bytes] = {}


def _cbor_text(text: str) -> bytes:
    """``cbor.dumps(text)``, remembered (gateway names)."""
    out = _TEXT_CACHE.get(text)
    if out is None:
        out = cbor.dumps(text)
        if len(_TEXT_CACHE) < 64:
            _TEXT_CACHE[text] = out
    return out


# --- effects --------------------------------------------------------------------------------------

@dataclass
class Accept:
    """A frame that passed every check; store it durably before acknowledging it."""

    device_id: bytes
    seq: int
    time_ms: int
    measurements: Any
    frame: bytes
    frame_hash: bytes
    topic: str
    mode: str                      # "sign1" or "session"
    reading: bytes | None = None   # the checked ``reading`` (deterministic CBOR map with keys 1..4)
    chain: tuple | None = None     # a chain statement's (session id, first, last, head): checked against the store

    def verified_reading(self, gateway_name: str) -> bytes:
        """The ``verified-reading`` republished to applications: the reading's map with 5 and 6 added."""
        if self.reading is not None and self.reading[:1] == b"\xa4" and len(self.frame_hash) == 32:
            return b"\xa6" + self.reading[1:] + b"\x05\x58\x20" + self.frame_hash + b"\x06" + _cbor_text(gateway_name)
        return cbor.dumps({1: self.device_id, 2: self.seq, 3: self.time_ms, 4: self.measurements,
                           5: self.frame_hash, 6: gateway_name})


@dataclass
class Refuse:
    """A refused frame: the warning record for the ledger and the refusal reply (``reply_topic`` may be None)."""

    warning_id: bytes              # SHA-256 of the frame
    submitter: bytes               # the gateway's device id
    offender: bytes                # claimed device id, empty when unknown
    time_ms: int
    code: int
    text: str
    reply_topic: str | None
    report: bool = True            # False: not posted to the ledger (repeats of a flood)

    def reply(self) -> bytes:
        return cbor.dumps({0: KIND_REFUSAL, 1: self.warning_id, 2: self.code, 3: self.text})

    def warning_entry(self) -> dict:
        return {1: self.warning_id, 2: self.offender, 3: self.time_ms, 4: self.code, 5: self.text[:MAX_DETAIL]}


@dataclass
class Reply:
    topic: str
    payload: bytes
    frame_hash: bytes | None = None    # the request frame this answers


@dataclass
class AskStored:
    """A device asks for the stored-acks and receipts of its frames (``parse_receipt_request`` items:
    seqs and frame hashes); answered from the store."""

    device_id: bytes
    items: list
    frame_hash: bytes              # the request frame this answers


@dataclass
class StoredAlready:
    """A frame refused as a replay turned out to be stored already: answered with its ack and receipt
    (set by the service, which sees the store)."""

    device_id: bytes
    frame_hash: bytes


@dataclass
class FetchRegistry:
    """Ask the ledger for a record proof of this device and feed it to ``on_registry_proof``."""

    device_id: bytes


@dataclass
class CertIssued:
    """A session certificate was issued; record its hash on the ledger (cert-record transaction)."""

    device_id: bytes
    cert: bytes


@dataclass
class HeaderUpdated:
    """A newer certified header was verified (publish it retained)."""

    height: int
    certified: bytes


@dataclass
class Ignored:
    """An input that was not taken (forged proof, older header, ...)."""

    reason: str


@dataclass
class RegistrationReceived:
    """A device's registration request passed its checks: keep it (durably) until an admin registers it."""

    device_id: bytes
    request: bytes
    role: int
    attributes: dict
    time_ms: int


@dataclass
class RegistrationSettled:
    """A held registration request is gone: the device is on the ledger, or the request expired."""

    device_id: bytes


Effect = (Accept | Refuse | Reply | FetchRegistry | CertIssued | HeaderUpdated | Ignored | RegistrationReceived
          | RegistrationSettled | AskStored | StoredAlready)


class _Refusal(Exception):
    def __init__(self, code: int, detail: str | None = None, offender: bytes = b"") -> None:
        super().__init__(detail or REASON_TEXT[code])
        self.code = code
        self.detail = detail or REASON_TEXT[code]
        self.offender = offender


def _require_canonical(signature: bytes) -> None:
    """Refuse the (r, n - s) twin of a device signature: frames are named by their hash, so a flipped
    copy delivered first would otherwise be stored in place of the device's own frame."""
    if not ecdsa.is_canonical(signature):
        raise _Refusal(BAD_SIGNATURE, "signature is not canonical (s > n/2)")


# --- per-device state -----------------------------------------------------------------------------

class ReplayWindow:
    """Sliding window over sequence numbers: the highest seen plus a bitmap of the ``size`` below it."""

    def __init__(self, size: int = 64, highest: int = 0, seen: int = 0) -> None:
        self.size = size
        self.highest = highest
        self.bits = seen & ((1 << size) - 1)            # bit i: seq highest - i was seen

    def fresh(self, seq: int) -> bool:
        if seq > self.highest:
            return True
        offset = self.highest - seq
        return offset < self.size and not (self.bits >> offset) & 1

    def mark(self, seq: int) -> None:
        if seq > self.highest:
            shift = seq - self.highest
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.highest = seq
        else:
            self.bits |= 1 << (self.highest - seq)


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; one token per accepted frame."""

    def __init__(self, rate: float, burst: float, now_ms: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now_ms

    def take(self, now_ms: int) -> bool:
        if now_ms > self.at:
            self.tokens = min(self.burst, self.tokens + (now_ms - self.at) * self.rate / 1000.0)
            self.at = now_ms
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class RegistryEntry:
    height: int
    record: dict | None            # decoded device-record, None when the proof shows absence
    fetched_ms: int

    @property
    def banned(self) -> bool:
        return self.record is not None and self.record.get(5) == STATUS_BANNED


@dataclass
class Session:
    session_id: bytes
    device_id: bytes
    key: bytes
    base_iv: bytes
    valid_until_s: int
    cert: bytes

    def __repr__(self) -> str:
        return "Session(%s, device=%s)" % (self.session_id.hex(), self.device_id.hex())


@dataclass
class GatewayKeys:
    """``identity``: ledger key (anchors, warnings); ``ca``: fog CA key; ``site``: ECDH key of sessions."""

    identity: bytes
    ca: bytes
    site: bytes

    def __repr__(self) -> str:
        return "GatewayKeys(<secret>)"


@dataclass
class Limits:
    max_frame: int = cose.MAX_FRAME
    window: int = 64
    max_skew_ms: int = 30_000
    max_age_ms: int = 24 * 3600 * 1000  # readings replayed in order from a device's offline queue
    rate_per_s: float = 10.0
    burst: float = 20.0
    session_lifetime_s: int = 24 * 3600
    sessions_per_device: int = 4           # a new session of a device drops its oldest beyond this
    registry_ttl_ms: int = 60_000          # refresh device records older than this
    registry_timeout_ms: int = 5_000       # held frames are refused (14) after this long with no registry answer
    registry_wait_max_ms: int = 60_000     # for any device (a backlog's lookups queue up), or this long in all
    max_pending: int = 16384               # frames held for registry answers, and their bytes: room for the
    max_pending_bytes: int = 8 << 20       # backlog a broker redelivers at once after a restart
    flood_report_ms: int = 10_000          # at most one rate-limited warning per device per period
    report_rate_per_s: float = 0.5         # warnings posted to the ledger per offender (claimed device id)
    report_burst: float = 30.0
    report_total_per_s: float = 50.0       # warnings posted to the ledger, all offenders together
    report_total_burst: float = 500.0
    max_devices: int = 100_000
    max_proof_lag: int = 64                # registry proofs from headers further behind the newest are stale
    max_registrations: int = 1000          # registration requests held for an admin
    registration_rate_per_s: float = 5.0   # registration requests checked per second, all devices together
    registration_burst: float = 50.0
    registration_ttl_ms: int = 7 * 24 * 3600 * 1000
    ask_rate_per_s: float = 1.0            # receipt requests per device (each names up to stored_ack.MAX_ASK frames)
    ask_burst: float = 8.0


@dataclass
class _Pending:
    topic: str
    frame: bytes
    at_ms: int


@dataclass
class _DeviceState:
    window: ReplayWindow
    bucket: TokenBucket
    last_flood_report: int = -(1 << 62)
    asks: TokenBucket | None = None


_parse_reading_fast = reading.parse_fast


def parse_reading(payload: bytes) -> tuple[bytes, int, int, dict]:
    """Decode and check a ``reading`` (``reading.parse``); raise _Refusal(MALFORMED)."""
    fast = reading.parse_fast(payload)
    return fast if fast is not None else _parse_reading_strict(payload)


def _parse_reading_strict(payload: bytes) -> tuple[bytes, int, int, dict]:
    """``parse_reading`` by the strict decoder (any input)."""
    try:
        return reading.parse_strict(payload)
    except InvalidMessage as exc:
        raise _Refusal(MALFORMED, str(exc)) from None


def parse_receipt_request(payload: bytes) -> list:
    """The items (seqs and frame hashes) of a ``receipt-request``; InvalidMessage when malformed."""
    msg = cbor.loads(bytes(payload), max_depth=2, max_size=64 + 40 * stored_ack.MAX_ASK)
    items = msg.get(1) if isinstance(msg, dict) and len(msg) == 1 else None
    if not isinstance(items, list) or not 0 < len(items) <= stored_ack.MAX_ASK:
        raise InvalidMessage("receipt request must be {1: [1..%d seqs or frame hashes]}" % stored_ack.MAX_ASK)
    for item in items:
        if not (type(item) is bytes and len(item) == 32) and not (cbor.is_uint(item) and 1 <= item <= MAX_SEQ):
            raise InvalidMessage("receipt request items are seqs or 32-byte frame hashes")
    return items


_STATUS_TXS = (TX_BAN, TX_UNBAN)


def _check_txs(header: spv.Header, txs: Any) -> None:
    if not isinstance(txs, list) or any(type(tx) is not bytes for tx in txs):
        raise ValueError("transactions must be a list of byte strings")
    if tx_root(txs) != header.tx_root:
        raise ValueError("transactions do not hash to the header's tx root")


def _device_changed_by(tx: bytes) -> bytes | None:
    """The device whose record a ledger transaction may change: the target of a ban or unban, the
    submitter of a key rotation, the device of a registration (None for other kinds or undecodable txs)."""
    try:
        msg = cose.decode_sign1(tx)
        body = cbor.loads(msg.payload)
        kind = body[1]
        if kind in _STATUS_TXS:
            dev = body[4]
        elif kind == TX_ROTATE_KEY:
            dev = msg.kid
        elif kind == TX_REGISTER:
            dev = cose.decode_sign1(body[4]).kid
        else:
            return None
    except (LedgerlinkError, KeyError, TypeError, IndexError):
        return None
    return dev if type(dev) is bytes and len(dev) == DEVICE_ID_LEN else None


class GatewayCore:
    """Checks of one gateway of ``site``; see the module docstring.

    ``chain_id`` and ``validator_keys`` are the trusted validator set; ``keys`` the gateway's keys;
    ``group_key`` the set's FROST group key, when it has one (then a header with a threshold certificate
    costs one verification).
    """

    def __init__(self, site: str, keys: GatewayKeys, chain_id: str, validator_keys: list[bytes],
                 limits: Limits | None = None, backend: Any = None,
                 rng: Callable[[int], bytes] | None = None, group_key: bytes | None = None) -> None:
        self.site = site
        self.keys = keys
        self.crypto = get_backend(backend)
        self.gateway_id = hashlib.sha256(self.crypto.public_key(keys.identity, True)).digest()[:DEVICE_ID_LEN]
        self.gateway_name = self.gateway_id.hex()
        self.ca_public = self.crypto.public_key(keys.ca, True)
        self.site_public = self.crypto.public_key(keys.site, True)
        self.chain_id = chain_id
        self.validator_keys = list(validator_keys)
        self.group_key = group_key
        self.limits = limits or Limits()
        self.rng = rng or os.urandom
        self.registry: OrderedDict[bytes, RegistryEntry] = OrderedDict()     # by time of the last answer
        self.devices: dict[bytes, _DeviceState] = {}
        self.sessions: dict[bytes, Session] = {}
        self.header: spv.Header | None = None
        self.pending: OrderedDict[bytes, list[_Pending]] = OrderedDict()
        self.pending_count = 0                                               # frames in ``pending``
        self.pending_bytes = 0                                               # and their bytes
        self.fetching: dict[bytes, int] = {}
        self.last_answer_ms: int | None = None     # the last registry proof that verified, of any device
        self.used_requests: OrderedDict[bytes, int] = OrderedDict()   # request id -> when it may be forgotten
        self._headers: OrderedDict[bytes, spv.Header] = OrderedDict()
        self.issued_certs: set[bytes] = set()                                # of the sessions kept
        self._device_sessions: dict[bytes, list[bytes]] = {}                 # device -> its session ids, oldest first
        self._session_sweep_ms = 0
        self.session_source: Callable[[bytes], tuple[bytes, bytes] | None] | None = None
        self._prefix = "ll/%s/dev/" % site
        self._topics: dict[str, tuple[bytes, str]] = {}                     # parsed device topics
        self._ahead: dict[bytes, tuple[str, Any, bytes]] = {}   # frame -> (topic, Sign1, signed bytes), one group
        self._enc_aads: dict[tuple[bytes, str], bytes] = {}      # (protected, topic) -> AES-CCM aad of a session frame
        self.registrations: OrderedDict[bytes, tuple[int, int]] = OrderedDict()  # dev -> (request time, held since)
        self.changed: OrderedDict[bytes, int] = OrderedDict()    # device -> height of a block that touched its record
        self.min_proof_height = -1                                # after a gap in the followed blocks
        self._report_buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()
        self._report_total = TokenBucket(self.limits.report_total_per_s, self.limits.report_total_burst, 0)
        self._registration_bucket = TokenBucket(self.limits.registration_rate_per_s, self.limits.registration_burst, 0)

    # --- topics ---------------------------------------------------------------------------------

    def down_topic(self, dev: bytes) -> str:
        return "%s%s/down" % (self._prefix, dev.hex())

    def verified_topic(self, dev: bytes) -> str:
        return "ll/%s/verified/%s" % (self.site, dev.hex())

    def header_topic(self) -> str:
        return "ll/%s/ledger/header" % self.site

    def _topic_device(self, topic: str) -> tuple[bytes, str] | None:
        """(device id, last level) of a device topic ``{prefix}{32 lowercase hex}/{level}`` of this site, or None."""
        if type(topic) is str:
            hit = self._topics.get(topic)
            if hit is not None:
                return hit
        parsed = self._parse_topic(topic)
        if parsed is not None and (parsed[1] == "up" or parsed[1] == "session"):     # bounded length
            if len(self._topics) >= TOPIC_CACHE:
                self._topics.clear()
            self._topics[topic] = parsed
        return parsed

    def _parse_topic(self, topic: str) -> tuple[bytes, str] | None:
        if not isinstance(topic, str) or not topic.startswith(self._prefix):
            return None
        rest = topic[len(self._prefix):].split("/")
        if len(rest) != 2 or len(rest[0]) != 32 or rest[0] != rest[0].lower():
            return None
        try:
            return bytes.fromhex(rest[0]), rest[1]
        except ValueError:
            return None

    # --- frames ---------------------------------------------------------------------------------

    def on_frame(self, topic: str, payload: bytes, now_ms: int, frame_hash: bytes | None = None) -> list[Effect]:
        """Check one frame received on ``topic`` (``frame_hash``: its SHA-256 when the caller has it); never
        raises."""
        try:
            return self._on_frame(topic, payload, now_ms, frame_hash)
        except Exception as exc:  # noqa: BLE001 - a bug must not take the gateway down; refuse instead
            frame = bytes(payload) if isinstance(payload, (bytes, bytearray)) else b""
            return [self._refuse(frame, topic, None, now_ms,
                                 _Refusal(MALFORMED, "unexpected %s" % type(exc).__name__))]

    def signature_checks(self, frames: list[tuple[str, Any]]) -> list[tuple[bytes, bytes, bytes]]:
        """(registered key, signed bytes, signature) of each signed reading among ``frames`` (topic, payload)
        whose device record is cached and not banned: what ``on_frame`` will verify for them, so a group's
        signatures can be checked ahead (``ledgerlink.gateway.verify_ahead``). Changes no check state; the
        decoded frames are kept for ``on_frame`` until the next call, so each is decoded once."""
        ahead = self._ahead
        ahead.clear()
        jobs = []
        for topic, payload in frames:
            if type(payload) is not bytes or not payload or payload[0] != 0xD2 or len(payload) > self.limits.max_frame:
                continue
            parsed = self._topic_device(topic)
            if parsed is None or parsed[1] != "up":
                continue
            entry = self.registry.get(parsed[0])
            if entry is None or entry.record is None or entry.banned:
                continue
            try:
                msg = cose.decode_sign1(payload)
            except Exception:  # noqa: BLE001 - on_frame refuses it; nothing to check ahead
                continue
            if msg.kid != parsed[0]:
                continue
            signed = msg.to_be_signed(topic.encode())
            ahead[payload] = (topic, msg, signed)
            jobs.append((entry.record[2], signed, msg.signature))
        return jobs

    def _on_frame(self, topic: str, payload: Any, now_ms: int, frame_hash: bytes | None) -> list[Effect]:
        if not isinstance(payload, (bytes, bytearray)):
            payload = b""
            frame_hash = None
        frame = bytes(payload)
        parsed = self._topic_device(topic)
        dev_hint = parsed[0] if parsed else None
        try:
            if len(frame) > self.limits.max_frame:
                raise _Refusal(OVERSIZED, "frame is %d bytes, the limit is %d" % (len(frame), self.limits.max_frame))
            if parsed is None or parsed[1] not in ("up", "session", "reg", "ask"):
                raise _Refusal(WRONG_TOPIC, "not a device up, session, reg or ask topic of site %s" % self.site)
            if parsed[1] == "ask":
                return self._ask(frame, parsed[0], now_ms, frame_hash)
            if parsed[1] == "session":
                return self._session_request(topic, frame, parsed[0], now_ms)
            if parsed[1] == "reg":
                return self._registration_request(frame, parsed[0], now_ms)
            return self._reading(topic, frame, parsed[0], now_ms, frame_hash)
        except _Refusal as r:
            return [self._refuse(frame, topic, dev_hint, now_ms, r, frame_hash)]

    def _refuse(self, frame: bytes, topic: str, dev: bytes | None, now_ms: int, r: _Refusal,
                frame_hash: bytes | None = None) -> Refuse:
        offender = r.offender or (dev or b"")
        report = True
        if r.code == RATE_LIMITED and dev is not None:
            st = self.devices.get(dev)
            if st is not None:
                report = now_ms - st.last_flood_report >= self.limits.flood_report_ms
                if report:
                    st.last_flood_report = now_ms
        if report:
            report = self._reportable(offender, now_ms)
        return Refuse(frame_hash or sha256(frame), self.gateway_id, offender, now_ms, r.code, r.detail[:MAX_DETAIL],
                      self.down_topic(dev) if dev is not None else None, report)

    def _reportable(self, offender: bytes, now_ms: int) -> bool:
        """Whether a refusal still fits the warning budget of its offender and of the gateway.

        Every refusal is answered and counted; only the warnings posted to the ledger are bounded, so a
        flood of bad frames (from one claimed device or from many made-up ones) cannot fill the ledger.
        """
        bucket = self._report_buckets.get(offender)
        if bucket is None:
            if len(self._report_buckets) >= REPORT_BUCKETS:
                self._report_buckets.popitem(last=False)
            bucket = self._report_buckets[offender] = TokenBucket(self.limits.report_rate_per_s,
                                                                  self.limits.report_burst, now_ms)
        else:
            self._report_buckets.move_to_end(offender)
        return bucket.take(now_ms) and self._report_total.take(now_ms)

    def _device_record(self, dev: bytes, topic: str, frame: bytes, now_ms: int) -> dict | list[Effect]:
        """The device record, or effects when the frame waits for a registry answer."""
        entry = self.registry.get(dev)
        if entry is None:
            return self._hold(dev, topic, frame, now_ms)
        if entry.record is None:
            raise _Refusal(UNKNOWN_DEVICE, "device %s is not registered (ledger height %d)" % (dev.hex(), entry.height))
        if entry.banned:
            raise _Refusal(BANNED_DEVICE, "device %s is banned (ledger height %d)" % (dev.hex(), entry.height))
        return entry.record

    def _hold(self, dev: bytes, topic: str, frame: bytes, now_ms: int) -> list[Effect]:
        if (self.pending_count >= self.limits.max_pending
                or self.pending_bytes + len(frame) > self.limits.max_pending_bytes):
            raise _Refusal(LEDGER_UNAVAILABLE, "too many frames waiting for the registry")
        self.pending.setdefault(dev, []).append(_Pending(topic, frame, now_ms))
        self.pending_count += 1
        self.pending_bytes += len(frame)
        if dev in self.fetching:
            return []
        self.fetching[dev] = now_ms
        return [FetchRegistry(dev)]

    def _state(self, dev: bytes, now_ms: int) -> _DeviceState:
        st = self.devices.get(dev)
        if st is None:
            st = self.devices[dev] = _DeviceState(ReplayWindow(self.limits.window),
                                                  TokenBucket(self.limits.rate_per_s, self.limits.burst, now_ms))
        return st

    def _reading(self, topic: str, frame: bytes, topic_dev: bytes, now_ms: int,
                 frame_hash: bytes | None = None) -> list[Effect]:
        try:
            tag = frame[0] if frame else None
            if tag == 0xD2:
                decoded = self._ahead.pop(frame, None)
                if decoded is not None and decoded[0] == topic:
                    msg: Any = decoded[1]
                    signed = decoded[2]
                else:
                    msg = cose.decode_sign1(frame)
                    signed = None
                mode = "sign1"
            elif tag == 0xD0:
                msg = cose.decode_encrypt0(frame)
                mode = "session"
            else:
                raise _Refusal(MALFORMED, "not a COSE_Sign1 or COSE_Encrypt0 frame")
        except LedgerlinkError as exc:
            raise _Refusal(MALFORMED, "bad COSE frame: %s" % exc) from None
        if mode == "sign1":
            if msg.kid is None or len(msg.kid) != DEVICE_ID_LEN:
                raise _Refusal(MALFORMED, "kid must be a 16-byte device id")
            if msg.kid != topic_dev:
                raise _Refusal(WRONG_TOPIC, "kid %s does not match the topic" % msg.kid.hex())
            rec = self._device_record(topic_dev, topic, frame, now_ms)
            if isinstance(rec, list):
                return rec
            _require_canonical(msg.signature)
            if not self.crypto.verify(rec[2], signed or msg.to_be_signed(topic.encode()), msg.signature):
                raise _Refusal(BAD_SIGNATURE, "signature does not verify with the registered key")
            plaintext = msg.payload
        else:
            if msg.kid is None or len(msg.kid) != session_keys.SESSION_ID_LEN:
                raise _Refusal(MALFORMED, "kid must be an 8-byte session id")
            if msg.partial_iv is None or len(msg.partial_iv) > 4 or (len(msg.partial_iv) > 1 and msg.partial_iv[0] == 0):
                raise _Refusal(MALFORMED, "Partial IV must be the sequence number, 1..4 bytes, minimal")
            session = self.sessions.get(msg.kid)
            if session is None:
                session = self._shared_session(msg.kid)
            if session is None:
                raise _Refusal(UNKNOWN_SESSION, "session %s is unknown to this gateway" % msg.kid.hex())
            if session.device_id != topic_dev:
                raise _Refusal(WRONG_TOPIC, "session belongs to another device")
            if now_ms // 1000 >= session.valid_until_s:
                raise _Refusal(EXPIRED_SESSION, "session %s expired" % msg.kid.hex())
            rec = self._device_record(topic_dev, topic, frame, now_ms)
            if isinstance(rec, list):
                return rec
            aads = self._enc_aads
            enc_aad = aads.get((msg.protected, topic))
            if enc_aad is None:
                enc_aad = msg.aad(topic.encode())
                if len(msg.protected) <= MAX_PROTECTED_KEPT:
                    if len(aads) >= ENC_AADS:
                        aads.clear()
                    aads[(msg.protected, topic)] = enc_aad
            try:
                nonce = cose.nonce_from_partial_iv(session.base_iv, msg.partial_iv)
                plaintext = self.crypto.ccm_open(session.key, nonce, msg.ciphertext, enc_aad, cose.TAG_LEN)
            except LedgerlinkError:             # InvalidTag
                raise _Refusal(BAD_TAG, "AES-CCM tag does not verify") from None
        dev, seq, t, meas = parse_reading(plaintext)
        if dev != topic_dev:
            raise _Refusal(MALFORMED, "reading device id differs from the sender")
        if mode == "session" and int.from_bytes(msg.partial_iv, "big") != seq:
            raise _Refusal(MALFORMED, "Partial IV differs from the reading seq")
        st = self._state(dev, now_ms)
        if not st.window.fresh(seq):
            raise _Refusal(REPLAY, "seq %d already seen or below the window (highest %d)" % (seq, st.window.highest))
        if t - now_ms > self.limits.max_skew_ms or now_ms - t > self.limits.max_age_ms:
            raise _Refusal(CLOCK_SKEW, "device time is %d ms off" % (t - now_ms))
        if not st.bucket.take(now_ms):
            raise _Refusal(RATE_LIMITED, "more than %g frames/s from %s" % (self.limits.rate_per_s, dev.hex()))
        chain = None
        if session_chain.STATEMENT_KEY in meas:
            if mode != "sign1":
                raise _Refusal(MALFORMED, "a chain statement must be signed with the device key")
            try:
                chain = session_chain.parse(meas)
            except LedgerlinkError as exc:
                raise _Refusal(MALFORMED, "chain statement: %s" % exc) from None
            if chain[1] <= seq <= chain[2]:
                raise _Refusal(MALFORMED, "a chain statement cannot cover its own seq")
        st.window.mark(seq)
        return [Accept(dev, seq, t, meas, frame, frame_hash or sha256(frame), topic, mode, bytes(plaintext), chain)]

    # --- receipt requests --------------------------------------------------------------------------

    def _ask(self, frame: bytes, dev: bytes, now_ms: int, frame_hash: bytes | None) -> list[Effect]:
        """A device's receipt request: answered from the store (only with this device's frames), at most
        ``ask_rate_per_s`` per device. Unsigned: the broker's ACL limits the topic to the device, and the
        answers go to the device's own down topic."""
        try:
            items = parse_receipt_request(frame)
        except LedgerlinkError as exc:
            raise _Refusal(MALFORMED, "receipt request: %s" % exc) from None
        st = self._state(dev, now_ms)
        if st.asks is None:
            st.asks = TokenBucket(self.limits.ask_rate_per_s, self.limits.ask_burst, now_ms)
        if not st.asks.take(now_ms):
            raise _Refusal(RATE_LIMITED, "more than %g receipt requests/s from %s" % (self.limits.ask_rate_per_s,
                                                                                      dev.hex()))
        return [AskStored(dev, items, frame_hash or sha256(frame))]

    # --- registration requests ---------------------------------------------------------------------

    def _registration_request(self, frame: bytes, topic_dev: bytes, now_ms: int) -> list[Effect]:
        """Hold a device's own registration request for an admin (``ledgerlink admin pending``).

        The proof of possession is checked here as the register contract checks it; the global token
        bucket comes first so a flood of requests from made-up keys costs one decode each, not a verify.
        """
        try:
            kid = cose.decode_sign1(frame).kid
        except LedgerlinkError as exc:
            raise _Refusal(MALFORMED, "bad COSE_Sign1: %s" % exc) from None
        if kid != topic_dev:
            raise _Refusal(WRONG_TOPIC, "kid does not match the topic")
        held = self.registrations.get(topic_dev)
        if held is None and len(self.registrations) >= self.limits.max_registrations:
            raise _Refusal(RATE_LIMITED, "%d registration requests already wait for an admin"
                           % len(self.registrations))
        if not self._registration_bucket.take(now_ms):
            raise _Refusal(RATE_LIMITED, "too many registration requests at this gateway")
        try:
            req = check_registration_request(frame, self.crypto)
        except Refusal as exc:
            code = BAD_SIGNATURE if exc.code == REASON_BAD_PROOF_OF_POSSESSION else MALFORMED
            raise _Refusal(code, "registration request: %s" % exc.text) from None
        if req.time_ms > now_ms + self.limits.max_skew_ms or req.time_ms < now_ms - self.limits.max_age_ms:
            raise _Refusal(CLOCK_SKEW, "registration request time is %d ms off" % (req.time_ms - now_ms))
        if held is not None and req.time_ms <= held[0]:
            raise _Refusal(REPLAY, "a registration request of this device dated %d is already held" % held[0])
        self.registrations[topic_dev] = (req.time_ms, now_ms)
        self.registrations.move_to_end(topic_dev)
        frame_hash = sha256(frame)
        reply = cbor.dumps({0: KIND_REGISTRATION, 1: frame_hash})
        return [RegistrationReceived(topic_dev, frame, req.role, req.attributes, req.time_ms),
                Reply(self.down_topic(topic_dev), reply, frame_hash)]

    def restore_registration(self, dev: bytes, time_ms: int, held_since_ms: int) -> None:
        """After a restart: a registration request the store still holds."""
        self.registrations[dev] = (time_ms, held_since_ms)

    # --- sessions (fog CA) ----------------------------------------------------------------------

    def _session_request(self, topic: str, frame: bytes, topic_dev: bytes, now_ms: int) -> list[Effect]:
        try:
            msg = cose.decode_sign1(frame)
        except LedgerlinkError as exc:
            raise _Refusal(MALFORMED, "bad COSE_Sign1: %s" % exc) from None
        if msg.kid != topic_dev:
            raise _Refusal(WRONG_TOPIC, "kid does not match the topic")
        rec = self._device_record(topic_dev, topic, frame, now_ms)
        if isinstance(rec, list):
            return rec
        _require_canonical(msg.signature)
        if not self.crypto.verify(rec[2], msg.to_be_signed(topic.encode()), msg.signature):
            raise _Refusal(BAD_SIGNATURE, "session request signature does not verify")
        try:
            req = cbor.loads(msg.payload, max_depth=4)
        except LedgerlinkError:
            raise _Refusal(MALFORMED, "session request is not deterministic CBOR") from None
        if (not isinstance(req, dict) or set(req) != {1, 2, 3, 4} or req[1] != topic_dev
                or not isinstance(req[2], bytes) or len(req[2]) != 33
                or not isinstance(req[3], bytes) or len(req[3]) != 16 or not cbor.is_uint(req[4])):
            raise _Refusal(MALFORMED, "session request must be {1: device-id, 2: R_U, 3: nonce, 4: time}")
        if abs(req[4] - now_ms) > self.limits.max_skew_ms:
            raise _Refusal(CLOCK_SKEW, "request time is %d ms off" % (req[4] - now_ms))
        ids = (sha256(b"nonce" + topic_dev + req[3]), sha256(b"point" + req[2]))
        if any(i in self.used_requests for i in ids):
            raise _Refusal(CERTIFICATE_REUSE, "request nonce or point already used")
        if not self._state(topic_dev, now_ms).bucket.take(now_ms):
            raise _Refusal(RATE_LIMITED, "too many requests from %s" % topic_dev.hex())
        now_s = now_ms // 1000
        try:
            # valid from the device's own clock (within the skew), so a device behind can use it at once
            cert, r = ecqv.issue(req[2], self.keys.ca, self.rng(16), self.gateway_id, topic_dev,
                                 min(now_s, req[4] // 1000), now_s + self.limits.session_lifetime_s, ecqv.USAGE_SESSION, rng=self.rng,
                                 peer=self.site_public)
        except LedgerlinkError:
            raise _Refusal(MALFORMED, "request point R_U is not a valid P-256 point") from None
        cert_hash = sha256(cert)
        if cert_hash in self.issued_certs:
            raise _Refusal(CERTIFICATE_REUSE, "certificate already issued")
        forget_ms = now_ms + 2 * self.limits.max_skew_ms        # past it, the request's time is refused
        for i in ids:
            self.used_requests[i] = forget_ms
        self.install_session(cert, topic_dev)
        response = {1: req[3], 2: cert, 3: r, 4: self.site_public, 5: self.gateway_id}
        return [Reply(self.down_topic(topic_dev), cbor.dumps({0: KIND_SESSION, 1: response}), sha256(frame)),
                CertIssued(topic_dev, cert)]

    def _shared_session(self, session_id: bytes) -> Session | None:
        """A session issued by another process of this site (same CA and site keys), from
        ``session_source`` (the shared store): its keys are derived again here from the certificate."""
        if self.session_source is None:
            return None
        found = self.session_source(session_id)
        if found is None:
            return None
        dev, cert = found
        try:
            session = self.install_session(cert, dev)
        except LedgerlinkError:
            return None
        return session if session.session_id == session_id else None

    def install_session(self, cert: bytes, dev: bytes) -> Session:
        """Derive and keep the session keys of a certificate this gateway issued (also after a restart)."""
        parsed = ecqv.decode_cert(cert)
        q_u = ecqv.public_key(cert, self.ca_public)
        sk = session_keys.derive(self.keys.site, q_u, cert, dev, self.gateway_id, self.crypto)
        session = Session(sk.session_id, dev, sk.key, sk.base_iv, parsed.valid_until, cert)
        self.sessions[sk.session_id] = session
        self.issued_certs.add(sha256(cert))
        mine = self._device_sessions.setdefault(dev, [])
        if sk.session_id not in mine:
            mine.append(sk.session_id)
        while len(mine) > self.limits.sessions_per_device:
            self._drop_session(self.sessions[mine[0]])
        return session

    def _drop_session(self, session: Session) -> None:
        del self.sessions[session.session_id]
        self.issued_certs.discard(sha256(session.cert))
        mine = self._device_sessions[session.device_id]
        mine.remove(session.session_id)
        if not mine:
            del self._device_sessions[session.device_id]

    def _forget_expired_sessions(self, now_ms: int) -> None:
        """Sessions past their certificate's end (looked for once a minute), and request ids whose time no
        longer passes the skew check."""
        if now_ms >= self._session_sweep_ms:
            self._session_sweep_ms = now_ms + 60_000
            now_s = now_ms // 1000
            for session in [s for s in self.sessions.values() if now_s >= s.valid_until_s]:
                self._drop_session(session)
        while self.used_requests:
            first = next(iter(self.used_requests))
            if self.used_requests[first] > now_ms:
                break
            del self.used_requests[first]

    # --- ledger inputs ----------------------------------------------------------------------------

    def restore_window(self, dev: bytes, highest_seq: int, now_ms: int, seen: int = 1) -> None:
        """After a restart: the window of ``dev`` as the store holds it: ``highest_seq`` and ``seen``, whose bit
        i says whether seq ``highest_seq - i`` is stored (the store's window; seqs below it count as seen,
        and no seq the store does not hold is marked)."""
        st = self._state(dev, now_ms)
        if highest_seq > st.window.highest:
            st.window = ReplayWindow(self.limits.window, highest_seq, seen)

    def on_header(self, certified: Any, now_ms: int) -> list[Effect]:
        """A certified header (CBOR bytes or object) from the ledger; kept when it verifies and is newer."""
        try:
            header, raw = self._verified_header(certified)
        except Exception as exc:  # noqa: BLE001 - forged or malformed input is dropped
            return [Ignored("certified header refused: %s" % exc)]
        return self._take_header(header, raw)

    def _take_header(self, header: spv.Header, raw: bytes) -> list[Effect]:
        if self.header is not None and header.height <= self.header.height:
            return []
        self.header = header
        return [HeaderUpdated(header.height, raw)]

    def _verified_header(self, certified: Any) -> tuple[spv.Header, bytes]:
        """``spv.verify_certified_header`` of a certified header (object or CBOR), remembering the last
        ``HEADER_CACHE`` that verified by their exact bytes; returns (header, its CBOR bytes)."""
        raw = cbor.dumps(cbor.loads(bytes(certified), max_depth=8)) if isinstance(certified, (bytes, bytearray)) \
            else cbor.dumps(certified)
        header = self._headers.get(raw)
        if header is None:
            header = spv.verify_certified_header(raw, self.chain_id, self.validator_keys, self.crypto,
                                                 group_key=self.group_key)
            self._remember_header(raw, header)
        return header, raw

    def _remember_header(self, raw: bytes, header: spv.Header) -> None:
        """Keep a verified header by its exact bytes (the check thread and the block follower both add:
        each step is one operation on the dict, and a pop finds the dict already trimmed at worst)."""
        headers = self._headers
        headers[raw] = header
        while len(headers) > HEADER_CACHE:
            headers.pop(next(iter(headers), None), None)

    def on_registry_proof(self, record_proof: Any, now_ms: int, device_id: bytes | None = None) -> list[Effect]:
        """A device ``record-proof`` from the ledger. ``device_id`` names the device for an absence proof.

        Returns the effects of the frames that waited for it (processed now).
        """
        try:
            proof = cbor.loads(bytes(record_proof), max_depth=12) if isinstance(record_proof, (bytes, bytearray)) \
                else record_proof
            if not isinstance(proof, dict) or any(label not in proof for label in (1, 2, 3, 4)):
                raise ValueError("record proof must be a map with fields 1..4")
            header, certified = self._verified_header(proof[1])
            key, value = proof[2], proof[3]
            spv.verify_record(header, key, value, proof[4])
            if value is None:
                if device_id is None or spv.state_key(RECORD_DEVICE, bytes(device_id)) != key:
                    raise ValueError("absence proof for another key")
                dev, record = bytes(device_id), None
            else:
                record = cbor.loads(value)
                if not isinstance(record, dict) or not isinstance(record.get(1), bytes):
                    raise ValueError("not a device record")
                dev = record[1]
                if spv.state_key(RECORD_DEVICE, dev) != key or (device_id is not None and device_id != dev):
                    raise ValueError("record is not the device record of its key")
                if not isinstance(record.get(2), bytes) or record.get(5) not in (1, 2):
                    raise ValueError("device record lacks key or status")
        except Exception as exc:  # noqa: BLE001 - forged or malformed input is dropped
            return [Ignored("registry proof refused: %s" % exc)]
        self.last_answer_ms = now_ms
        effects: list[Effect] = []
        if self.header is not None and header.height + self.limits.max_proof_lag < self.header.height:
            # A lying node could otherwise serve a proof from before a ban for a device not cached here.
            return [Ignored("registry proof of height %d is more than %d behind height %d"
                            % (header.height, self.limits.max_proof_lag, self.header.height))]
        effects.extend(self._take_header(header, certified))
        if header.height < max(self.changed.get(dev, -1), self.min_proof_height):
            # a block this gateway followed changed the record after this proof's height (a ban, say)
            self.fetching[dev] = now_ms
            return effects + [Ignored("registry proof of height %d predates a change of %s" % (header.height, dev.hex())),
                              FetchRegistry(dev)]
        old = self.registry.get(dev)
        if old is not None and header.height < old.height:
            effects.append(Ignored("registry proof of height %d is older than %d" % (header.height, old.height)))
        else:
            if len(self.registry) >= self.limits.max_devices and old is None:
                self.registry.pop(next(iter(self.registry)))
            self.registry[dev] = RegistryEntry(header.height, record, now_ms)
            self.registry.move_to_end(dev)
            if record is not None and self.registrations.pop(dev, None) is not None:
                effects.append(RegistrationSettled(dev))
        self.fetching.pop(dev, None)
        waiting = self.pending.pop(dev, [])
        self.pending_count -= len(waiting)
        self.pending_bytes -= sum(len(p.frame) for p in waiting)
        for p in waiting:
            effects.extend(self.on_frame(p.topic, p.frame, now_ms))
        return effects

    def on_block(self, certified: Any, txs: Any, now_ms: int) -> list[Effect]:
        """A committed block (its certified header and transactions) from the ledger, followed in height order.

        The header must verify against the trusted validators and the transactions must hash to its tx
        root, so a lying node can neither invent nor hide a transaction. Devices whose records the block
        may change (register, key rotation, ban, unban) leave the registry cache: their next frame waits
        for a fresh proof, and a proof from before the block is not taken. This is how a ban reaches the
        gateway within one follow interval.
        """
        try:
            header, raw = self._verified_header(certified)
            _check_txs(header, txs)
        except Exception as exc:  # noqa: BLE001 - forged or malformed input is dropped
            return [Ignored("block refused: %s" % exc)]
        effects = self._take_header(header, raw)
        for tx in txs:
            dev = _device_changed_by(tx)
            if dev is not None:
                self.registry.pop(dev, None)
                self.changed[dev] = header.height
                self.changed.move_to_end(dev)
        floor = header.height - self.limits.max_proof_lag
        while self.changed and (next(iter(self.changed.values())) < floor or len(self.changed) > self.limits.max_devices):
            self.changed.popitem(last=False)
        return effects

    def check_block(self, certified: Any, txs: Any) -> spv.Header:
        """The header of a block that checks as ``on_block`` checks it (raises otherwise). Called by the
        thread that fetches blocks: it changes no state but the cache of verified headers, so ``on_block``
        does not verify the quorum signatures of the same header again."""
        header, _ = self._verified_header(certified)
        _check_txs(header, txs)
        return header

    def check_header(self, certified: Any) -> spv.Header:
        """A certified header (object or CBOR) verified against the trusted validators (as ``check_block``)."""
        return self._verified_header(certified)[0]

    def on_gap(self, certified: Any, now_ms: int) -> list[Effect]:
        """Blocks up to the certified header ``certified`` were not followed (the ledger was out of reach):
        every cached record may be stale, so all are dropped and proofs from before it are not taken."""
        try:
            header, raw = self._verified_header(certified)
        except Exception as exc:  # noqa: BLE001 - forged or malformed input is dropped
            return [Ignored("certified header refused: %s" % exc)]
        self.registry.clear()
        self.min_proof_height = max(self.min_proof_height, header.height)
        return self._take_header(header, raw)

    def tick(self, now_ms: int) -> list[Effect]:
        """Time passes: frames waiting too long for the registry are refused; stale records are refetched.

        While registry answers keep coming (a backlog after a restart: lookups of many devices queue up
        behind each other), held frames wait up to ``registry_wait_max_ms``; when the ledger stops
        answering, ``registry_timeout_ms`` after the last answer.
        """
        effects: list[Effect] = []
        lim = self.limits
        self._forget_expired_sessions(now_ms)
        answered = self.last_answer_ms if self.last_answer_ms is not None else now_ms - lim.registry_wait_max_ms
        for dev in list(self.pending):
            queue = self.pending[dev]
            keep = []
            for p in queue:
                if (now_ms - max(p.at_ms, answered) > lim.registry_timeout_ms
                        or now_ms - p.at_ms > lim.registry_wait_max_ms):
                    effects.append(self._refuse(p.frame, p.topic, dev, now_ms,
                                                _Refusal(LEDGER_UNAVAILABLE, "no registry answer for %s" % dev.hex())))
                else:
                    keep.append(p)
            self.pending_count -= len(queue) - len(keep)
            self.pending_bytes -= sum(len(p.frame) for p in queue) - sum(len(p.frame) for p in keep)
            if keep:
                self.pending[dev] = keep
            else:
                del self.pending[dev]
                self.fetching.pop(dev, None)
        for dev, at in list(self.fetching.items()):
            if now_ms - max(at, answered) > lim.registry_timeout_ms // 2:
                self.fetching[dev] = now_ms
                effects.append(FetchRegistry(dev))
        for dev, entry in self.registry.items():          # oldest answer first
            if now_ms - entry.fetched_ms <= self.limits.registry_ttl_ms:
                break
            if dev not in self.fetching:
                self.fetching[dev] = now_ms
                effects.append(FetchRegistry(dev))
        for dev, (_, since) in list(self.registrations.items()):     # oldest first
            if now_ms - since <= self.limits.registration_ttl_ms:
                break
            del self.registrations[dev]
            effects.append(RegistrationSettled(dev))
        return effects
