"""Signed republish: a verified reading carries the gateway's group signature and inclusion proof."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.gateway import republish
from tests.access.conftest import SITE, Client, now_ms

CRYPTO = get_backend("cpython")
KEY = CRYPTO.generate_private_key()
PUB = CRYPTO.public_key(KEY, True)
GW = hashlib.sha256(PUB).digest()[:16]


def _readings(n: int) -> list[bytes]:
    return [cbor.dumps({1: bytes([i]) * 16, 2: i + 1, 3: 1000 + i, 4: {"t": i}, 5: hashlib.sha256(bytes([i])).digest(),
                        6: GW.hex()}) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64])
def test_each_reading_of_a_group_verifies(n):
    readings = _readings(n)
    for plain, signed in zip(readings, republish.sign_group(readings, KEY, GW, SITE)):
        assert cbor.dumps(republish.verify(signed, SITE, {GW: PUB})) == plain


def test_wrong_site_key_or_moved_proof_refused():
    a, b = republish.sign_group(_readings(2), KEY, GW, SITE)
    with pytest.raises(republish.Unverified):
        republish.verify(a, "other-site", {GW: PUB})
    other = CRYPTO.generate_private_key()
    with pytest.raises(republish.Unverified, match="not a trusted gateway"):
        republish.verify(a, SITE, {bytes(16): CRYPTO.public_key(other, True)})
    ra, rb = cbor.loads(a), cbor.loads(b)
    ra[7] = rb[7]                                                # b's proof and index on a's reading
    with pytest.raises(republish.Unverified):
        republish.verify(cbor.dumps(ra), SITE, {GW: PUB})
    with pytest.raises(republish.Unverified):
        republish.verify(_readings(1)[0], SITE, {GW: PUB})       # unsigned


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_changed_byte_is_refused(data):
    signed = republish.sign_group(_readings(5), KEY, GW, SITE)[data.draw(st.integers(0, 4))]
    pos = data.draw(st.integers(0, len(signed) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(signed)
    bad[pos] ^= 1 << bit
    with pytest.raises(republish.Unverified):
        republish.verify(bytes(bad), SITE, {GW: PUB})


def test_live_verified_readings_are_signed_and_forgeries_are_not(stack, register):
    [dev] = register(1)
    consumer = Client(stack, "ll-app-%s" % SITE, stack.consumer_login())
    assert consumer.subscribe("ll/%s/verified/+" % SITE) == 1
    ops = Client(stack, "ops-forger", stack.access.add("ops-forger", "operator"))   # a party in the broker's position
    forged = cbor.dumps({1: dev.id, 2: 1, 3: now_ms(), 4: {"t": 99}, 5: hashlib.sha256(b"x").digest(),
                         6: stack.gateway_id.hex()})
    assert ops.publish("ll/%s/verified/%s" % (SITE, dev.id.hex()), forged) == 0
    c = dev.client()
    dev.served(c, 3)
    got = [p for t, p, _ in consumer.drain(1.0)]
    trusted = {stack.gateway_id: stack.public_key("gateway")}
    good = [republish.verify(p, SITE, trusted) for p in got if p != forged]
    assert len(good) == 3 and all(r[1] == dev.id for r in good)
    assert forged in got
    with pytest.raises(republish.Unverified):
        republish.verify(forged, SITE, trusted)
    for cl in (consumer, ops, c):
        cl.close()
