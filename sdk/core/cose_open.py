"""Opening COSE_Encrypt0 frames (RFC 9052 / RFC 9053, AES-CCM-16-64-128): decoding and decrypting what a
gateway receives. ``cose`` names these functions too and loads this module when one is first used, so a
board, which only seals frames, never holds them. What is protected against and how it is tested: ``cose``.
"""

from ledgerlink.core.backend import get_backend
from ledgerlink.core.cose import (_ENC0_HEAD, _PROTECTED_CCM, HDR_IV, HDR_PARTIAL_IV, MAX_FRAME, MAX_KID, NONCE_LEN,
                                  TAG_ENCRYPT0, TAG_LEN, Encrypt0, _bstr_at, _decode, _fast_or_full,
                                  nonce_from_partial_iv)
from ledgerlink.core.errors import InvalidKey, InvalidMessage


def _encrypt0_fast(frame):
    if len(frame) > MAX_FRAME or not frame.startswith(_ENC0_HEAD):
        return None
    kid = _bstr_at(frame, len(_ENC0_HEAD))
    if kid is None or kid[1] - kid[0] > MAX_KID or kid[1] >= len(frame) or frame[kid[1]] != HDR_PARTIAL_IV:
        return None
    piv = _bstr_at(frame, kid[1] + 1)
    if piv is None or not 0 < piv[1] - piv[0] <= NONCE_LEN:
        return None
    ct = _bstr_at(frame, piv[1])
    if ct is None or ct[1] != len(frame) or ct[1] - ct[0] < TAG_LEN:
        return None
    return Encrypt0(_PROTECTED_CCM, frame[kid[0]:kid[1]], frame[piv[0]:piv[1]], None, frame[ct[0]:ct[1]])


def decode_encrypt0(frame):
    """Decode a COSE_Encrypt0 frame without decrypting it."""
    return _fast_or_full(frame, _encrypt0_fast, _decode_encrypt0_full)


def _decode_encrypt0_full(frame):
    arr, unprotected, kid = _decode(frame, TAG_ENCRYPT0, 3, _PROTECTED_CCM, "COSE_Encrypt0")
    partial_iv = unprotected.get(HDR_PARTIAL_IV)
    iv = unprotected.get(HDR_IV)
    if (partial_iv is None) == (iv is None):
        raise InvalidMessage("COSE_Encrypt0 needs exactly one of IV and Partial IV")
    if iv is not None and (not isinstance(iv, bytes) or len(iv) != NONCE_LEN):
        raise InvalidMessage("COSE_Encrypt0 IV must be %d bytes" % NONCE_LEN)
    if partial_iv is not None and (not isinstance(partial_iv, bytes) or not 0 < len(partial_iv) <= NONCE_LEN):
        raise InvalidMessage("COSE_Encrypt0 Partial IV must be 1 to %d bytes" % NONCE_LEN)
    ciphertext = arr[2]
    if not isinstance(ciphertext, bytes) or len(ciphertext) < TAG_LEN:
        raise InvalidMessage("COSE_Encrypt0 ciphertext must be a byte string of at least %d bytes" % TAG_LEN)
    return Encrypt0(arr[0], kid, partial_iv, iv, ciphertext)


def decrypt0(frame, key, base_iv=None, external_aad=b"", backend=None):
    """Decrypt a COSE_Encrypt0 frame; return the plaintext. InvalidTag when it was altered."""
    msg = decode_encrypt0(frame)
    if msg.iv is not None:
        nonce = msg.iv
    else:
        if base_iv is None:
            raise InvalidKey("frame carries a Partial IV: the Base IV of the context is needed")
        nonce = nonce_from_partial_iv(base_iv, msg.partial_iv)
    return get_backend(backend).ccm_open(key, nonce, msg.ciphertext, msg.aad(external_aad), TAG_LEN)
