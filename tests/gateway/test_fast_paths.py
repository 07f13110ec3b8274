"""The gateway's fast reading parser agrees with the strict one (``cbor``) on any input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor
from ledgerlink.gateway import checks as c
from tests.mutations import long_head, mutated


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
        payload = payload[:k + 1] + long_head(0, value) + payload[k + 1 + len(cbor.dumps(value)):]
    payload = mutated(data, payload)
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


@pytest.mark.parametrize("field,value", [(3, 2**64), (3, 2**70), (2, 2**64)])
def test_a_bignum_seq_or_time_is_not_a_uint(field: int, value: int):
    """``time-ms`` and ``seq`` are CDDL ``uint`` (CBOR major type 0): a bignum (tag 2) is malformed."""
    reading = {1: bytes(16), 2: 7, 3: 5, 4: {}}
    reading[field] = value
    payload = cbor.dumps(reading)
    assert c._parse_reading_fast(payload) is None
    with pytest.raises(c._Refusal) as refused:
        c.parse_reading(payload)
    assert refused.value.code == c.MALFORMED
    reading[field] = 2**64 - 1 if field == 3 else 7
    assert c.parse_reading(cbor.dumps(reading))[field - 1] == reading[field]
