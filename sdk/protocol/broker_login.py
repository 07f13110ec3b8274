"""A device's broker login under its current key, in the portable subset: the one computation the site
and the device both run.

When the ledger records a rotation of a device's key (``tx-rotate-key``), the site gives the device's
broker account (username ``ll-<device id hex>``) the password ``password(site login key, new device public
key)``, and the device computes the same one as ``password(new device private key, site login public key)``:
base64url of HKDF-SHA256 (salt ``LOGIN_SALT``, info the username, ``PASSWORD_BYTES`` bytes, so 32 characters)
over the ECDH secret of the two keys (docs/protocol.md, "Broker accounts and ACLs").

Protects against a password that travels: nothing secret is sent to the device; the broker and an
eavesdropper see two public keys, and the holder of the old device key cannot compute the password of the
new one. The board runs this with the portable ``ecdh`` and ``kdf`` (the backend imports them when it
computes), CPython with its OpenSSL backend; the backends give byte-identical results.
"""

import binascii

from ledgerlink.core.backend import get_backend

LOGIN_SALT = b"ledgerlink-broker-login-v1"
PASSWORD_BYTES = 24
USERNAME_PREFIX = "ll-"


def username(device_id):
    """The broker username of a device (also its MQTT client id)."""
    return USERNAME_PREFIX + bytes(device_id).hex()


def password(own_private, peer_public, user, backend=None):
    """The broker password of account ``user`` under the key pair whose private half is ``own_private``
    and whose other side's public key is ``peer_public`` (SEC 1; the ECDH peer point is fully checked)."""
    be = get_backend(backend)
    secret = be.hkdf(be.ecdh(bytes(own_private), bytes(peer_public)), LOGIN_SALT, user.encode(), PASSWORD_BYTES)
    text = binascii.b2a_base64(secret, newline=False)
    return text.replace(b"+", b"-").replace(b"/", b"_").decode()


def login(device_id, device_private, login_public, backend=None):
    """``{"username", "password"}``: what a device computes after a rotation of its key, with its new private
    key and the site's broker-login public key (its device id stays the one it registered with)."""
    user = username(device_id)
    return {"username": user, "password": password(device_private, login_public, user, backend)}
