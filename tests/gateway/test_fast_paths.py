"""The gateway's fast decoders of device frames agree with the strict ones (``cose``, ``cbor``) on any input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor, cose
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.gateway import checks as c


def _mutated(data: st.DataObject, frame: bytes) -> bytes:
    """``frame`` as it is, bit-flipped, truncated, extended, or with one byte replaced."""
    how = data.draw(st.sampled_from(["same", "flip", "cut", "extend", "byte"]))
    if how == "same" or not frame:
        return frame
    pos = data.draw(st.integers(0, len(frame) - 1))
    if how == "flip":
        return frame[:pos] + bytes((frame[pos] ^ (1 << data.draw(st.integers(0, 7))),)) + frame[pos + 1:]
    if how == "cut":
        return frame[:pos]
    if how == "extend":
        return frame + data.draw(st.binary(min_size=1, max_size=3))
    return frame[:pos] + bytes((data.draw(st.integers(0, 255)),)) + frame[pos + 1:]


def _strict(decode, frame: bytes):
    try:
        return decode(frame)
    except LedgerlinkError:
        return None


def _long_head(major: int, n: int) -> bytes:
    """A head of ``n`` that is longer than needed (not deterministic)."""
    return bytes(((major << 5) | 25,)) + n.to_bytes(2, "big")


@settings(max_examples=200, deadline=None)
@given(st.data(), st.one_of(st.none(), st.binary(max_size=20), st.binary(min_size=16, max_size=16)),
       st.binary(max_size=400), st.integers(62, 66), st.booleans(), st.booleans())
def test_sign1_fast_decode_agrees(data: st.DataObject, kid, payload: bytes, sig_len: int, iv: bool, long_head: bool):
    unprotected = {} if kid is None else {cose.HDR_KID: kid}
    if iv:
        unprotected[cose.HDR_PARTIAL_IV] = b"\x01"
    frame = cbor.dumps(cbor.Tag(cose.TAG_SIGN1, [c._PROTECTED_SIGN1, unprotected, payload, bytes(sig_len)]))
    if long_head and kid is not None and len(kid) == 16:
        head = c._bstr_head(len(payload))
        k = frame.index(head + payload, 25)
        frame = frame[:k] + _long_head(2, len(payload)) + frame[k + len(head):]
    frame = _mutated(data, frame)
    fast = c.decode_sign1_fast(frame)
    strict = _strict(cose.decode_sign1, frame)
    if fast is not None:
        assert strict is not None
        assert (fast.protected, fast.kid, fast.payload, fast.signature) == \
               (strict.protected, strict.kid, strict.payload, strict.signature)
        assert all(type(x) is bytes for x in (fast.protected, fast.kid, fast.payload, fast.signature))
    elif strict is not None:
        assert strict.kid is None or len(strict.kid) != 16          # the device encoding is always taken fast


@settings(max_examples=200, deadline=None)
@given(st.data(), st.one_of(st.none(), st.binary(max_size=12), st.binary(min_size=8, max_size=8)),
       st.one_of(st.none(), st.binary(max_size=14)), st.one_of(st.none(), st.binary(max_size=14)),
       st.binary(max_size=300))
def test_encrypt0_fast_decode_agrees(data: st.DataObject, kid, piv, iv, ciphertext: bytes):
    unprotected = {}
    for label, value in ((cose.HDR_KID, kid), (cose.HDR_PARTIAL_IV, piv), (cose.HDR_IV, iv)):
        if value is not None:
            unprotected[label] = value
    frame = _mutated(data, cbor.dumps(cbor.Tag(cose.TAG_ENCRYPT0, [c._PROTECTED_ENC0, unprotected, ciphertext])))
    fast = c.decode_encrypt0_fast(frame)
    strict = _strict(cose.decode_encrypt0, frame)
    if fast is not None:
        assert strict is not None
        assert (fast.protected, fast.kid, fast.partial_iv, fast.iv, fast.ciphertext) == \
               (strict.protected, strict.kid, strict.partial_iv, strict.iv, strict.ciphertext)
    elif strict is not None:
        assert (strict.kid is None or len(strict.kid) != 8 or strict.iv is not None
                or not 1 <= len(strict.partial_iv) <= 4)


def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


MEASUREMENTS = st.one_of(
    st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-2**65, 2**65), st.booleans(), st.binary(max_size=3)),
                    st.one_of(st.integers(-2**70, 2**70), st.floats(), st.text(max_size=10), st.binary(max_size=10),
                              st.booleans(), st.none(), st.lists(st.integers(), max_size=3),
                              st.integers(12, 17).map(_nested)), max_size=4),
    st.integers(), st.lists(st.integers(), max_size=2), st.integers(12, 17).map(_nested))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.binary(min_size=15, max_size=17), st.integers(-1, 2**33), st.integers(-1, 2**64 + 1),
       MEASUREMENTS, st.booleans(), st.sampled_from(["none", "extra", "missing", "long-seq", "long-time"]))
def test_reading_fast_parse_agrees(data: st.DataObject, dev: bytes, seq: int, t: int, meas, text_key: bool,
                                   variant: str):
    reading = {1: dev, 2: seq, 3: t, 4: meas}
    if variant == "extra":
        reading[5] = 0
    elif variant == "missing":
        del reading[3]
    if text_key:
        reading["x"] = reading.pop(1)
    payload = cbor.dumps(reading)
    if variant in ("long-seq", "long-time") and not text_key and len(dev) == 16 and 0 <= seq < 2**16 and 0 <= t < 2**16:
        key = b"\x02" if variant == "long-seq" else b"\x03"
        value = seq if variant == "long-seq" else t
        k = payload.index(key + cbor.dumps(value), 19)
        payload = payload[:k + 1] + _long_head(0, value) + payload[k + 1 + len(cbor.dumps(value)):]
    payload = _mutated(data, payload)
    fast = c._parse_reading_fast(payload)
    try:
        strict = c._parse_reading_strict(payload)
    except c._Refusal as r:
        assert r.code == c.MALFORMED
        strict = None
    if fast is not None:
        assert fast == strict and type(fast[0]) is bytes
        assert c.parse_reading(payload) == fast
    else:
        assert strict is None                                         # every valid reading is taken fast


@pytest.mark.parametrize("depth", range(12, 18))
def test_reading_nesting_limit_is_the_strict_one(depth: int):
    payload = cbor.dumps({1: bytes(16), 2: 1, 3: 5, 4: {"a": _nested(depth)}})
    try:
        strict = c._parse_reading_strict(payload)
    except c._Refusal:
        strict = None
    assert c._parse_reading_fast(payload) == strict


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(min_size=12, max_size=14), st.binary(max_size=14))
def test_aad_and_nonce_agree(protected: bytes, aad: bytes, base_iv: bytes, piv: bytes):
    assert c.enc0_aad(protected, aad) == cose.Encrypt0(protected, None, None, None, b"").aad(aad)
    assert c.sig1_to_be_signed(protected, aad, piv) == cose.Sign1(protected, None, piv, b"").to_be_signed(aad)
    try:
        expected = cose.nonce_from_partial_iv(base_iv, piv)
    except LedgerlinkError as exc:
        with pytest.raises(type(exc)):
            c.partial_iv_nonce(base_iv, piv)
    else:
        assert c.partial_iv_nonce(base_iv, piv) == expected
