"""SHA-256, HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) over ``hashlib.sha256``.

HMAC is written out here because MicroPython has no ``hmac`` module; only ``hashlib.sha256`` with
``update``/``digest`` is used. ``constant_time_equal`` compares secrets (MACs, tags) without an early
exit, so the time taken does not reveal how many leading bytes matched.

Protects against: forgery of keyed digests (HMAC), use of raw or low-entropy shared secrets as keys
(HKDF extract-then-expand), and timing attacks on MAC comparison. Tested in tests/core/test_kdf.py
with the RFC 5869 test cases, the Wycheproof HMAC-SHA256 and HKDF-SHA256 vectors, and a property
comparison against CPython's ``hmac`` and ``cryptography``'s HKDF.
"""

import hashlib

from ledgerlink.core.errors import InvalidKey

HASH_LEN = 32
BLOCK_LEN = 64
MAX_OKM_LEN = 255 * HASH_LEN
_IPAD = int.from_bytes(b"\x36" * BLOCK_LEN, "big")
_OPAD = int.from_bytes(b"\x5c" * BLOCK_LEN, "big")


def _as_bytes(value, what):
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise InvalidKey("%s must be bytes" % what)


def sha256(data):
    """SHA-256 digest (32 bytes) of ``data``."""
    return hashlib.sha256(_as_bytes(data, "data")).digest()


def hmac_sha256(key, data):
    """HMAC-SHA256 of ``data`` under ``key`` (any length; keys over 64 bytes are hashed first)."""
    key = _as_bytes(key, "key")
    data = _as_bytes(data, "data")
    if len(key) > BLOCK_LEN:
        key = hashlib.sha256(key).digest()
    padded = int.from_bytes(key + bytes(BLOCK_LEN - len(key)), "big")
    inner_pad = (padded ^ _IPAD).to_bytes(BLOCK_LEN, "big")
    outer_pad = (padded ^ _OPAD).to_bytes(BLOCK_LEN, "big")
    inner = hashlib.sha256(inner_pad)
    inner.update(data)
    outer = hashlib.sha256(outer_pad)
    outer.update(inner.digest())
    return outer.digest()


def hkdf_extract(salt, ikm):
    """HKDF-Extract: the 32-byte pseudorandom key; an empty or None salt means 32 zero bytes."""
    if salt is None or len(salt) == 0:
        salt = bytes(HASH_LEN)
    return hmac_sha256(salt, ikm)


def hkdf_expand(prk, info, length):
    """HKDF-Expand ``prk`` with ``info`` to ``length`` bytes (0 <= length <= 8160, else InvalidKey)."""
    if not isinstance(length, int) or length < 0 or length > MAX_OKM_LEN:
        raise InvalidKey("HKDF output length must be between 0 and 8160 bytes")
    prk = _as_bytes(prk, "prk")
    info = b"" if info is None else _as_bytes(info, "info")
    okm = bytearray()
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac_sha256(prk, block + info + bytes((counter,)))
        okm.extend(block)
        counter += 1
    return bytes(okm[:length])


def hkdf(ikm, salt, info, length):
    """HKDF-SHA256 (extract then expand): ``length`` bytes of key material from ``ikm``."""
    if not isinstance(length, int) or length < 0 or length > MAX_OKM_LEN:
        raise InvalidKey("HKDF output length must be between 0 and 8160 bytes")
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


def constant_time_equal(a, b):
    """True when ``a`` and ``b`` are equal; the time depends only on the lengths, not the contents."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
