"""PBFT wire messages between validators, ledger headers and commit certificates.

Every message is a CBOR array ``[kind, sender, field..., signature]``. The signature is ES256 (P-256,
raw ``r || s``) by the sender's validator key over

    cbor(["ledgerlink-pbft-v1", chain-id, [kind, sender, field...]])

except the commit message, whose signature is over the commit-certificate bytes

    cbor(["ledgerlink-commit-v1", chain-id, height, view, header-hash])

so that 2f+1 commit messages for one header form that block's ``commit-certificate`` unchanged.

```cddl
pbft-msg = request / pre-prepare / prepare / commit / checkpoint / view-change / new-view /
           fetch-blocks / blocks / equivocation / nonce-commitment / sign-request / signature-share /
           threshold-cert-msg
sender = uint                      ; validator index, 0 .. n-1
view = uint .le 4294967295
height = uint                      ; PBFT sequence number == block height
request      = [1, sender, tx: bstr, sig64]           ; forwards a client tx (the tx carries its own
                                                     ; client signature, checked by the application)
pre-prepare  = [2, sender, view, height, header, txs: [* bstr], sig64]
prepare      = [3, sender, view, height, header-hash: hash32, sig64]
commit       = [4, sender, view, height, header-hash: hash32, sig64]
checkpoint   = [5, sender, height, header-hash: hash32, sig64]
view-change  = [6, sender, new-view: view,
                committed: certified-header / null,  ; the sender's last committed block
                prepared: prepared-proof / null,     ; the proposal it prepared above it, if any
                sig64]
prepared-proof = [pre-prepare: bstr,                 ; the signed pre-prepare message, as received
                  votes: [+ [validator-index: uint, signature: sig64]]]  ; 2f prepares, not the primary
new-view     = [7, sender, view, view-changes: [+ bstr],   ; 2f+1 signed view-change messages for view
                pre-prepare: bstr / null, sig64]    ; required when a prepared proposal is carried over
fetch-blocks = [8, sender, from: height, to: height, sig64]
blocks       = [9, sender, [* [header, txs: [* bstr], commit-certificate, ? threshold-certificate]], sig64]
equivocation = [10, sender, pre-prepare: bstr, pre-prepare: bstr, sig64]   ; two signed pre-prepares
                                                     ; of one primary for one view and height
; threshold certificates (FROST(P-256, SHA-256), RFC 9591; t = 2f+1 of n)
nonce-commitment = [11, sender, height, commitment, sig64]        ; to the aggregator: a fresh
                                                     ; round-one commitment for a committed height
sign-request  = [12, sender, view, height, header-hash: hash32,   ; the aggregator (primary of view)
                 commitments: [+ commitment], sig64]   ; t commitments, one per signer, by index
signature-share = [13, sender, height, header-hash: hash32, z: bstr .size 32,
                   next: commitment, sig64]           ; the sender's share and its next commitment
threshold-cert-msg = [14, sender, height, threshold-certificate, sig64]
commitment = [index: uint, hiding: bstr .size 33, binding: bstr .size 33]   ; index = validator + 1
threshold-certificate = [view, frost-signature: bstr .size 65]   ; R (33) || z (32) by the group key
                                                     ; over commit-sign-bytes(chain, height, view, hash)
```

Validity beyond the CDDL: the sender field equals the transport sender; the sender of a pre-prepare
or new-view is the primary of its view (``view mod n``); view-changes inside a new-view come from
distinct validators and name the new view; prepared-proof votes come from distinct non-primary
validators and sign the prepare ``[3, index, view, height, header-hash]`` of the pre-prepare; the
two pre-prepares of an equivocation verify, come from the primary of their view, and name the same
view and height with different headers. A commitment's FROST index is its validator index + 1 (FROST
indices start at 1); in a nonce-commitment and as the ``next`` of a signature-share it is the sender's.

This module decodes untrusted bytes: every decoder raises ``MessageError`` (never IndexError,
KeyError or TypeError) on malformed input, and signatures are checked against the validator set.
Tests: tests/ledger/test_pbft_messages.py (round trips with hypothesis, truncation and corruption of
every field, signature and sender checks).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from ledgerlink.core.cbor import UINT_MAX, dumps as _dumps, is_uint, loads as _core_loads
from ledgerlink.protocol.spv import commit_sign_bytes, validators_hash  # noqa: F401 - the replica's m.validators_hash
from ledgerlink.protocol.ledger_tx import tx_root  # noqa: F401 - the replica hashes its blocks with m.tx_root


def _loads(data: bytes) -> Any:
    return _core_loads(data, max_size=max(len(data), 1))  # callers bound the size


REQUEST, PRE_PREPARE, PREPARE, COMMIT, CHECKPOINT, VIEW_CHANGE, NEW_VIEW, FETCH_BLOCKS, BLOCKS, EQUIVOCATION = \
    range(1, 11)
NONCE_COMMITMENT, SIGN_REQUEST, SIGNATURE_SHARE, THRESHOLD_CERT = range(11, 15)
KIND_NAMES = {
    REQUEST: "request", PRE_PREPARE: "pre-prepare", PREPARE: "prepare", COMMIT: "commit",
    CHECKPOINT: "checkpoint", VIEW_CHANGE: "view-change", NEW_VIEW: "new-view",
    FETCH_BLOCKS: "fetch-blocks", BLOCKS: "blocks", EQUIVOCATION: "equivocation",
    NONCE_COMMITMENT: "nonce-commitment", SIGN_REQUEST: "sign-request",
    SIGNATURE_SHARE: "signature-share", THRESHOLD_CERT: "threshold-cert",
}
POINT_SIZE = 33                    # a compressed P-256 point
FROST_SIGNATURE_SIZE = 65          # R (compressed point) || z
PBFT_DOMAIN = "ledgerlink-pbft-v1"
ZERO_HASH = bytes(32)
MAX_UINT64 = UINT_MAX
MAX_VIEW = (1 << 32) - 1


class MessageError(Exception):
    """A message or block that is malformed or fails verification; ``reason`` is a short code."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Crypto(Protocol):
    """The subset of a ``ledgerlink.core.backend`` backend used by consensus."""

    def sign(self, priv: bytes, msg: bytes) -> bytes: ...
    def verify(self, pub: bytes, msg: bytes, sig: bytes) -> bool: ...
    def sha256(self, data: bytes) -> bytes: ...


def dumps(obj: Any) -> bytes:
    """Deterministic CBOR encoding (RFC 8949 section 4.2.1)."""
    return _dumps(obj)


def loads(data: bytes) -> Any:
    """Decode CBOR; raises MessageError("malformed") on any decoding failure."""
    try:
        return _loads(data)
    except Exception as exc:  # the codec may raise anything on hostile input
        raise MessageError("malformed") from exc


# --- field checks -------------------------------------------------------------------------------

def _arr(x: Any, n: int | None = None) -> list:
    if not isinstance(x, (list, tuple)):
        raise MessageError("malformed")
    if n is not None and len(x) != n:
        raise MessageError("malformed")
    return list(x)


def _uint(x: Any) -> int:
    if not is_uint(x):
        raise MessageError("malformed")
    return x


def _view(x: Any) -> int:
    v = _uint(x)
    if v > MAX_VIEW:
        raise MessageError("malformed")
    return v


def _bstr(x: Any, size: int | None = None, max_size: int | None = None) -> bytes:
    if not isinstance(x, bytes):
        raise MessageError("malformed")
    if size is not None and len(x) != size:
        raise MessageError("malformed")
    if max_size is not None and len(x) > max_size:
        raise MessageError("oversized")
    return x


def _tstr(x: Any) -> str:
    if not isinstance(x, str):
        raise MessageError("malformed")
    return x


def _txs(x: Any, max_txs: int, max_tx: int) -> tuple[bytes, ...]:
    items = _arr(x)
    if len(items) > max_txs:
        raise MessageError("oversized")
    for t in items:
        if type(t) is not bytes or len(t) > max_tx:
            return tuple(_bstr(t, max_size=max_tx) for t in items)
    return tuple(items)


# --- header, certificate ------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    """The ``header`` CDDL: identity of a block; ``hash()`` is SHA-256 of its CBOR encoding."""

    chain_id: str
    height: int
    prev_hash: bytes
    time_ms: int
    tx_root: bytes
    state_root: bytes
    validators_hash: bytes

    def to_obj(self) -> list:
        return [self.chain_id, self.height, self.prev_hash, self.time_ms, self.tx_root,
                self.state_root, self.validators_hash]

    @classmethod
    def from_obj(cls, obj: Any) -> "Header":
        a = _arr(obj, 7)
        return cls(_tstr(a[0]), _uint(a[1]), _bstr(a[2], 32), _uint(a[3]), _bstr(a[4], 32),
                   _bstr(a[5], 32), _bstr(a[6], 32))

    def encode(self) -> bytes:
        return dumps(self.to_obj())

    def hash(self) -> bytes:
        return _sha256(self.encode())


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()




@dataclass(frozen=True)
class CommitCertificate:
    """The ``commit-certificate`` CDDL: 2f+1 commit signatures on one header hash in one view."""

    height: int
    view: int
    header_hash: bytes
    votes: tuple[tuple[int, bytes], ...]

    def to_obj(self) -> list:
        return [self.height, self.view, self.header_hash, [[i, s] for i, s in self.votes]]

    @classmethod
    def from_obj(cls, obj: Any) -> "CommitCertificate":
        a = _arr(obj, 4)
        votes = []
        for v in _arr(a[3]):
            pair = _arr(v, 2)
            votes.append((_uint(pair[0]), _bstr(pair[1], 64)))
        if not votes:
            raise MessageError("malformed")
        return cls(_uint(a[0]), _uint(a[1]), _bstr(a[2], 32), tuple(votes))

    def encode(self) -> bytes:
        return dumps(self.to_obj())


@dataclass(frozen=True)
class ThresholdCertificate:
    """The ``threshold-certificate`` CDDL: the validator set's FROST signature over the commit bytes
    ``commit_sign_bytes(chain, height, view, header-hash)`` of a header."""

    view: int
    signature: bytes

    def to_obj(self) -> list:
        return [self.view, self.signature]

    @classmethod
    def from_obj(cls, obj: Any) -> "ThresholdCertificate":
        a = _arr(obj, 2)
        return cls(_view(a[0]), _bstr(a[1], FROST_SIGNATURE_SIZE))

    def encode(self) -> bytes:
        return dumps(self.to_obj())

    @classmethod
    def decode(cls, data: bytes) -> "ThresholdCertificate":
        return cls.from_obj(loads(data))


Commitment = tuple[int, bytes, bytes]     # (FROST index, hiding point, binding point), the CDDL ``commitment``


def commitment_from_obj(obj: Any) -> Commitment:
    """A ``commitment`` with a non-zero index and two 33-byte points (their curve check is FROST's)."""
    a = _arr(obj, 3)
    index = _uint(a[0])
    if index == 0:
        raise MessageError("malformed")
    return index, _bstr(a[1], POINT_SIZE), _bstr(a[2], POINT_SIZE)


def quorum(n: int) -> int:
    """2f+1 for n = 3f+1 (and the smallest Byzantine quorum for other n)."""
    return n - (n - 1) // 3


def verify_certificate(cert: CommitCertificate, header: Header, chain_id: str,
                       validators: Sequence[bytes], crypto: Crypto) -> None:
    """Raise MessageError unless ``cert`` holds 2f+1 valid distinct votes for ``header``."""
    if cert.height != header.height or header.chain_id != chain_id:
        raise MessageError("certificate mismatch")
    if cert.header_hash != header.hash():
        raise MessageError("certificate mismatch")
    msg = commit_sign_bytes(chain_id, cert.height, cert.view, cert.header_hash)
    seen: set[int] = set()
    for index, sig in cert.votes:
        if index >= len(validators) or index in seen:
            raise MessageError("bad certificate")
        if not crypto.verify(validators[index], msg, sig):
            raise MessageError("bad certificate")
        seen.add(index)
    if len(seen) < quorum(len(validators)):
        raise MessageError("bad certificate")


@dataclass(frozen=True)
class Block:
    """A block: the header and the transactions it commits to (the certificate is separate)."""

    header: Header
    txs: tuple[bytes, ...]

    def encode(self) -> bytes:
        return dumps([self.header.to_obj(), list(self.txs)])

    @classmethod
    def decode(cls, data: bytes, max_txs: int = 1 << 16, max_tx: int = 1 << 20) -> "Block":
        a = _arr(loads(data), 2)
        return cls(Header.from_obj(a[0]), _txs(a[1], max_txs, max_tx))


# --- messages -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    """A decoded, signature-checked message: ``kind``, ``sender``, decoded ``fields``, ``sig``, ``raw``."""

    kind: int
    sender: int
    fields: tuple
    sig: bytes
    raw: bytes


@dataclass(frozen=True)
class Limits:
    """Size limits applied while decoding untrusted messages."""

    max_batch: int = 64
    max_tx_size: int = 4096
    max_blocks: int = 16


def signed_bytes(chain_id: str, body: list) -> bytes:
    """What a non-commit message's signature covers."""
    if body and body[0] == COMMIT:
        return commit_sign_bytes(chain_id, body[3], body[2], body[4])
    return dumps([PBFT_DOMAIN, chain_id, body])


def encode_message(chain_id: str, body: list, priv: bytes, crypto: Crypto) -> bytes:
    """Sign ``body = [kind, sender, field...]`` and return the wire bytes."""
    sig = crypto.sign(priv, signed_bytes(chain_id, body))
    return dumps(list(body) + [sig])


def _parse_fields(kind: int, a: list, limits: Limits) -> tuple:
    if kind == REQUEST:
        txs = _txs(a[0], limits.max_batch, limits.max_tx_size)
        if not txs:
            raise MessageError("malformed")
        return (txs,)
    if kind == PRE_PREPARE:
        return (_view(a[0]), _uint(a[1]), Header.from_obj(a[2]),
                _txs(a[3], limits.max_batch, limits.max_tx_size))
    if kind in (PREPARE, COMMIT):
        return (_view(a[0]), _uint(a[1]), _bstr(a[2], 32))
    if kind == CHECKPOINT:
        return (_uint(a[0]), _bstr(a[1], 32))
    if kind == VIEW_CHANGE:
        committed = None
        if a[1] is not None:
            ch = _arr(a[1], 2)
            committed = (Header.from_obj(ch[0]), CommitCertificate.from_obj(ch[1]))
        prepared = None
        if a[2] is not None:
            pp = _arr(a[2], 2)
            votes = tuple((_uint(v[0]), _bstr(v[1], 64)) for v in (_arr(x, 2) for x in _arr(pp[1])))
            prepared = (_bstr(pp[0]), votes)
        return (_view(a[0]), committed, prepared)
    if kind == NEW_VIEW:
        vcs = tuple(_bstr(x) for x in _arr(a[1]))
        pp = None if a[2] is None else _bstr(a[2])
        return (_view(a[0]), vcs, pp)
    if kind == FETCH_BLOCKS:
        return (_uint(a[0]), _uint(a[1]))
    if kind == BLOCKS:
        items = _arr(a[0])
        if len(items) > limits.max_blocks:
            raise MessageError("oversized")
        out = []
        for it in items:
            b = _arr(it)
            if len(b) not in (3, 4):
                raise MessageError("malformed")
            threshold = ThresholdCertificate.from_obj(b[3]) if len(b) == 4 else None
            out.append((Header.from_obj(b[0]), _txs(b[1], limits.max_batch, limits.max_tx_size),
                        CommitCertificate.from_obj(b[2]), threshold))
        return (tuple(out),)
    if kind == EQUIVOCATION:
        return (_bstr(a[0]), _bstr(a[1]))
    if kind == NONCE_COMMITMENT:
        return (_uint(a[0]), commitment_from_obj(a[1]))
    if kind == SIGN_REQUEST:
        commitments = tuple(commitment_from_obj(c) for c in _arr(a[3]))
        if not commitments:
            raise MessageError("malformed")
        return (_view(a[0]), _uint(a[1]), _bstr(a[2], 32), commitments)
    if kind == SIGNATURE_SHARE:
        return (_uint(a[0]), _bstr(a[1], 32), _bstr(a[2], 32), commitment_from_obj(a[3]))
    if kind == THRESHOLD_CERT:
        return (_uint(a[0]), ThresholdCertificate.from_obj(a[1]))
    raise MessageError("unknown kind")


_ARITY = {REQUEST: 1, PRE_PREPARE: 4, PREPARE: 3, COMMIT: 3, CHECKPOINT: 2, VIEW_CHANGE: 3,
          NEW_VIEW: 3, FETCH_BLOCKS: 2, BLOCKS: 1, EQUIVOCATION: 2, NONCE_COMMITMENT: 2, SIGN_REQUEST: 4,
          SIGNATURE_SHARE: 4, THRESHOLD_CERT: 2}


def decode_message(data: bytes, chain_id: str, validators: Sequence[bytes], crypto: Crypto,
                   limits: Limits = Limits()) -> Message:
    """Decode and verify one message; raises MessageError with the reason it is refused."""
    a = _arr(loads(data))
    if len(a) < 3:
        raise MessageError("malformed")
    kind = a[0]
    if type(kind) is not int or kind not in _ARITY:
        raise MessageError("unknown kind")
    if len(a) != _ARITY[kind] + 3:
        raise MessageError("malformed")
    sender = _uint(a[1])
    sig = _bstr(a[-1], 64)
    fields = _parse_fields(kind, a[2:-1], limits)
    if sender >= len(validators):
        raise MessageError("unknown sender")
    body = a[:-1]
    if not crypto.verify(validators[sender], signed_bytes(chain_id, body), sig):
        raise MessageError("bad signature")
    return Message(kind, sender, fields, sig, data)


def kind_of(data: bytes) -> int | None:
    """The kind number of an encoded message, or None (for traces; no verification)."""
    try:
        a = _loads(data)
        return a[0] if isinstance(a, (list, tuple)) and a and type(a[0]) is int else None
    except Exception:
        return None
