"""Exceptions raised by the portable core. Every bad input maps to one of these."""


class LedgerlinkError(Exception):
    """Base class of every error ledgerlink raises on purpose."""


class DecodeError(LedgerlinkError):
    """Malformed, truncated, oversized or non-deterministic encoded data."""


class InvalidMessage(LedgerlinkError):
    """Well-formed encoding whose structure or fields are not what the protocol allows."""


class InvalidPoint(LedgerlinkError):
    """An elliptic-curve point that is malformed, off the curve, out of range or at infinity."""


class InvalidScalar(LedgerlinkError):
    """A scalar (private key, nonce, certificate value) outside [1, n-1] or of the wrong length."""


class InvalidSignature(LedgerlinkError):
    """A signature that does not verify, or is malformed."""


class InvalidTag(LedgerlinkError):
    """An AEAD ciphertext whose authentication tag does not match."""


class InvalidProof(LedgerlinkError):
    """A Merkle or sparse-Merkle proof that does not lead to the expected root."""


class InvalidCertificate(LedgerlinkError):
    """An ECQV certificate that is malformed or whose reconstructed key does not check."""


class InvalidKey(LedgerlinkError):
    """A symmetric key, nonce or parameter of the wrong length or kind."""
