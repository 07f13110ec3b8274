"""Per-session keys from an ECQV session certificate (docs/protocol.md, "Session keys").

The device reconstructs its session private key d_U from the certificate; the gateway extracts Q_U
from the same certificate. Both sides run ECDH between the session key and the gateway's site key and
expand the shared secret with HKDF-SHA256, salted with the certificate hash, so a key is bound to one
certificate, one device and one gateway:

    Z        = ECDH(d_U, Q_GW) = ECDH(d_GW, Q_U)         (x coordinate, 32 bytes)
    okm      = HKDF(ikm=Z, salt=SHA-256(cert), info=cbor(["ledgerlink-session-v1", device_id, gateway_id]),
                    length=29)
    key      = okm[0:16]      (AES-CCM-16-64-128 key)
    base_iv  = okm[16:29]     (13-byte COSE Base IV; the Partial IV is the message sequence number)
    session_id = SHA-256(cert)[0:8]  (the COSE kid of session-mode messages)

Protects against: a gateway or broker that did not take part in the exchange learning the key (ECDH
with validated points), reuse of one key across certificates, devices or gateways (salt and info), and
nonce reuse within a session (per-message Partial IV from the strictly increasing sequence number).
Tested in tests/core/test_session_keys.py: both sides agree; changing any input changes the keys.
"""

import hashlib

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend

KEY_LEN = 16
IV_LEN = 13
SESSION_ID_LEN = 8
INFO_LABEL = "ledgerlink-session-v1"


class SessionKeyMaterial:
    """Key material of one session: ``key`` (16), ``base_iv`` (13), ``session_id`` (8 bytes). It has no methods,
    so a session's keys refer to nothing else in this module and a board that unloads it after the session
    opens frees its code (a method's function would hold the module); its repr shows no key."""


def SessionKeys(key, base_iv, session_id):
    """The ``SessionKeyMaterial`` of one session."""
    keys = SessionKeyMaterial()
    keys.key = key
    keys.base_iv = base_iv
    keys.session_id = session_id
    return keys


def session_id(cert_bytes):
    """The 8-byte session identifier used as COSE kid for a session certificate."""
    return hashlib.sha256(cert_bytes).digest()[:SESSION_ID_LEN]


def derive(own_private, peer_public, cert_bytes, device_id, gateway_id, backend=None):
    """Derive the session keys; both sides call this with their own private key and the peer's public key."""
    crypto = get_backend(backend)
    shared = crypto.ecdh(own_private, peer_public)
    salt = hashlib.sha256(cert_bytes).digest()
    info = cbor.dumps([INFO_LABEL, device_id, gateway_id])
    okm = crypto.hkdf(shared, salt, info, KEY_LEN + IV_LEN)
    return SessionKeys(okm[:KEY_LEN], okm[KEY_LEN:], salt[:SESSION_ID_LEN])
