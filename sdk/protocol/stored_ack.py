"""Stored-acks and receipt requests (docs/protocol.md, "Delivery"), in the portable subset.

A gateway commits the frames it accepts in groups (one store transaction each). Per group it signs one
``commit-statement`` (COSE_Sign1 with its identity key, kid = its device id, external_aad = CBOR
["ledgerlink-ack-v1", site]) over the RFC 9162 root of the group's ``ack-entry`` list
([device-id, seq, frame hash], with the SHA-256 of the frame's republished verified reading appended
when the group republished one); each frame's device gets a ``stored-ack`` with its entry's index, the
inclusion proof, the reading's hash (key 6, when the entry has one) and the statement. The same
statement signs the group's republished readings (``ledgerlink.gateway.republish``). A device keeps a
frame in its durable queue until an ack for it checks (or the gateway refuses it for good), and asks for
the acks and receipts it misses with a ``receipt-request`` on its ``ask`` topic.

Protects against a broker, or another client that may publish on a device's down topic, making the
device drop frames no gateway stored: the device's own (device id, seq, frame hash) must be in the
signed root, and with ``gateway_keys`` the statement must be signed by one of those gateways (without
them the ack is taken on its structure and inclusion proof alone, as receipts are). Statements that
verified are remembered by hash in ``cache`` (a list the caller keeps), so the acks of one group cost one
signature check. Tested in tests/gateway/test_delivery.py (acks made by the gateway, forged ones refused)
and tests/device/test_client.py (devices over a real broker and gateway).
"""

import hashlib

from ledgerlink.core import cbor, cose
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidMessage, InvalidProof
from ledgerlink.protocol.codes import (KIND_NOT_STORED, KIND_STORED, REASON_LEDGER_UNAVAILABLE,  # noqa: F401
                                       REASON_RATE_LIMITED)

ACK_DOMAIN = "ledgerlink-ack-v1"
MAX_ASK = 16                    # items in one receipt request
TRANSIENT_REFUSALS = (REASON_RATE_LIMITED, REASON_LEDGER_UNAVAILABLE)   # the device sends the frame again later
CACHE_SIZE = 4                  # verified commit statements remembered


def entry(device_id, seq, frame_hash, reading_hash=None):
    """The ``ack-entry`` of a stored frame: CBOR [device-id, seq, frame hash] (its leaf in the commit root),
    with ``reading_hash`` (SHA-256 of its republished verified reading) appended when given."""
    if reading_hash is None:
        return cbor.dumps([bytes(device_id), seq, bytes(frame_hash)])
    return cbor.dumps([bytes(device_id), seq, bytes(frame_hash), bytes(reading_hash)])


def statement_aad(site):
    """external_aad of a commit statement: binds it to acks of ``site``."""
    return cbor.dumps([ACK_DOMAIN, site])


class Ack:
    """A checked stored-ack: ``frame_hash``, ``seq``, ``gateway_id`` and ``time_ms`` of the commit."""

    def __init__(self, frame_hash, seq, gateway_id, time_ms):
        self.frame_hash = frame_hash
        self.seq = seq
        self.gateway_id = gateway_id
        self.time_ms = time_ms

    def __repr__(self):
        return "Ack(seq=%s, gateway=%s)" % (self.seq, self.gateway_id.hex())


def _is_hash(v):
    return isinstance(v, bytes) and len(v) == 32


def check(ack, device_id, site, gateway_keys=None, backend=None, cache=None):
    """Check a ``stored-ack`` map for ``device_id``; return an ``Ack``.

    Raises InvalidMessage (malformed) or InvalidProof (the entry is not in the signed root, or the
    statement is not signed by a gateway of ``gateway_keys`` {gateway id: identity public key}).
    """
    if not isinstance(ack, dict) or ack.get(0) != KIND_STORED or len(ack) != (7 if 6 in ack else 6):
        raise InvalidMessage("stored-ack must be a map with keys 0..5 (and 6) and kind 5")
    frame_hash, seq, index, path, signed = ack.get(1), ack.get(2), ack.get(3), ack.get(4), ack.get(5)
    reading_hash = ack.get(6)
    if not _is_hash(frame_hash) or not cbor.is_uint(seq) or not cbor.is_uint(index) or not isinstance(signed, bytes) \
            or not (reading_hash is None or _is_hash(reading_hash)):
        raise InvalidMessage("stored-ack fields have the wrong types")
    if not isinstance(path, list):
        raise InvalidMessage("stored-ack inclusion proof must be a list of hashes")
    for h in path:
        if not _is_hash(h):
            raise InvalidMessage("stored-ack inclusion proof must be a list of hashes")
    sign1 = cose.decode_sign1(signed)
    body = cbor.loads(sign1.payload, max_depth=2)
    if not isinstance(body, dict) or len(body) != 3:
        raise InvalidMessage("commit statement must be a map with keys 1..3")
    root, count, time_ms = body.get(1), body.get(2), body.get(3)
    if not _is_hash(root) or not cbor.is_uint(count) or not cbor.is_uint(time_ms):
        raise InvalidMessage("commit statement fields have the wrong types")
    from ledgerlink.core import merkle     # here, not at the top: a board forgets it after each receipt check

    merkle.verify_inclusion(merkle.leaf_hash(entry(device_id, seq, frame_hash, reading_hash)), index, count, path, root)
    gateway = sign1.kid
    if not isinstance(gateway, bytes):
        raise InvalidMessage("commit statement has no kid")
    if gateway_keys is not None:
        key = gateway_keys.get(gateway)
        if key is None:
            raise InvalidProof("stored-ack is not signed by a known gateway")
        mark = hashlib.sha256(bytes(key) + signed).digest()
        if cache is None or mark not in cache:
            tbs = sign1.to_be_signed(statement_aad(site))
            if not get_backend(backend).verify(key, tbs, sign1.signature):
                raise InvalidProof("stored-ack statement signature does not verify")
            if cache is not None:
                cache.append(mark)
                while len(cache) > CACHE_SIZE:
                    cache.pop(0)
    return Ack(frame_hash, seq, gateway, time_ms)


def request(items):
    """A ``receipt-request`` for up to ``MAX_ASK`` frames, each named by its seq or its frame hash."""
    items = list(items)
    if not 0 < len(items) <= MAX_ASK:
        raise ValueError("a receipt request names 1..%d frames" % MAX_ASK)
    return cbor.dumps({1: items})
