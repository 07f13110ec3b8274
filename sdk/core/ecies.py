"""ECIES on P-256 with HKDF-SHA256 and AES-CCM (the SEC 1 §5.1 / ISO 18033-2 ECIES-KEM shape).

To a recipient key Q_R:

    e random, C1 = e*G (compressed, 33 bytes)
    Z = x(e*Q_R) = x(d_R*C1)                             (ECDH, 32 bytes)
    okm = HKDF-SHA256(ikm = Z, salt = C1, info, L = 29)   key = okm[0:16], nonce = okm[16:29]
    C2 || C3 = AES-CCM(key, nonce, plaintext, aad)        C3 = the 16-byte tag (the MAC)

The same ephemeral ``e`` may serve several recipients and several directions when each use has its own
``info`` (its keys then differ); ``derive`` gives the keys of one use from ``Z``.

Protects against: reading or altering the plaintext without d_R (ECDH with validated points, AEAD tag
checked before anything is returned); moving a ciphertext to another recipient, direction or context
(C1 in the salt, the label in ``info``, the caller's ``aad``); nonce reuse (a fresh ``e`` per message
gives fresh keys; each (Z, info) seals once). Invalid C1 points are refused (InvalidPoint).
"""

from ledgerlink.core import p256
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidKey

C1_LEN = 33
TAG_LEN = 16
KEY_LEN = 16
NONCE_LEN = 13


def ephemeral(rng):
    """A fresh ephemeral key: (e as 32 bytes, C1 = e*G compressed). Keep ``e`` secret, use it once."""
    from ledgerlink.core import ecdsa

    e = ecdsa.generate_private_key(rng)
    return e, p256.encode_point(p256.base_mult(p256.scalar_from_bytes(e)), True)


def shared(own_private, peer_point, backend=None):
    """Z: the sender calls it with (e, Q_R), the recipient with (d_R, C1); raises InvalidPoint."""
    return get_backend(backend).ecdh(own_private, bytes(peer_point))


def derive(z, c1, info, backend=None):
    """(key, nonce) of one use of ``Z``: HKDF-SHA256(Z, salt = C1, info), 16 + 13 bytes."""
    okm = get_backend(backend).hkdf(z, bytes(c1), bytes(info), KEY_LEN + NONCE_LEN)
    return okm[:KEY_LEN], okm[KEY_LEN:]


def seal(keys, plaintext, aad=b"", backend=None):
    """(C2, C3) of ``plaintext`` under ``keys`` = (key, nonce) from ``derive``."""
    out = get_backend(backend).ccm_seal(keys[0], keys[1], plaintext, aad, TAG_LEN)
    return out[:-TAG_LEN], out[-TAG_LEN:]


def open_sealed(keys, c2, c3, aad=b"", backend=None):
    """The plaintext of (C2, C3); raises InvalidTag when anything was altered."""
    if not isinstance(c3, (bytes, bytearray)) or len(c3) != TAG_LEN or not isinstance(c2, (bytes, bytearray)):
        raise InvalidKey("C2 must be bytes and C3 a 16-byte tag")
    return get_backend(backend).ccm_open(keys[0], keys[1], bytes(c2) + bytes(c3), aad, TAG_LEN)


def encrypt(recipient_public, plaintext, info, aad=b"", rng=None, backend=None):
    """(C1, C2, C3) of ``plaintext`` to ``recipient_public`` with a fresh ephemeral key."""
    e, c1 = ephemeral(rng)
    c2, c3 = seal(derive(shared(e, recipient_public, backend), c1, info, backend), plaintext, aad, backend)
    return c1, c2, c3


def decrypt(recipient_private, c1, c2, c3, info, aad=b"", backend=None):
    """The plaintext of (C1, C2, C3) for ``recipient_private``; raises InvalidPoint or InvalidTag."""
    return open_sealed(derive(shared(recipient_private, c1, backend), c1, info, backend), c2, c3, aad, backend)
