"""Signed republish: each verified reading carries the gateway's signature, so a subscriber can tell the
gateway's output from a reading anyone else put on the verified topic.

Signing every reading would cost an ECDSA signature per message, so the readings republished together
(one checked group, up to ``MAX_GROUP``) are signed once: the gateway signs the RFC 9162 Merkle root of
the group's readings, and each republished reading carries its inclusion proof and that signature::

    signed-verified-reading = {             ; a verified-reading (keys 1..6) with 7 added
      1: device-id, 2: seq, 3: time-ms, 4: any, 5: hash32, 6: tstr,
      7: [index: uint, proof: [* hash32], group: bstr],
    }
    group = COSE_Sign1 (tag 18) by the gateway's identity key, kid = gateway device id,
            payload = bstr .cbor { 1: hash32 (root), 2: uint (size), 3: time-ms }
            external_aad = the site's verified topic prefix "ll/{site}/verified/"

The leaf of a reading is the deterministic CBOR of its keys 1..6 (the verified-reading without 7),
which holds the frame hash (5), so the signature covers the reading and the frame it came from.
``verify`` checks one republished reading against the gateway keys a subscriber trusts (those the
ledger lists with role gateway). Protects against: a forged or altered verified reading (no key,
so no signature), a reading moved to another site (the signature is bound to the site's topic prefix),
and a reading lifted from one group into another (its proof leads to its own group's root only).
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

from ledgerlink.core import cbor, cose, merkle
from ledgerlink.core.errors import LedgerlinkError

VERIFIED_TOPIC = "ll/%s/verified/"
KEY_GROUP_PROOF = 7


class Unverified(LedgerlinkError):
    """A republished reading whose gateway signature does not check; the message says why."""


def _aad(site: str) -> bytes:
    return (VERIFIED_TOPIC % site).encode()


def sign_group(readings: list[bytes], key: bytes, gateway_id: bytes, site: str, now_ms: int | None = None,
               backend: Any = "cpython") -> list[bytes]:
    """The ``signed-verified-reading`` of each ``verified-reading`` (deterministic CBOR maps with keys 1..6),
    all under one signature."""
    from ledgerlink.gateway.batcher import cbor_head, encoded_inclusion_proofs

    if not readings:
        return []
    for reading in readings:
        if reading[:1] != b"\xa6":
            raise ValueError("a verified-reading is a CBOR map of 6 entries")
    root, proofs = encoded_inclusion_proofs(readings)
    t = int(time.time() * 1000) if now_ms is None else now_ms
    group = cose.sign1(cbor.dumps({1: root, 2: len(readings), 3: t}), key, gateway_id, _aad(site), backend)
    group_item = cbor.dumps(group)
    heads = [_array_head(n) for n in range(max(count for count, _ in proofs) + 1)]
    return [b"".join((b"\xa7", memoryview(reading)[1:], b"\x07\x83", cbor_head(0, index), heads[count], hashes,
                      group_item))
            for index, (reading, (count, hashes)) in enumerate(zip(readings, proofs))]


def _array_head(n: int) -> bytes:
    return bytes((0x80 | n,)) if n < 24 else b"\x98" + bytes((n,))


def verify(payload: bytes, site: str, gateway_keys: Mapping[bytes, bytes], backend: Any = None) -> dict:
    """The verified reading (keys 1..6) of a ``signed-verified-reading`` whose group signature is by one of
    ``gateway_keys`` (device id -> public key) and whose proof leads to the signed root; Unverified otherwise."""
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
        cose.verify_sign1(group, key, _aad(site), backend)
        signed = cbor.loads(cose.decode_sign1(group).payload)
        merkle.verify_inclusion(merkle.leaf_hash(cbor.dumps(reading)), index, signed[2], proof, signed[1])
    except (LedgerlinkError, KeyError, TypeError) as exc:
        raise Unverified("gateway signature does not check: %s" % exc) from None
    if reading.get(6) != kid.hex():
        raise Unverified("reading names gateway %r but gateway %s signed it" % (reading.get(6), kid.hex()))
    return reading


def sign_outgoing(items: Iterable[Any], key: bytes, gateway_id: bytes, site: str) -> list[Any]:
    """``items`` (``Outgoing``) with the verified readings among them signed as one group (in place)."""
    items = list(items)
    prefix = VERIFIED_TOPIC % site
    picked = [k for k, o in enumerate(items) if o.topic.startswith(prefix)]
    if picked:
        signed = sign_group([items[k].payload for k in picked], key, gateway_id, site)
        for k, payload in zip(picked, signed):
            items[k].payload = payload
    return items
