"""COSE_Sign1 (ES256) and COSE_Encrypt0 (AES-CCM-16-64-128) per RFC 9052 / RFC 9053.

Sign1: ``#6.18([protected = bstr .cbor {1: -7}, {4: kid}, payload, signature (64 bytes r||s)])``,
signed over ``["Signature1", protected, external_aad, payload]``.
Encrypt0: ``#6.16([protected = bstr .cbor {1: 10}, {4: kid, 6: partial_iv} / {4: kid, 5: iv}, ciphertext])``,
with AAD ``["Encrypt0", protected, external_aad]``. With a Partial IV the nonce is the context Base IV
XOR the Partial IV left-padded to 13 bytes (RFC 9052 section 3.1).

Protects against: altered payload, headers or topic (external AAD binds the MQTT topic); algorithm
substitution (the protected header must be exactly {1: alg} for the expected alg); oversized frames
(``MAX_FRAME``) and malformed structure (DecodeError / InvalidMessage, never a crash). Tested against
pycose in both directions (tests/core/test_cose.py) and with tampering and bad-structure cases.
"""

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import DecodeError, InvalidKey, InvalidMessage, InvalidSignature

TAG_SIGN1 = 18
TAG_ENCRYPT0 = 16
ALG_ES256 = -7
ALG_AES_CCM_16_64_128 = 10
HDR_ALG = 1
HDR_KID = 4
HDR_IV = 5
HDR_PARTIAL_IV = 6
NONCE_LEN = 13
TAG_LEN = 8
KEY_LEN = 16
MAX_FRAME = 4096
MAX_KID = 64

_PROTECTED_ES256 = cbor.dumps({HDR_ALG: ALG_ES256})
_PROTECTED_CCM = cbor.dumps({HDR_ALG: ALG_AES_CCM_16_64_128})
_SIG1_CONTEXT = b"\x84" + cbor.dumps("Signature1")
_ENC0_CONTEXT = b"\x83" + cbor.dumps("Encrypt0")
# tag 18, [protected, {4: kid ...  and  tag 16, [protected, {4: kid, 6: Partial IV}, ...
_SIGN1_HEAD = b"\xd2\x84" + cbor.head(2, len(_PROTECTED_ES256)) + _PROTECTED_ES256 + b"\xa1\x04"
_ENC0_HEAD = b"\xd0\x83" + cbor.head(2, len(_PROTECTED_CCM)) + _PROTECTED_CCM + b"\xa2\x04"


def _bstr(data):
    """The CBOR byte string of ``data`` (bytes or bytearray)."""
    return cbor.head(2, len(data)) + bytes(data)


class Sign1:
    """A decoded, not yet verified COSE_Sign1: ``protected`` (bytes), ``kid``, ``payload``, ``signature``."""

    def __init__(self, protected, kid, payload, signature):
        self.protected = protected
        self.kid = kid
        self.payload = payload
        self.signature = signature

    def to_be_signed(self, external_aad=b""):
        """The CBOR of ["Signature1", protected, external_aad, payload]."""
        return _SIG1_CONTEXT + _bstr(self.protected) + _bstr(external_aad) + _bstr(self.payload)


class Encrypt0:
    """A decoded COSE_Encrypt0: ``protected``, ``kid``, ``partial_iv`` or ``iv``, ``ciphertext``."""

    def __init__(self, protected, kid, partial_iv, iv, ciphertext):
        self.protected = protected
        self.kid = kid
        self.partial_iv = partial_iv
        self.iv = iv
        self.ciphertext = ciphertext

    def aad(self, external_aad=b""):
        """The CBOR of ["Encrypt0", protected, external_aad]."""
        return _ENC0_CONTEXT + _bstr(self.protected) + _bstr(external_aad)


def _bstr_at(data, pos):
    """(start, end) of the content of the shortest-form byte string of at most 65535 bytes at ``data[pos]``,
    or None."""
    if pos >= len(data):
        return None
    b = data[pos]
    if 0x40 <= b < 0x58:
        start = pos + 1
        n = b - 0x40
    elif b == 0x58 and pos + 2 <= len(data) and data[pos + 1] >= 24:
        start = pos + 2
        n = data[pos + 1]
    elif b == 0x59 and pos + 3 <= len(data) and data[pos + 1]:
        start = pos + 3
        n = (data[pos + 1] << 8) | data[pos + 2]
    else:
        return None
    return (start, start + n) if start + n <= len(data) else None


# Fast paths for the one deterministic encoding that sign1() and encrypt0() produce: each returns what
# the full decoder returns for such a frame, and None for anything else (the full decoder then accepts
# or refuses it), so both paths accept exactly the same frames.

def _sign1_fast(frame):
    if len(frame) > MAX_FRAME or not frame.startswith(_SIGN1_HEAD):
        return None
    kid = _bstr_at(frame, len(_SIGN1_HEAD))
    if kid is None or kid[1] - kid[0] > MAX_KID:
        return None
    payload = _bstr_at(frame, kid[1])
    if payload is None:
        return None
    end = payload[1]
    if len(frame) != end + 66 or frame[end] != 0x58 or frame[end + 1] != 0x40:
        return None
    return Sign1(_PROTECTED_ES256, frame[kid[0]:kid[1]], frame[payload[0]:end], frame[end + 2:])


def _decode(frame, tag, length, protected_expected, what):
    if not isinstance(frame, (bytes, bytearray)):
        raise InvalidMessage("%s must be bytes" % what)
    if len(frame) > MAX_FRAME:
        raise InvalidMessage("%s of %d bytes exceeds the %d-byte limit" % (what, len(frame), MAX_FRAME))
    obj = cbor.loads(frame, max_depth=8, max_size=MAX_FRAME)
    if not isinstance(obj, cbor.Tag) or obj.tag != tag:
        raise InvalidMessage("%s must carry CBOR tag %d" % (what, tag))
    arr = obj.value
    if not isinstance(arr, list) or len(arr) != length:
        raise InvalidMessage("%s must be an array of %d items" % (what, length))
    protected, unprotected = arr[0], arr[1]
    if not isinstance(protected, bytes):
        raise InvalidMessage("%s protected header must be a byte string" % what)
    if protected != protected_expected:
        try:
            header = cbor.loads(protected, max_depth=4)
        except DecodeError:
            raise InvalidMessage("%s protected header is not CBOR" % what)
        if not isinstance(header, dict) or HDR_ALG not in header:
            raise InvalidMessage("%s protected header has no algorithm" % what)
        raise InvalidMessage("%s algorithm %r is not the expected one" % (what, header[HDR_ALG]))
    if not isinstance(unprotected, dict):
        raise InvalidMessage("%s unprotected header must be a map" % what)
    for label in unprotected:
        if label not in (HDR_KID, HDR_IV, HDR_PARTIAL_IV):
            raise InvalidMessage("%s unprotected header label %r is not allowed" % (what, label))
    kid = unprotected.get(HDR_KID)
    if kid is not None and (not isinstance(kid, bytes) or len(kid) > MAX_KID):
        raise InvalidMessage("%s kid must be a byte string of at most %d bytes" % (what, MAX_KID))
    return arr, unprotected, kid


def _fast_or_full(frame, fast, full):
    msg = fast(frame) if type(frame) is bytes else None
    return msg if msg is not None else full(frame)


def decode_sign1(frame):
    """Decode a COSE_Sign1 frame without verifying it (e.g. to look up the key by kid)."""
    return _fast_or_full(frame, _sign1_fast, _decode_sign1_full)


def _decode_sign1_full(frame):
    arr, unprotected, kid = _decode(frame, TAG_SIGN1, 4, _PROTECTED_ES256, "COSE_Sign1")
    if HDR_IV in unprotected or HDR_PARTIAL_IV in unprotected:
        raise InvalidMessage("COSE_Sign1 must not carry an IV")
    payload, signature = arr[2], arr[3]
    if not isinstance(payload, bytes):
        raise InvalidMessage("COSE_Sign1 payload must be a byte string (detached payloads are not used)")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise InvalidMessage("COSE_Sign1 ES256 signature must be 64 bytes")
    return Sign1(arr[0], kid, payload, signature)


def sign1_kid(frame):
    """The kid of a COSE_Sign1 frame (not verified), or None."""
    return decode_sign1(frame).kid


def sign1(payload, private_key, kid=None, external_aad=b"", backend=None):
    """Make a tagged COSE_Sign1 (ES256) over ``payload`` bound to ``external_aad``."""
    if not isinstance(payload, (bytes, bytearray)):
        raise InvalidMessage("payload must be bytes")
    msg = Sign1(_PROTECTED_ES256, kid, bytes(payload), b"")
    signature = get_backend(backend).sign(private_key, msg.to_be_signed(external_aad))
    unprotected = {} if kid is None else {HDR_KID: bytes(kid)}
    frame = cbor.dumps(cbor.Tag(TAG_SIGN1, [_PROTECTED_ES256, unprotected, bytes(payload), signature]))
    if len(frame) > MAX_FRAME:
        raise InvalidMessage("COSE_Sign1 of %d bytes exceeds the %d-byte limit" % (len(frame), MAX_FRAME))
    return frame


def verify_sign1(frame, public_key, external_aad=b"", backend=None):
    """Verify a COSE_Sign1 frame with ``public_key`` (SEC 1 bytes); return the payload.

    Raises DecodeError / InvalidMessage for malformed frames and InvalidSignature for a bad signature.
    """
    msg = decode_sign1(frame)
    if not get_backend(backend).verify(public_key, msg.to_be_signed(external_aad), msg.signature):
        raise InvalidSignature("COSE_Sign1 signature does not verify")
    return msg.payload


def nonce_from_partial_iv(base_iv, partial_iv):
    """RFC 9052 section 3.1: Base IV XOR the Partial IV left-padded to the Base IV length."""
    if len(base_iv) != NONCE_LEN:
        raise InvalidKey("Base IV must be %d bytes" % NONCE_LEN)
    if not isinstance(partial_iv, (bytes, bytearray)) or not 0 < len(partial_iv) <= NONCE_LEN:
        raise InvalidMessage("Partial IV must be 1 to %d bytes" % NONCE_LEN)
    return (int.from_bytes(bytes(base_iv), "big") ^ int.from_bytes(bytes(partial_iv), "big")).to_bytes(NONCE_LEN, "big")


def encrypt0(plaintext, key, partial_iv=None, base_iv=None, iv=None, kid=None, external_aad=b"",
             backend=None):
    """Make a tagged COSE_Encrypt0 with AES-CCM-16-64-128.

    Give either ``partial_iv`` and ``base_iv`` (the nonce is derived; only the Partial IV is sent) or a
    full 13-byte ``iv`` (sent). Never reuse a nonce under one key.
    """
    if len(key) != KEY_LEN:
        raise InvalidKey("AES-CCM-16-64-128 key must be 16 bytes")
    if iv is not None:
        if partial_iv is not None or len(iv) != NONCE_LEN:
            raise InvalidKey("give a 13-byte IV or a Partial IV with a Base IV, not both")
        nonce = bytes(iv)
        unprotected = {HDR_IV: nonce}
    else:
        if partial_iv is None or base_iv is None:
            raise InvalidKey("encrypt0 needs partial_iv and base_iv, or iv")
        nonce = nonce_from_partial_iv(base_iv, partial_iv)
        unprotected = {HDR_PARTIAL_IV: bytes(partial_iv)}
    if kid is not None:
        unprotected[HDR_KID] = bytes(kid)
    msg = Encrypt0(_PROTECTED_CCM, kid, partial_iv, iv, b"")
    ciphertext = get_backend(backend).ccm_seal(key, nonce, bytes(plaintext), msg.aad(external_aad), TAG_LEN)
    frame = cbor.dumps(cbor.Tag(TAG_ENCRYPT0, [_PROTECTED_CCM, unprotected, ciphertext]))
    if len(frame) > MAX_FRAME:
        raise InvalidMessage("COSE_Encrypt0 of %d bytes exceeds the %d-byte limit" % (len(frame), MAX_FRAME))
    return frame


_OPEN = ("decode_encrypt0", "decrypt0", "_encrypt0_fast", "_decode_encrypt0_full")


def __getattr__(name):
    """Decoding and decrypting COSE_Encrypt0 frames (``cose_open``, what a gateway does with them), loaded
    when first named: a board only seals them."""
    if name in _OPEN:
        from ledgerlink.core import cose_open

        value = globals()[name] = getattr(cose_open, name)     # named directly from now on
        return value
    raise AttributeError(name)
