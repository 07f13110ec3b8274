"""ECDSA over P-256 with SHA-256 (FIPS 186-4), deterministic nonces per RFC 6979.

Signatures are 64 bytes r||s (the COSE/IEEE P1363 form); ``sig_to_der``/``sig_from_der`` convert to
and from the DER form with strict decoding (no BER leniency).

Signatures are made canonical: ``s`` is at most n/2 (``canonical_s``). Both (r, s) and (r, n - s)
verify under FIPS 186, so anything that names a signed message by its hash (the gateway names frames by
SHA-256) must take only the canonical one, or a copy re-signed by flipping ``s`` could pre-empt the
original; ``is_canonical`` is that check.

Protects against: nonce reuse or bias (RFC 6979 HMAC-DRBG, no RNG needed to sign); leaking the key
through the nonce multiplication (p256.base_mult is fixed-sequence) or the nonce inversion (Fermat or
blinded); forged or malleable encodings on verify (r, s range checks, strict DER, full point
validation). Tested with Wycheproof (P1363 and DER files) on CPython, under MicroPython, and against
the `cryptography` backend (tests/core/test_ecdsa_ecdh.py, tests/micropython/test_vectors_in_vm.py).
"""

import hashlib

from ledgerlink.core import p256
from ledgerlink.core.errors import InvalidScalar, InvalidSignature

N = p256.N
HALF_N = N // 2


def _default_rng(n):
    from os import urandom
    return urandom(n)


def generate_private_key(rng=None):
    """A fresh private key (32 bytes, 1 <= d < n) from ``rng(n) -> bytes`` (default os.urandom)."""
    draw = rng or _default_rng
    while True:
        candidate = bytes(draw(32))
        if len(candidate) != 32:
            raise InvalidScalar("random source returned the wrong length")
        if 0 < int.from_bytes(candidate, "big") < N:
            return candidate


def public_key(private_key, compressed=False):
    """The SEC 1 public key (65 bytes, or 33 compressed) of a 32-byte private key."""
    return p256.encode_point(p256.base_mult(p256.scalar_from_bytes(private_key)), compressed)


def _bits2int(digest):
    value = int.from_bytes(digest, "big")
    excess = len(digest) * 8 - 256
    if excess > 0:
        value >>= excess
    return value


def _nonces(d, digest):
    """RFC 6979 section 3.2 candidate nonces for key d and a message digest (HMAC from ``kdf``, imported
    here: a board that only verifies never loads it)."""
    from ledgerlink.core.kdf import hmac_sha256

    x = d.to_bytes(32, "big")
    h1 = (_bits2int(digest) % N).to_bytes(32, "big")
    k = bytes(32)
    v = b"\x01" * 32
    k = hmac_sha256(k, v + b"\x00" + x + h1)
    v = hmac_sha256(k, v)
    k = hmac_sha256(k, v + b"\x01" + x + h1)
    v = hmac_sha256(k, v)
    while True:
        v = hmac_sha256(k, v)
        candidate = int.from_bytes(v, "big")
        if 0 < candidate < N:
            yield candidate
        k = hmac_sha256(k, v + b"\x00")
        v = hmac_sha256(k, v)


def _inv_n_secret(k):
    if p256._FAST_INV and p256._urandom is not None:
        blind = int.from_bytes(p256._urandom(32), "big") % (N - 1) + 1
        return pow(k * blind % N, -1, N) * blind % N
    return pow(k, N - 2, N)


def sign_digest(private_key, digest):
    """Sign a message digest; returns 64 bytes r||s."""
    d = p256.scalar_from_bytes(private_key)
    z = _bits2int(digest) % N
    for k in _nonces(d, digest):
        r = p256.base_mult(k)[0] % N
        if r == 0:
            continue
        s = _inv_n_secret(k) * (z + r * d) % N
        if s != 0:
            return r.to_bytes(32, "big") + canonical_s(s).to_bytes(32, "big")


def canonical_s(s):
    """The one of s and n - s that is at most n/2 (s is public: part of the signature)."""
    return N - s if s > HALF_N else s


def is_canonical(signature):
    """True if a 64-byte r||s signature has s <= n/2 (as ``sign`` makes them)."""
    return len(signature) == 64 and int.from_bytes(signature[32:], "big") <= HALF_N


def sign(private_key, message):
    """ES256 signature (64 bytes r||s) over ``message``."""
    return sign_digest(private_key, hashlib.sha256(message).digest())


def verify_digest(public_key_bytes, digest, signature):
    """True if ``signature`` (64 bytes r||s) is valid for the digest; raises InvalidPoint for a bad key."""
    q = p256.decode_point(public_key_bytes)
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    w = pow(s, -1, N) if p256._FAST_INV else pow(s, N - 2, N)
    z = _bits2int(digest) % N
    return p256.mul_add_x_equals(z * w % N, r * w % N, q, r)


def verify(public_key_bytes, message, signature):
    """True if ``signature`` (64 bytes r||s) is a valid ES256 signature of ``message``."""
    return verify_digest(public_key_bytes, hashlib.sha256(message).digest(), signature)


def _der_int(value):
    body = value.to_bytes(32, "big").lstrip(b"\x00") or b"\x00"
    if body[0] & 0x80:
        body = b"\x00" + body
    return b"\x02" + bytes((len(body),)) + body


def sig_to_der(signature):
    """DER SEQUENCE { r INTEGER, s INTEGER } from 64-byte r||s."""
    if len(signature) != 64:
        raise InvalidSignature("raw signature must be 64 bytes")
    body = _der_int(int.from_bytes(signature[:32], "big")) + _der_int(int.from_bytes(signature[32:], "big"))
    return b"\x30" + bytes((len(body),)) + body


def _read_der_int(data, pos):
    if pos + 2 > len(data) or data[pos] != 0x02:
        raise InvalidSignature("DER: expected INTEGER")
    length = data[pos + 1]
    if length & 0x80 or length == 0:
        raise InvalidSignature("DER: bad INTEGER length")
    start = pos + 2
    end = start + length
    if end > len(data):
        raise InvalidSignature("DER: truncated INTEGER")
    body = data[start:end]
    if body[0] & 0x80:
        raise InvalidSignature("DER: negative INTEGER")
    if length > 1 and body[0] == 0 and not body[1] & 0x80:
        raise InvalidSignature("DER: non-minimal INTEGER")
    return int.from_bytes(body, "big"), end


def sig_from_der(der):
    """64-byte r||s from a strict DER signature; raises InvalidSignature on any deviation."""
    if not isinstance(der, (bytes, bytearray)) or len(der) < 8 or der[0] != 0x30:
        raise InvalidSignature("DER: expected SEQUENCE")
    length = der[1]
    if length & 0x80:
        raise InvalidSignature("DER: long-form length not used for P-256 signatures")
    if 2 + length != len(der):
        raise InvalidSignature("DER: length does not match")
    r, pos = _read_der_int(der, 2)
    s, pos = _read_der_int(der, pos)
    if pos != len(der):
        raise InvalidSignature("DER: trailing data")
    if not (0 < r < N and 0 < s < N):
        raise InvalidSignature("DER: r or s out of range")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
