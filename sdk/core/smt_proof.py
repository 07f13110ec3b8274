"""Sparse Merkle tree proofs: the hashes, the proof form and ``verify`` (see ``smt`` for the tree and
the definitions). A board checking record proofs loads only this module; ``smt`` builds trees and
re-exports everything here.

Protects against forged membership and absence claims and malformed proofs; tested with the tree in
tests/core/test_smt.py (every field of proofs tampered on random key sets, fuzzed proof objects).
"""

import hashlib

from ledgerlink.core.errors import DecodeError, InvalidProof

KEY_LEN = 32
HASH_LEN = 32
MAX_DEPTH = 256
EMPTY = bytes(32)


def value_hash(value):
    """SHA-256(value)."""
    return hashlib.sha256(bytes(value)).digest()


def leaf_hash(key, vhash):
    """SHA-256(0x00 || key || value_hash)."""
    h = hashlib.sha256(b"\x00")
    h.update(key)
    h.update(vhash)
    return h.digest()


def interior_hash(left, right):
    """SHA-256(0x01 || left || right), or EMPTY when both children are EMPTY."""
    if left == EMPTY and right == EMPTY:
        return EMPTY
    h = hashlib.sha256(b"\x01")
    h.update(left)
    h.update(right)
    return h.digest()


def _bit(key, depth):
    return (key[depth >> 3] >> (7 - (depth & 7))) & 1


def _first_diff(a, b):
    """Index of the first bit where the distinct 32-byte strings a and b differ."""
    i = 0
    while a[i] == b[i]:
        i += 1
    x = a[i] ^ b[i]
    n = i * 8
    while not x & 0x80:
        x <<= 1
        n += 1
    return n


def _is_bytes(x, n):
    return isinstance(x, (bytes, bytearray)) and len(x) == n


class SMTProof:
    """A decoded proof: depth, bitmap (bytes), siblings (deepest first), other (None or (key, vh))."""

    def __init__(self, depth, bitmap, siblings, other):
        self.depth = depth
        self.bitmap = bitmap
        self.siblings = siblings
        self.other = other

    def __eq__(self, o):
        return (
            isinstance(o, SMTProof)
            and self.depth == o.depth
            and self.bitmap == o.bitmap
            and self.siblings == o.siblings
            and self.other == o.other
        )

    def __repr__(self):
        return "SMTProof(depth=%d, siblings=%d, other=%s)" % (
            self.depth,
            len(self.siblings),
            "yes" if self.other is not None else "no",
        )


def proof_to_cbor_obj(proof):
    """[depth, bitmap, [siblings...], None or [other_key, other_value_hash]]."""
    other = None if proof.other is None else [proof.other[0], proof.other[1]]
    return [proof.depth, proof.bitmap, list(proof.siblings), other]


def proof_from_cbor_obj(obj):
    """Parse and strictly validate a proof object; DecodeError on bad shape, InvalidProof on bad content."""
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        raise DecodeError("SMT proof must be a 4-element array")
    depth, bitmap, siblings, other = obj[0], obj[1], obj[2], obj[3]
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise DecodeError("SMT proof depth must be an integer")
    if not isinstance(bitmap, (bytes, bytearray)):
        raise DecodeError("SMT proof bitmap must be bytes")
    if not isinstance(siblings, (list, tuple)):
        raise DecodeError("SMT proof siblings must be an array")
    if len(siblings) > MAX_DEPTH:
        raise InvalidProof("SMT proof has more siblings than the tree has levels")
    for s in siblings:
        if not _is_bytes(s, HASH_LEN):
            raise DecodeError("SMT proof sibling must be 32 bytes")
    if other is not None:
        if not isinstance(other, (list, tuple)) or len(other) != 2:
            raise DecodeError("SMT proof other leaf must be null or [key, value_hash]")
        if not _is_bytes(other[0], KEY_LEN) or not _is_bytes(other[1], HASH_LEN):
            raise DecodeError("SMT proof other leaf key and value hash must be 32 bytes")
        other = (bytes(other[0]), bytes(other[1]))
    if depth < 0 or depth > MAX_DEPTH:
        raise InvalidProof("SMT proof depth out of range")
    if len(bitmap) != (depth + 7) // 8:
        raise InvalidProof("SMT proof bitmap length does not match depth")
    count = 0
    for j in range(len(bitmap) * 8):
        if bitmap[j >> 3] & (0x80 >> (j & 7)):
            if j >= depth:
                raise InvalidProof("SMT proof bitmap has bits beyond depth")
            count += 1
    if count != len(siblings):
        raise InvalidProof("SMT proof sibling count does not match bitmap")
    for s in siblings:
        if s == EMPTY:
            raise InvalidProof("SMT proof lists an empty sibling")
    if depth > 0 and not bitmap[(depth - 1) >> 3] & (0x80 >> ((depth - 1) & 7)):
        raise InvalidProof("SMT proof is not canonical: sibling at the leaf depth is empty")
    return SMTProof(depth, bytes(bitmap), [bytes(s) for s in siblings], other)


def verify(root, key, value, proof):
    """Check that proof shows key -> value (value bytes) or key absent (value None) under root.

    proof is an SMTProof or its CBOR object form. Returns None; raises InvalidProof otherwise.
    """
    if not _is_bytes(root, HASH_LEN):
        raise InvalidProof("root must be 32 bytes")
    if not _is_bytes(key, KEY_LEN):
        raise InvalidProof("key must be 32 bytes")
    if value is not None and not isinstance(value, (bytes, bytearray)):
        raise InvalidProof("value must be bytes or None")
    if isinstance(proof, SMTProof):
        proof = [proof.depth, proof.bitmap, proof.siblings, proof.other]
    try:
        proof = proof_from_cbor_obj(proof)
    except DecodeError as e:
        raise InvalidProof("malformed SMT proof: %s" % (e,))
    key = bytes(key)
    root = bytes(root)
    depth = proof.depth
    if value is not None:
        if proof.other is not None:
            raise InvalidProof("proof shows another key's leaf, not membership")
        h = leaf_hash(key, value_hash(value))
    elif proof.other is None:
        h = EMPTY
    else:
        okey, ovh = proof.other
        if okey == key:
            raise InvalidProof("proof shows the key itself is present")
        if _first_diff(okey, key) < depth:
            raise InvalidProof("other leaf is not on the key's path")
        h = leaf_hash(okey, ovh)
    idx = 0
    bitmap = proof.bitmap
    siblings = proof.siblings
    level = depth
    while level > 0:
        j = level - 1
        if bitmap[j >> 3] & (0x80 >> (j & 7)):
            sib = siblings[idx]
            idx += 1
        else:
            sib = EMPTY
        if _bit(key, j):
            h = interior_hash(sib, h)
        else:
            h = interior_hash(h, sib)
        level -= 1
    if h != root:
        raise InvalidProof("SMT proof does not lead to the root")
    return None

