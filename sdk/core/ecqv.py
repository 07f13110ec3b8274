"""ECQV implicit certificates (SEC 4 v1.0) on P-256 with SHA-256.

Roles: the requester U picks k_U and sends R_U = k_U*G; the CA picks k, forms P_U = R_U + k*G, encodes
the certificate Cert_U (which carries P_U), computes e = Hn(Cert_U) and r = e*k + d_CA mod n. U
reconstructs d_U = e*k_U + r mod n and checks d_U*G == e*P_U + Q_CA; anyone extracts
Q_U = e*P_U + Q_CA from Cert_U and the CA public key.

Hash to integer (pinned): SEC 4 section 2.3 takes the leftmost floor(log2 n) bits of the digest.
For P-256, floor(log2 n) = 255, so e = SHA-256(Cert_U) >> 1. IEEE 1609.2 uses the full digest reduced
mod n instead; ``hash_to_integer(..., convention=FULL_DIGEST)`` gives that value for interoperability
tests only. The shared CAMP vector (../shared/vectors/ecqv) is checked for both conventions.

What this protects against, and how it is tested:
- invalid or malicious points (R_U, P_U, Q_CA) -- every received point is decoded with full validation
  (p256.decode_point), and points at infinity are refused; tests feed off-curve and malformed points.
- a certificate whose reconstructed key does not match (wrong r, altered Cert_U, wrong CA) -- the
  requester checks d_U*G == Q_U and raises InvalidCertificate; tests tamper with each input.
- out-of-range scalars (r, k_U, e) -- refused with InvalidScalar / InvalidCertificate.
Secret scalars (k_U, k, d_CA, d_U) only meet constant-time point multiplication (p256.base_mult).

- a man in the middle swapping the key a session is agreed with -- a session certificate names that
  key (``peer``), so the CA's implicit signature covers it and a swapped key breaks reconstruction;
  tests swap the key in the session response.

Certificates are CBOR arrays (see docs/protocol.md, `ecqv-cert`):
[version, serial, issuer, subject, valid_from, valid_until, usage, P_U (33-byte compressed point)
(, peer: 33-byte compressed point, the key a session certificate's key is agreed with)].
"""

import hashlib

from ledgerlink.core import cbor, p256
from ledgerlink.core.errors import DecodeError, InvalidCertificate, InvalidMessage, InvalidScalar

SEC4 = "sec4"
FULL_DIGEST = "full"

CERT_VERSION = 1
USAGE_SESSION = 1
USAGE_IDENTITY = 2
_MAX_ID = 64


def hash_to_integer(cert_bytes, convention=SEC4):
    """Return e = Hn(Cert_U) as an int, per SEC 4 section 2.3 (default) or the full-digest convention."""
    digest = hashlib.sha256(cert_bytes).digest()
    value = int.from_bytes(digest, "big")
    if convention == SEC4:
        e = value >> 1
    elif convention == FULL_DIGEST:
        e = value % p256.N
    else:
        raise ValueError("unknown hash-to-integer convention: %r" % (convention,))
    if e == 0:
        raise InvalidCertificate("certificate hashes to e = 0")
    return e


def _random_scalar(rng):
    from ledgerlink.core import ecdsa

    return p256.scalar_from_bytes(ecdsa.generate_private_key(rng))


def create_request(rng=None):
    """Start a request: return (k_U as 32 bytes, R_U as a 33-byte compressed point). Keep k_U secret."""
    k_u = _random_scalar(rng)
    return p256.scalar_to_bytes(k_u), p256.encode_point(p256.base_mult(k_u), True)


def issue_raw(request_point, ca_private, make_cert, k=None, rng=None, convention=SEC4):
    """CA side on raw certificate bytes.

    ``make_cert(p_u_compressed) -> cert_bytes`` builds Cert_U around P_U. Returns
    (cert_bytes, r as 32 bytes, P_U point). ``k`` (int) is for known-answer tests only.
    """
    r_u = p256.decode_point(request_point)
    d_ca = p256.scalar_from_bytes(ca_private)
    if k is None:
        k = _random_scalar(rng)
    elif not 0 < k < p256.N:
        raise InvalidScalar("CA nonce k out of range")
    p_u = p256.add(r_u, p256.base_mult(k))
    cert_bytes = make_cert(p256.encode_point(p_u, True))
    e = hash_to_integer(cert_bytes, convention)
    r = (e * k + d_ca) % p256.N
    if r == 0:
        raise InvalidCertificate("r = 0; issue again with a fresh k")
    return cert_bytes, p256.scalar_to_bytes(r), p_u


def public_key_raw(cert_bytes, p_u, ca_public, convention=SEC4):
    """Extract Q_U = e*P_U + Q_CA (public data, variable time). Returns an affine point."""
    q_ca = p256.decode_point(ca_public) if isinstance(ca_public, (bytes, bytearray)) else ca_public
    e = hash_to_integer(cert_bytes, convention)
    q_u = p256.add_vartime(p256.mul_vartime(e, p_u), q_ca)
    if q_u is None:
        raise InvalidCertificate("extracted public key is the point at infinity")
    return q_u


def reconstruct_raw(request_secret, r, cert_bytes, p_u, ca_public, convention=SEC4):
    """Requester side: return (d_U as 32 bytes, Q_U point) after checking d_U*G == Q_U."""
    k_u = p256.scalar_from_bytes(request_secret)
    if len(r) != 32:
        raise InvalidCertificate("r must be 32 bytes")
    r_int = int.from_bytes(r, "big")
    if not 0 < r_int < p256.N:
        raise InvalidCertificate("r out of range")
    e = hash_to_integer(cert_bytes, convention)
    d_u = (e * k_u + r_int) % p256.N
    if d_u == 0:
        raise InvalidCertificate("reconstructed private key is zero")
    q_u = public_key_raw(cert_bytes, p_u, ca_public, convention)
    if p256.base_mult(d_u) != q_u:
        raise InvalidCertificate("reconstructed private key does not match the certificate")
    return p256.scalar_to_bytes(d_u), q_u


class ImplicitCert:
    """A ledgerlink implicit certificate; ``encode()`` gives the exact bytes that are hashed."""

    def __init__(self, serial, issuer, subject, valid_from, valid_until, usage, p_u, peer=None):
        self.serial = serial
        self.issuer = issuer
        self.subject = subject
        self.valid_from = valid_from
        self.valid_until = valid_until
        self.usage = usage
        self.p_u = p_u
        self.peer = peer

    def encode(self):
        items = [CERT_VERSION, self.serial, self.issuer, self.subject, self.valid_from, self.valid_until,
                 self.usage, p256.encode_point(self.p_u, True)]
        if self.peer is not None:
            items.append(p256.encode_point(self.peer, True))
        return cbor.dumps(items)

    def hash(self):
        return hashlib.sha256(self.encode()).digest()

    def valid_at(self, now_s):
        return self.valid_from <= now_s < self.valid_until

    def __eq__(self, other):
        return isinstance(other, ImplicitCert) and self.encode() == other.encode()

    def __repr__(self):
        return "ImplicitCert(serial=%s, subject=%s, usage=%d, valid=[%d, %d))" % (
            self.serial.hex(), self.subject.hex(), self.usage, self.valid_from, self.valid_until)


def decode_cert(data):
    """Parse and validate certificate bytes; P_U is fully validated. Raises DecodeError/InvalidMessage."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > 512:
        raise DecodeError("certificate must be at most 512 bytes")
    items = cbor.loads(bytes(data))
    if not isinstance(items, list) or len(items) not in (8, 9):
        raise InvalidMessage("certificate must be an array of 8 or 9 items")
    version, serial, issuer, subject, valid_from, valid_until, usage, p_u = items[:8]
    peer = items[8] if len(items) == 9 else None
    if version != CERT_VERSION:
        raise InvalidMessage("unsupported certificate version %r" % (version,))
    for name, value in (("serial", serial), ("issuer", issuer), ("subject", subject)):
        if not isinstance(value, bytes) or not 0 < len(value) <= _MAX_ID:
            raise InvalidMessage("certificate %s must be 1..%d bytes" % (name, _MAX_ID))
    for name, value in (("valid_from", valid_from), ("valid_until", valid_until), ("usage", usage)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidMessage("certificate %s must be an unsigned integer" % name)
    if valid_until <= valid_from:
        raise InvalidMessage("certificate validity period is empty")
    if not isinstance(p_u, bytes) or len(p_u) != 33:
        raise InvalidMessage("certificate P_U must be a 33-byte compressed point")
    if peer is not None and (not isinstance(peer, bytes) or len(peer) != 33):
        raise InvalidMessage("certificate peer key must be a 33-byte compressed point")
    return ImplicitCert(serial, issuer, subject, valid_from, valid_until, usage, p256.decode_point(p_u),
                        None if peer is None else p256.decode_point(peer))


def issue(request_point, ca_private, serial, issuer, subject, valid_from, valid_until,
          usage=USAGE_SESSION, rng=None, peer=None):
    """CA side: return (cert_bytes, r as 32 bytes) for a request point R_U (33 or 65 bytes).

    ``peer`` (33 or 65 bytes) is the key a session certificate's key is agreed with (the gateway's
    site key); it goes into the certificate, so the CA vouches for it."""
    peer_point = None if peer is None else p256.decode_point(peer)

    def make_cert(p_u_bytes):
        return ImplicitCert(serial, issuer, subject, valid_from, valid_until, usage,
                            p256.decode_point(p_u_bytes), peer_point).encode()

    cert_bytes, r, _ = issue_raw(request_point, ca_private, make_cert, rng=rng)
    return cert_bytes, r


def public_key(cert_bytes, ca_public):
    """Anyone: the certified public key Q_U (65-byte uncompressed) from certificate bytes and Q_CA."""
    cert = decode_cert(cert_bytes)
    return p256.encode_point(public_key_raw(cert_bytes, cert.p_u, ca_public))


def reconstruct(request_secret, cert_bytes, r, ca_public):
    """Requester: return (d_U 32 bytes, Q_U 65 bytes); raises InvalidCertificate if they do not match."""
    cert = decode_cert(cert_bytes)
    d_u, q_u = reconstruct_raw(request_secret, r, cert_bytes, cert.p_u, ca_public)
    return d_u, p256.encode_point(q_u)
