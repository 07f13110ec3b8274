"""Schnorr non-interactive zero-knowledge proof of a discrete logarithm on P-256 (RFC 8235, §3.3 and §4).

The prover shows it knows ``x`` with ``A = x*G`` without revealing it (Fiat-Shamir, SHA-256):

    V = v*G                      (v a fresh secret nonce)
    c = SHA-256(G || V || A || UserID || OtherInfo)      each item prefixed by its byte length (4 bytes,
                                                         big-endian, RFC 8235 §3.3); points uncompressed
    r = v - x*c mod n            proof = (V, r)

The verifier checks that A and V are valid points (P-256 has cofactor 1, so ``h*A`` is not infinity
when A is a valid point) and that ``V = r*G + c*A``.

Protects against: a proof made without ``x`` (Schnorr soundness under the discrete logarithm
assumption in the random oracle model); learning ``x`` from proofs (zero knowledge; ``v`` is hedged:
HKDF over ``x``, fresh randomness and the statement, so a weak or repeating RNG never gives two
challenges the same ``v``); a proof moved to another key, user or context (A, UserID and OtherInfo are
in ``c``); invalid or off-curve points (full point validation). ``x`` and ``v`` are multiplied with the
fixed operation sequence of ``p256.base_mult``.
"""

from ledgerlink.core import kdf, p256
from ledgerlink.core.errors import InvalidProof, LedgerlinkError

PROOF_LEN = 65                         # V compressed (33) || r (32)
NONCE_DOMAIN = b"ledgerlink-schnorr-nonce-v1"
_G_BYTES = p256.encode_point(p256.G)


def _item(data):
    return len(data).to_bytes(4, "big") + data


def challenge(v_point, a_point, user_id, other_info):
    """The RFC 8235 challenge c = H(G || V || A || UserID || OtherInfo) as an integer (not reduced)."""
    data = (_item(_G_BYTES) + _item(p256.encode_point(v_point)) + _item(p256.encode_point(a_point))
            + _item(bytes(user_id)) + _item(bytes(other_info)))
    return int.from_bytes(kdf.sha256(data), "big")


def public_point(x):
    """A = x*G for the 32-byte secret ``x``, compressed (33 bytes)."""
    return p256.encode_point(p256.base_mult(p256.scalar_from_bytes(x)), True)


def prove(x, user_id, other_info, rng, a_point=None):
    """The 65-byte proof (V compressed || r) that the caller knows ``x`` (32 bytes) behind A = x*G.

    ``rng(n)`` gives fresh random bytes; ``a_point`` (the affine A) saves one multiplication when known.
    """
    k = p256.scalar_from_bytes(x)
    a = a_point if a_point is not None else p256.base_mult(k)
    seed = kdf.hkdf(bytes(x) + rng(32), NONCE_DOMAIN, _item(bytes(user_id)) + _item(bytes(other_info)), 48)
    v = int.from_bytes(seed, "big") % (p256.N - 1) + 1
    v_point = p256.base_mult(v)
    c = challenge(v_point, a, user_id, other_info)
    r = (v - k * c) % p256.N
    return p256.encode_point(v_point, True) + r.to_bytes(32, "big")


def verify(a_bytes, proof, user_id, other_info):
    """Raise InvalidProof unless ``proof`` shows knowledge of the discrete log of ``a_bytes`` (SEC 1 point)."""
    if not isinstance(proof, (bytes, bytearray)) or len(proof) != PROOF_LEN:
        raise InvalidProof("a Schnorr proof is 65 bytes: V (33) || r (32)")
    try:
        a = p256.decode_point(bytes(a_bytes))
        v_point = p256.decode_point(bytes(proof[:33]))
    except LedgerlinkError:
        raise InvalidProof("proof or public point is not a valid P-256 point") from None
    r = int.from_bytes(proof[33:], "big")
    if r >= p256.N:
        raise InvalidProof("proof response r is not below n")
    c = challenge(v_point, a, user_id, other_info) % p256.N
    if p256.mul_add_vartime(r, c, a) != v_point:
        raise InvalidProof("Schnorr proof does not verify")
