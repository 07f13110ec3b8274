"""Fast CPython crypto backends with the interface of ``ledgerlink.core.backend.PortableBackend``.

``CryptographyBackend`` ("cpython") uses `cryptography` (OpenSSL): measured on this project's 2-core
machine it signs (RFC 6979) ~15x, verifies ~5x and seals AES-CCM ~60x faster than pycryptodome
(``python3 -m ledgerlink.tools.bench`` prints the table). ``PycryptodomeBackend`` ("pycryptodome") is an
independent second implementation used to cross-check the others. HKDF and HMAC use the standard
library's C ``hmac``. Results are byte-identical to the portable core (tests/core/test_backends.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Callable

from ledgerlink.core import backend
from ledgerlink.core.errors import InvalidKey, InvalidPoint, InvalidScalar, InvalidTag

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_CCM_TAGS = (4, 6, 8, 10, 12, 14, 16)
PUBLIC_KEY_CACHE = 65536       # decoded public keys kept (least recently used dropped): one per device
CCM_CONTEXT_CACHE = 16384      # AES-CCM contexts kept (the oldest dropped): one per session key in use


def _scalar(priv: bytes) -> int:
    if not isinstance(priv, (bytes, bytearray)) or len(priv) != 32:
        raise InvalidScalar("private key must be 32 bytes")
    d = int.from_bytes(priv, "big")
    if not 0 < d < N:
        raise InvalidScalar("private key out of range [1, n-1]")
    return d


def _random_scalar(rng: Callable[[int], bytes] | None) -> bytes:
    draw = rng or os.urandom
    while True:
        candidate = bytes(draw(32))
        if 0 < int.from_bytes(candidate, "big") < N:
            return candidate


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    if not 0 <= length <= 255 * 32:
        raise InvalidKey("HKDF-SHA256 output length must be at most 8160 bytes")
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _check_ccm(key: bytes, nonce: bytes, tag_len: int) -> None:
    if len(key) not in (16, 24, 32):
        raise InvalidKey("AES key must be 16, 24 or 32 bytes")
    if not 7 <= len(nonce) <= 13:
        raise InvalidKey("CCM nonce must be 7 to 13 bytes")
    if tag_len not in _CCM_TAGS:
        raise InvalidKey("CCM tag length must be one of 4, 6, ..., 16")


class _Common:
    def generate_private_key(self, rng: Callable[[int], bytes] | None = None) -> bytes:
        return _random_scalar(rng)

    def hkdf(self, ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
        return _hkdf(ikm, salt, info, length)

    def hmac_sha256(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    def sha256(self, data: bytes) -> bytes:
        return hashlib.sha256(data).digest()


class CryptographyBackend(_Common):
    """OpenSSL through `cryptography`."""

    name = "cpython"

    def __init__(self) -> None:
        from cryptography.exceptions import InvalidSignature as _Bad
        from cryptography.exceptions import InvalidTag as _BadTag
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import (
            decode_dss_signature, encode_dss_signature)
        from cryptography.hazmat.primitives.ciphers.aead import AESCCM
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        from ledgerlink.core.ecdsa import canonical_s

        self._canonical_s = canonical_s
        self._ec, self._bad, self._bad_tag, self._aesccm = ec, _Bad, _BadTag, AESCCM
        self._decode_sig, self._encode_sig = decode_dss_signature, encode_dss_signature
        self._sign_alg = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
        self._verify_alg = ec.ECDSA(hashes.SHA256())
        self._enc, self._fmt = Encoding, PublicFormat
        self._priv_cache: dict[bytes, object] = {}
        self._pub_cache: dict[bytes, object] = {}
        self._ccm_cache: dict[tuple[bytes, int], object] = {}
        self._prehashed_alg = None

    def _private(self, priv: bytes):
        key = self._priv_cache.get(priv)
        if key is None:
            key = self._ec.derive_private_key(_scalar(priv), self._ec.SECP256R1())
            if len(self._priv_cache) > 256:
                self._priv_cache.clear()
            self._priv_cache[bytes(priv)] = key
        return key

    def _public(self, pub: bytes):
        if type(pub) is not bytes:
            if not isinstance(pub, (bytes, bytearray)):
                raise InvalidPoint("public key must be a 33- or 65-byte SEC 1 point")
            pub = bytes(pub)
        key = self._pub_cache.get(pub)
        if key is None:
            if len(pub) not in (33, 65) or pub[0] not in (2, 3, 4):
                raise InvalidPoint("public key must be a 33- or 65-byte SEC 1 point")
            try:
                key = self._ec.EllipticCurvePublicKey.from_encoded_point(self._ec.SECP256R1(), pub)
            except ValueError as exc:
                raise InvalidPoint("invalid P-256 point: %s" % exc) from None
            if len(self._pub_cache) >= PUBLIC_KEY_CACHE:
                # the least recently used; pop with a default, as gateway threads share this cache
                self._pub_cache.pop(next(iter(self._pub_cache), None), None)
            self._pub_cache[pub] = key
        elif len(self._pub_cache) > PUBLIC_KEY_CACHE // 2:
            self._pub_cache.pop(pub, None)                          # most recently used last
            self._pub_cache[pub] = key
        return key

    def public_key(self, priv: bytes, compressed: bool = False) -> bytes:
        fmt = self._fmt.CompressedPoint if compressed else self._fmt.UncompressedPoint
        return self._private(priv).public_key().public_bytes(self._enc.X962, fmt)

    def sign(self, priv: bytes, msg: bytes) -> bytes:
        r, s = self._decode_sig(self._private(priv).sign(msg, self._sign_alg))
        return r.to_bytes(32, "big") + self._canonical_s(s).to_bytes(32, "big")

    def verify(self, pub: bytes, msg: bytes, sig: bytes) -> bool:
        key = self._public(pub)
        if not isinstance(sig, (bytes, bytearray)) or len(sig) != 64:
            return False
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        if not (0 < r < N and 0 < s < N):
            return False
        try:
            key.verify(self._encode_sig(r, s), msg, self._verify_alg)
        except self._bad:
            return False
        return True

    def ecdh(self, priv: bytes, peer_pub: bytes) -> bytes:
        return self._private(priv).exchange(self._ec.ECDH(), self._public(peer_pub))

    def mul_add_equals(self, u1: int, u2: int, q: bytes, r: bytes) -> bool | None:
        """For public data: whether u1*G + u2*Q == R (SEC 1 points; InvalidPoint if one is not on the
        curve), or None where this check cannot decide exactly and the caller computes it.

        Two ECDSA verifications with a chosen digest and s: x(u1*G + u2*Q) mod n == x(R) fixes the sum up
        to its sign, x((u1 + 1)*G + u2*Q) mod n == x(R + G) fixes the sign (R + G and -R + G differ in
        x). Both are exact when x(R) and x(R + G) lie in [p - n, n), where x mod n has one preimage below
        p; outside that range (probability about 2^-127 for a random R), for u2 = 0 or R = +-G: None.
        """
        from ledgerlink.core.p256 import GX, GY, P

        key = self._public(q)
        if not isinstance(r, (bytes, bytearray)) or len(r) not in (33, 65) or r[0] not in (2, 3, 4):
            raise InvalidPoint("R must be a 33- or 65-byte SEC 1 point")
        try:   # not through _public: R is new for every signature and would only crowd out keys in use
            point = self._ec.EllipticCurvePublicKey.from_encoded_point(self._ec.SECP256R1(), bytes(r))
            numbers = point.public_numbers()
        except ValueError as exc:
            raise InvalidPoint("invalid P-256 point: %s" % exc) from None
        rx, ry = numbers.x, numbers.y
        if u2 % N == 0 or rx == GX:
            return None
        slope = (ry - GY) * pow(rx - GX, -1, P) % P
        sx = (slope * slope - rx - GX) % P
        if not (P - N <= rx < N and P - N <= sx < N):
            return None
        w = pow(u2, -1, N)
        return self._x_check(key, u1, w, rx) and self._x_check(key, u1 + 1, w, sx)

    def _x_check(self, key, u1: int, w: int, r: int) -> bool:
        """x(u1*G + u2*key) mod n == r for w = 1/u2, through ECDSA verification with s = r*w, digest = u1*s."""
        if self._prehashed_alg is None:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
            self._prehashed_alg = self._ec.ECDSA(Prehashed(hashes.SHA256()))
        s = r * w % N
        try:
            key.verify(self._encode_sig(r, s), (u1 * s % N).to_bytes(32, "big"), self._prehashed_alg)
        except self._bad:
            return False
        return True

    def _ccm(self, key: bytes, nonce: bytes, tag_len: int):
        """The AESCCM context of (key, tag length), kept for the session keys in use (a gateway opens
        every frame of a session under one key); the nonce is checked on each call."""
        if type(key) is not bytes:
            key = bytes(key)
        ctx = self._ccm_cache.get((key, tag_len))
        if ctx is None:
            _check_ccm(key, nonce, tag_len)
            if len(self._ccm_cache) >= CCM_CONTEXT_CACHE:
                self._ccm_cache.pop(next(iter(self._ccm_cache), None), None)    # threads share this cache
            ctx = self._ccm_cache[(key, tag_len)] = self._aesccm(key, tag_length=tag_len)
        elif not 7 <= len(nonce) <= 13:
            _check_ccm(key, nonce, tag_len)
        return ctx

    def ccm_seal(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"", tag_len: int = 8) -> bytes:
        return self._ccm(key, nonce, tag_len).encrypt(bytes(nonce), bytes(plaintext), bytes(aad))

    def ccm_open(self, key: bytes, nonce: bytes, data: bytes, aad: bytes = b"", tag_len: int = 8) -> bytes:
        ctx = self._ccm(key, nonce, tag_len)
        if len(data) < tag_len:
            raise InvalidTag("ciphertext shorter than its tag")
        try:
            return ctx.decrypt(bytes(nonce), bytes(data), bytes(aad))
        except self._bad_tag:
            raise InvalidTag("AES-CCM tag does not match") from None


class PycryptodomeBackend(_Common):
    """pycryptodome: an independent implementation for cross-checks."""

    name = "pycryptodome"

    def __init__(self) -> None:
        from Crypto.Cipher import AES
        from Crypto.Hash import SHA256
        from Crypto.Protocol.DH import key_agreement
        from Crypto.PublicKey import ECC
        from Crypto.Signature import DSS

        from ledgerlink.core.ecdsa import canonical_s

        self._canonical_s = canonical_s
        self._aes, self._sha, self._ecc, self._dss, self._agree = AES, SHA256, ECC, DSS, key_agreement

    def _private(self, priv: bytes):
        return self._ecc.construct(curve="P-256", d=_scalar(priv))

    def _public(self, pub: bytes):
        if not isinstance(pub, (bytes, bytearray)) or len(pub) not in (33, 65) or pub[0] not in (2, 3, 4):
            raise InvalidPoint("public key must be a 33- or 65-byte SEC 1 point")
        try:
            return self._ecc.import_key(bytes(pub), curve_name="P-256")
        except ValueError as exc:
            raise InvalidPoint("invalid P-256 point: %s" % exc) from None

    def public_key(self, priv: bytes, compressed: bool = False) -> bytes:
        return self._private(priv).public_key().export_key(format="SEC1", compress=compressed)

    def sign(self, priv: bytes, msg: bytes) -> bytes:
        sig = self._dss.new(self._private(priv), "deterministic-rfc6979").sign(self._sha.new(msg))
        return sig[:32] + self._canonical_s(int.from_bytes(sig[32:], "big")).to_bytes(32, "big")

    def verify(self, pub: bytes, msg: bytes, sig: bytes) -> bool:
        key = self._public(pub)
        if not isinstance(sig, (bytes, bytearray)) or len(sig) != 64:
            return False
        try:
            self._dss.new(key, "fips-186-3").verify(self._sha.new(msg), bytes(sig))
        except ValueError:
            return False
        return True

    def ecdh(self, priv: bytes, peer_pub: bytes) -> bytes:
        peer = self._public(peer_pub)
        try:
            return self._agree(static_priv=self._private(priv), static_pub=peer, kdf=lambda z: z)
        except ValueError as exc:
            raise InvalidPoint("ECDH refused: %s" % exc) from None

    def ccm_seal(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"", tag_len: int = 8) -> bytes:
        _check_ccm(key, nonce, tag_len)
        cipher = self._aes.new(bytes(key), self._aes.MODE_CCM, nonce=bytes(nonce), mac_len=tag_len)
        cipher.update(bytes(aad))
        ct, tag = cipher.encrypt_and_digest(bytes(plaintext))
        return ct + tag

    def ccm_open(self, key: bytes, nonce: bytes, data: bytes, aad: bytes = b"", tag_len: int = 8) -> bytes:
        _check_ccm(key, nonce, tag_len)
        if len(data) < tag_len:
            raise InvalidTag("ciphertext shorter than its tag")
        cipher = self._aes.new(bytes(key), self._aes.MODE_CCM, nonce=bytes(nonce), mac_len=tag_len)
        cipher.update(bytes(aad))
        try:
            return cipher.decrypt_and_verify(bytes(data[:-tag_len]), bytes(data[-tag_len:]))
        except ValueError:
            raise InvalidTag("AES-CCM tag does not match") from None


backend.register("cpython", CryptographyBackend, preferred=True)
backend.register("pycryptodome", PycryptodomeBackend)
