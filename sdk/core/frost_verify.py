"""The check of a FROST(P-256, SHA-256) signature (RFC 9591), alone: what a device loads to check a
threshold-certified header, without the signing rounds and key generation of ``frost``.

``verify(group_key, msg, signature)`` is true when ``signature`` = ``R (33 B compressed) || z (32 B)``
satisfies [z]G - [c]PK == R, c = H2(R || PK || msg): one double-scalar multiplication, whatever the
number of signers. Only public values are involved. Tested with the RFC 9591 vectors and tampered
signatures in tests/core/test_frost.py (through ``frost.verify``, which is this function).
"""

import hashlib

from ledgerlink.core import p256
from ledgerlink.core.errors import InvalidPoint

N = p256.N
CONTEXT = b"FROST-P256-SHA256-v1"
POINT_LEN = 33
SCALAR_LEN = 32
SIGNATURE_LEN = POINT_LEN + SCALAR_LEN
MAX_PARTICIPANTS = 255
HASH_TO_FIELD_LEN = 48  # L = ceil((ceil(log2(n)) + 128) / 8)
_DST_CHAL = CONTEXT + b"chal"


def sha256(data):
    return hashlib.sha256(data).digest()


def expand_message_xmd(msg, dst, length):
    """RFC 9380 section 5.3.1 with SHA-256 (length <= 255 * 32, dst <= 255 bytes)."""
    dst_prime = dst + bytes((len(dst),))
    b0 = sha256(bytes(64) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime)
    block = sha256(b0 + b"\x01" + dst_prime)
    out = block
    i = 2
    while len(out) < length:
        block = sha256(bytes(x ^ y for x, y in zip(b0, block)) + bytes((i,)) + dst_prime)
        out += block
        i += 1
    return out[:length]


def hash_to_scalar(msg, dst):
    """hash_to_field(msg, 1) of RFC 9380 over the scalar field (L = 48)."""
    return int.from_bytes(expand_message_xmd(msg, dst, HASH_TO_FIELD_LEN), "big") % N


def h2(msg):
    """H2 of RFC 9591 section 6.4 (the challenge hash)."""
    return hash_to_scalar(msg, _DST_CHAL)


def challenge(r_bytes, group_key_bytes, msg):
    """c = H2(R || PK || msg)."""
    return h2(r_bytes + group_key_bytes + msg)


def verify(group_key, msg, signature, backend=None, group_point=None):
    """True when ``signature`` (65 bytes R || z) is a valid FROST(P-256, SHA-256) signature of ``msg``
    under the 33-byte ``group_key``: z < n and [z]G - [c]PK == R, c = H2(R || PK || msg).

    R is checked by encoding: the one double-scalar multiplication's result, compressed, must equal the
    33 bytes of R (so R is the canonical encoding of a point on the curve, not the identity) without a
    square root to decompress it. A malformed signature is False; a malformed key raises InvalidPoint.
    ``group_point``: the decoded group key, when the caller has it.

    Where the backend (``backend.get_backend(backend)``) has ``mul_add_equals(u1, u2, Q, R)`` (the
    CPython one: OpenSSL), it makes the same check; where it cannot decide, the portable one does.
    """
    from ledgerlink.core.backend import get_backend

    if not isinstance(group_key, (bytes, bytearray)) or len(group_key) != POINT_LEN:
        raise InvalidPoint("group key must be a %d-byte compressed point" % POINT_LEN)
    pk = group_point if group_point is not None else p256.decode_point(bytes(group_key))
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_LEN:
        return False
    r_bytes = bytes(signature[:POINT_LEN])
    if r_bytes[0] not in (2, 3):
        return False
    z = int.from_bytes(signature[POINT_LEN:], "big")
    if z >= N:
        return False
    c = challenge(r_bytes, bytes(group_key), bytes(msg))
    fast = getattr(get_backend(backend), "mul_add_equals", None)
    if fast is not None:
        try:
            verdict = fast(z, (N - c) % N, bytes(group_key), r_bytes)
        except InvalidPoint:
            return False
        if verdict is not None:
            return verdict
    point = p256.mul_add_vartime(z, (N - c) % N, pk)
    return point is not None and p256.encode_point(point, True) == r_bytes
