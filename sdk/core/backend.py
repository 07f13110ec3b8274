"""Choice of crypto backend behind one interface.

``get_backend("portable")`` is the pure-Python core in this package (runs on MicroPython). Other
backends are added with ``register``; ``get_backend()`` returns the first preferred one that loads,
else the portable one. Every backend gives byte-identical results for deterministic operations
(RFC 6979 signatures, ECDH, HKDF, HMAC, AES-CCM).

A backend has: ``name``, ``generate_private_key(rng=None)``, ``public_key(priv, compressed=False)``,
``sign(priv, msg)`` (64-byte r||s), ``verify(pub, msg, sig) -> bool``, ``ecdh(priv, peer_pub)``,
``hkdf(ikm, salt, info, length)``, ``hmac_sha256(key, data)``, ``sha256(data)``,
``ccm_seal(key, nonce, plaintext, aad, tag_len=8)``, ``ccm_open(key, nonce, data, aad, tag_len=8)``.
Optional: ``mul_add_equals(u1, u2, q, r)`` (public points: whether u1*G + u2*Q == R, or None when it
cannot decide), which ``frost.verify`` uses where a backend has it.
"""

_cache = {}


class PortableBackend:
    """The pure-Python core; the reference every other backend must match."""

    name = "portable"

    def generate_private_key(self, rng=None):
        from ledgerlink.core import ecdsa
        return ecdsa.generate_private_key(rng)

    def public_key(self, priv, compressed=False):
        from ledgerlink.core import ecdsa
        return ecdsa.public_key(priv, compressed)

    def sign(self, priv, msg):
        from ledgerlink.core import ecdsa
        return ecdsa.sign(priv, msg)

    def verify(self, pub, msg, sig):
        from ledgerlink.core import ecdsa
        return ecdsa.verify(pub, msg, sig)

    def ecdh(self, priv, peer_pub):
        from ledgerlink.core import ecdh
        return ecdh.shared_secret(priv, peer_pub)

    def hkdf(self, ikm, salt, info, length):
        from ledgerlink.core import kdf
        return kdf.hkdf(ikm, salt, info, length)

    def hmac_sha256(self, key, data):
        from ledgerlink.core import kdf
        return kdf.hmac_sha256(key, data)

    def sha256(self, data):
        import hashlib
        return hashlib.sha256(data).digest()

    def ccm_seal(self, key, nonce, plaintext, aad=b"", tag_len=8):
        from ledgerlink.core import ccm
        return ccm.seal(key, nonce, plaintext, aad, tag_len)

    def ccm_open(self, key, nonce, data, aad=b"", tag_len=8):
        from ledgerlink.core import ccm
        return ccm.open(key, nonce, data, aad, tag_len)


_factories = {"portable": PortableBackend}
_preferred = []


def register(name, factory, preferred=False):
    """Make ``get_backend(name)`` return ``factory()`` (made on first use, ImportError if it cannot load).

    A ``preferred`` backend is tried by ``get_backend()`` before the portable one, in registration order.
    """
    _factories[name] = factory
    if preferred and name not in _preferred:
        _preferred.append(name)


def _load(name):
    factory = _factories.get(name)
    if factory is None:
        raise ValueError("unknown crypto backend %r: registered are %s"
                         % (name, ", ".join(sorted(_factories))))
    return factory()


def get_backend(name=None):
    """Return the backend called ``name``, or the first preferred one that loads when ``name`` is None.

    A backend object passed as ``name`` is returned as it is.
    """
    if name is not None and not isinstance(name, str):
        return name
    if name is None:
        if "default" not in _cache:
            for candidate in _preferred + ["portable"]:
                try:
                    _cache["default"] = get_backend(candidate)
                    break
                except ImportError:
                    continue
        return _cache["default"]
    if name not in _cache:
        _cache[name] = _load(name)
    return _cache[name]
