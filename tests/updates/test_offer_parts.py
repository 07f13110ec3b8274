"""An offer is checked one part at a time (``update_check._offer_parts``): it accepts exactly the offers a decode
of the whole offer accepts, with the same parts, so the checks and their refusals stay those of before."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import update_check as uc
from ledgerlink.protocol.codes import IMAGE_CONFIGURATION
from tests.updates.site import DEVICE_CLASS, ReleaseSite


def whole_offer(data):
    """The offer's parts as a decode of the whole offer gives them; None when it is refused as malformed."""
    try:
        if len(data) > uc.OFFER_MAX:
            return None
        offer = cbor.loads(data, max_depth=14)
    except (LedgerlinkError, TypeError):
        return None
    if not isinstance(offer, dict) or sorted(offer) != [1, 2, 3] or not isinstance(offer[1], bytes):
        return None
    return [offer[1], offer[2], offer[3]]


def by_parts(data):
    try:
        parts = uc._offer_parts(data)
    except uc.UpdateRefused as exc:
        assert exc.code == uc.UPDATE_MALFORMED
        return None
    return [uc._part(data, where) for where in parts]


@pytest.fixture(scope="module")
def site():
    return ReleaseSite()


@pytest.fixture(scope="module")
def offer(site):
    return site.release(b'{"a": 1}', IMAGE_CONFIGURATION, 2)


def test_the_parts_of_an_offer_are_its_manifest_and_proofs(site, offer):
    assert by_parts(offer) == whole_offer(offer) is not None
    assert uc.check_offer(offer, site.chain_id, site.keys, DEVICE_CLASS, "cpython").manifest.sequence == 2
    assert uc.check_offer(bytearray(offer), site.chain_id, site.keys, DEVICE_CLASS, "cpython").manifest.sequence == 2


values = st.recursive(st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.binary(max_size=8)
                      | st.text(max_size=4),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.integers(0, 9), inner, max_size=3),
                      max_leaves=40)


def nested(depth):
    value = b"x"
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_mutated_offer_is_refused_exactly_when_the_whole_decode_refuses_it(offer, data):
    raw = bytearray(offer)
    kind = data.draw(st.sampled_from(["flip", "cut", "insert", "append"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[at] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        del raw[at:at + data.draw(st.integers(1, 8))]
    elif kind == "insert":
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    else:
        raw += data.draw(st.binary(min_size=1, max_size=4))
    assert by_parts(bytes(raw)) == whole_offer(bytes(raw))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.integers(0, 4), values, max_size=4), st.binary(max_size=3))
def test_any_cbor_is_taken_apart_as_the_whole_decode_takes_it(offer_map, tail):
    raw = cbor.dumps(offer_map) + tail
    assert by_parts(raw) == whole_offer(raw)


@pytest.mark.parametrize("depth", [12, 13, 14, 15])
def test_nesting_is_bounded_as_for_the_whole_offer(depth):
    raw = cbor.dumps({1: b"m", 2: nested(depth), 3: {}})
    assert by_parts(raw) == whole_offer(raw)
    assert (by_parts(raw) is None) == (depth >= 14)


def test_what_is_not_an_offer_is_malformed():
    for raw in (None, "text", b"", b"\xa3", bytes(uc.OFFER_MAX + 1), cbor.dumps({1: "m", 2: {}, 3: {}}),
                cbor.dumps({1: b"m", 2: {}}), cbor.dumps({1: b"m", 2: {}, 3: {}, 4: {}})):
        with pytest.raises(uc.UpdateRefused) as refused:
            uc._offer_parts(raw)
        assert refused.value.code == uc.UPDATE_MALFORMED
