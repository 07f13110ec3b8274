"""ECDH on P-256 (SEC 1 section 3.3.1): the shared secret is the x coordinate of d*Q.

Protects against invalid-curve and small-subgroup attacks (the peer point is fully validated: range,
on-curve, not infinity; P-256 has cofactor 1) and against leaking d (constant-sequence p256.mult).
Tested with Wycheproof ECDH (SEC 1 point and SubjectPublicKeyInfo forms) in tests/core/test_ecdsa_ecdh.py.
"""

from ledgerlink.core import p256
from ledgerlink.core.errors import InvalidPoint

# DER prefix of SubjectPublicKeyInfo for id-ecPublicKey with namedCurve prime256v1.
_SPKI_ALG = bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107")


def shared_secret(private_key, peer_public_key):
    """32-byte shared secret from our 32-byte private key and the peer's SEC 1 public key."""
    d = p256.scalar_from_bytes(private_key)
    q = p256.decode_point(peer_public_key)
    z = p256.mult(d, q)
    if z is None:
        raise InvalidPoint("shared point is infinity")
    return z[0].to_bytes(32, "big")


def public_key_from_spki(der):
    """The SEC 1 point inside a DER SubjectPublicKeyInfo for a named-curve P-256 key (strict)."""
    if not isinstance(der, (bytes, bytearray)) or len(der) < 4 or der[0] != 0x30:
        raise InvalidPoint("SPKI: expected SEQUENCE")
    if der[1] & 0x80 or der[1] + 2 != len(der):
        raise InvalidPoint("SPKI: bad length")
    if der[2:2 + len(_SPKI_ALG)] != _SPKI_ALG:
        raise InvalidPoint("SPKI: not an id-ecPublicKey on prime256v1")
    pos = 2 + len(_SPKI_ALG)
    if pos + 3 > len(der) or der[pos] != 0x03 or der[pos + 1] & 0x80:
        raise InvalidPoint("SPKI: expected BIT STRING")
    if pos + 2 + der[pos + 1] != len(der) or der[pos + 2] != 0:
        raise InvalidPoint("SPKI: bad BIT STRING")
    return bytes(der[pos + 3:])
