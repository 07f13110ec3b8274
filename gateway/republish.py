"""Signed republish: each verified reading carries the gateway's signature, so a subscriber can tell the
gateway's output from a reading anyone else put on the verified topic.

Signing every reading would cost an ECDSA signature per message, so a group's readings are signed by the
one commit statement that signs the group's stored-acks (``ledgerlink.protocol.stored_ack``; made by
``ledgerlink.gateway.service.commit_group``): the ack entry of a frame whose reading is republished is
[device-id, seq, frame hash, SHA-256 of the reading], and the reading carries that entry's index and
inclusion proof and the statement::

    signed-verified-reading = {             ; a verified-reading (keys 1..6) with 7 added
      1: device-id, 2: seq, 3: time-ms, 4: any, 5: hash32, 6: tstr,
      7: [index: uint, proof: [* hash32], statement: bstr],
    }
    statement = commit-statement: COSE_Sign1 by the gateway's identity key, kid = gateway device id,
            payload = bstr .cbor { 1: hash32 (root), 2: uint (size), 3: time-ms }
            external_aad = CBOR ["ledgerlink-ack-v1", site]

The reading's hash is over the deterministic CBOR of its keys 1..6 (the verified-reading without 7),
which holds the frame hash (5), and the entry names the device, seq and frame hash (1, 2, 5), so the
signature covers the reading and the frame it came from. ``verify`` checks one republished reading
against the gateway keys a subscriber trusts (those the ledger lists with role gateway). Protects against:
a forged or altered verified reading (no key, so no signature), a reading moved to another site (the
statement is bound to the site), a reading lifted from one group into another (its proof leads to its
own group's root only), and a stored-ack's entry passed off as a reading (an entry without a reading's
hash is never the leaf of one). Tested in tests/access/test_republish.py and
tests/gateway/test_delivery.py.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Mapping

from ledgerlink.core import cbor, cose, merkle
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import stored_ack

KEY_GROUP_PROOF = 7


class Unverified(LedgerlinkError):
    """A republished reading whose gateway signature does not check; the message says why."""


def sign_group(readings: list[bytes], key: bytes, gateway_id: bytes, site: str, now_ms: int | None = None,
               backend: Any = "cpython") -> list[bytes]:
    """The ``signed-verified-reading`` of each ``verified-reading`` (deterministic CBOR maps with keys 1..6),
    all under one commit statement (a group of these readings alone, as the gateway makes it)."""
    from ledgerlink.gateway.service import commit_group

    if not readings:
        return []
    stored = []
    for reading in readings:
        r = cbor.loads(reading)
        stored.append((r[1], r[2], r[5], reading))
    t = int(time.time() * 1000) if now_ms is None else now_ms
    return commit_group(stored, t, key, gateway_id, site, backend)[1]


def verify(payload: bytes, site: str, gateway_keys: Mapping[bytes, bytes], backend: Any = None) -> dict:
    """The verified reading (keys 1..6) of a ``signed-verified-reading`` whose commit statement is signed by
    one of ``gateway_keys`` (device id -> public key) and whose proof leads from its entry to the signed root;
    Unverified otherwise."""
    try:
        reading = cbor.loads(payload)
        index, proof, group = reading.pop(KEY_GROUP_PROOF)
        kid = cose.sign1_kid(group)
    except (LedgerlinkError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Unverified("not a signed verified reading: %s" % exc) from None
    key = gateway_keys.get(kid) if isinstance(kid, (bytes, bytearray)) else None
    if key is None:
        raise Unverified("signed by %s, not a trusted gateway" % (kid.hex() if isinstance(kid, bytes) else kid))
    try:
        cose.verify_sign1(group, key, stored_ack.statement_aad(site), backend)
        signed = cbor.loads(cose.decode_sign1(group).payload)
        dev, seq, frame_hash = reading.get(1), reading.get(2), reading.get(5)
        if not isinstance(dev, bytes) or not cbor.is_uint(seq) or not isinstance(frame_hash, bytes) \
                or len(frame_hash) != 32:
            raise Unverified("reading has no device id, seq or frame hash")
        entry = stored_ack.entry(dev, seq, frame_hash, hashlib.sha256(cbor.dumps(reading)).digest())
        merkle.verify_inclusion(merkle.leaf_hash(entry), index, signed[2], proof, signed[1])
    except (LedgerlinkError, KeyError, TypeError) as exc:
        raise Unverified("gateway signature does not check: %s" % exc) from None
    if reading.get(6) != kid.hex():
        raise Unverified("reading names gateway %r but gateway %s signed it" % (reading.get(6), kid.hex()))
    return reading
