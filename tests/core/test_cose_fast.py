"""COSE fast paths (the one deterministic encoding ``sign1``/``encrypt0`` make) agree with the full decoders
on any input, and the Sig_structure, Enc_structure and Partial IV nonce match their CBOR definitions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor, cose
from ledgerlink.core.errors import LedgerlinkError
from tests.mutations import long_head, mutated


def _strict(decode, frame: bytes):
    try:
        return decode(frame)
    except LedgerlinkError:
        return None


@settings(max_examples=200, deadline=None)
@given(st.data(), st.one_of(st.none(), st.binary(max_size=20), st.binary(min_size=16, max_size=16)),
       st.binary(max_size=400), st.integers(62, 66), st.booleans(), st.booleans())
def test_sign1_fast_decode_agrees(data: st.DataObject, kid, payload: bytes, sig_len: int, iv: bool, wide: bool):
    unprotected = {} if kid is None else {cose.HDR_KID: kid}
    if iv:
        unprotected[cose.HDR_PARTIAL_IV] = b"\x01"
    frame = cbor.dumps(cbor.Tag(cose.TAG_SIGN1, [cose._PROTECTED_ES256, unprotected, payload, bytes(sig_len)]))
    if wide and kid is not None and len(kid) == 16:
        head = cbor.head(2, len(payload))
        k = frame.index(head + payload, 25)
        frame = frame[:k] + long_head(2, len(payload)) + frame[k + len(head):]
    frame = mutated(data, frame)
    fast = cose._sign1_fast(frame)
    strict = _strict(cose._decode_sign1_full, frame)
    if fast is not None:
        assert strict is not None
        assert (fast.protected, fast.kid, fast.payload, fast.signature) == \
               (strict.protected, strict.kid, strict.payload, strict.signature)
        assert all(type(x) is bytes for x in (fast.protected, fast.kid, fast.payload, fast.signature))
    elif strict is not None:
        assert strict.kid is None                                   # what sign1() makes with a kid is taken fast


@settings(max_examples=200, deadline=None)
@given(st.data(), st.one_of(st.none(), st.binary(max_size=12), st.binary(min_size=8, max_size=8)),
       st.one_of(st.none(), st.binary(max_size=14)), st.one_of(st.none(), st.binary(max_size=14)),
       st.binary(max_size=300))
def test_encrypt0_fast_decode_agrees(data: st.DataObject, kid, piv, iv, ciphertext: bytes):
    unprotected = {}
    for label, value in ((cose.HDR_KID, kid), (cose.HDR_PARTIAL_IV, piv), (cose.HDR_IV, iv)):
        if value is not None:
            unprotected[label] = value
    frame = mutated(data, cbor.dumps(cbor.Tag(cose.TAG_ENCRYPT0, [cose._PROTECTED_CCM, unprotected, ciphertext])))
    fast = cose._encrypt0_fast(frame)
    strict = _strict(cose._decode_encrypt0_full, frame)
    if fast is not None:
        assert strict is not None
        assert (fast.protected, fast.kid, fast.partial_iv, fast.iv, fast.ciphertext) == \
               (strict.protected, strict.kid, strict.partial_iv, strict.iv, strict.ciphertext)
    elif strict is not None:
        assert strict.kid is None or strict.iv is not None          # encrypt0() with kid and Partial IV: fast


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(min_size=12, max_size=14), st.binary(max_size=14))
def test_structures_and_nonce_match_their_definitions(protected: bytes, aad: bytes, base_iv: bytes, piv: bytes):
    assert cose.Encrypt0(protected, None, None, None, b"").aad(aad) == cbor.dumps(["Encrypt0", protected, aad])
    assert cose.Sign1(protected, None, piv, b"").to_be_signed(aad) == cbor.dumps(["Signature1", protected, aad, piv])
    assert cose.Sign1(protected, None, bytearray(piv), b"").to_be_signed(bytearray(aad)) == \
        cbor.dumps(["Signature1", protected, aad, piv])
    if len(base_iv) == cose.NONCE_LEN and 0 < len(piv) <= cose.NONCE_LEN:
        padded = bytes(cose.NONCE_LEN - len(piv)) + piv
        assert cose.nonce_from_partial_iv(base_iv, piv) == bytes(a ^ b for a, b in zip(base_iv, padded))
    else:
        with pytest.raises(LedgerlinkError):
            cose.nonce_from_partial_iv(base_iv, piv)


@pytest.mark.parametrize("kid", [b"", b"k", bytes(16), bytes(64)])
def test_frames_made_here_take_the_fast_path(kid: bytes):
    signed = cose.sign1(b"payload", bytes(31) + b"\x01", kid, b"aad")
    assert cose._sign1_fast(signed) is not None
    sealed = cose.encrypt0(b"x", bytes(16), b"\x01", bytes(13), kid=kid)
    assert cose._encrypt0_fast(sealed) is not None
    assert cose.decode_sign1(bytearray(signed)).kid == kid
