"""Update manifests: encoder and decoder agree on every valid manifest; anything else is refused."""

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor
from ledgerlink.core.errors import DecodeError, InvalidMessage, LedgerlinkError
from ledgerlink.protocol import update_manifest as um
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_CONFIGURATION, IMAGE_FIRMWARE
from tests.devnet import DevNet

digests = st.binary(min_size=32, max_size=32)
manifests = st.builds(
    um.Manifest,
    sequence=st.integers(1, um.SEQUENCE_MAX),
    component=st.sampled_from(um.COMPONENTS),
    device_class=st.text(min_size=1, max_size=um.CLASS_LEN_MAX),
    digest=digests,
    size=st.integers(1, um.PAYLOAD_SIZE_MAX),
    chunk_size=st.integers(um.CHUNK_SIZE_MIN, um.CHUNK_SIZE_MAX),
    dependencies=st.lists(digests, max_size=um.DEPENDENCIES_MAX, unique=True),
    version=st.none() | st.text(min_size=1, max_size=um.VERSION_LEN_MAX),
)


@given(manifests)
@settings(max_examples=200, deadline=None)
def test_round_trip(m):
    data = m.encode()
    assert um.decode(data) == m
    assert um.decode(data).encode() == data
    assert m.chunks * m.chunk_size >= m.size > (m.chunks - 1) * m.chunk_size


@given(manifests, st.data())
@settings(max_examples=200, deadline=None)
def test_any_changed_byte_decodes_to_another_manifest_or_is_refused(m, data):
    raw = bytearray(m.encode())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    try:
        other = um.decode(bytes(raw))
    except (DecodeError, InvalidMessage):
        return
    assert other != m and other.encode() == bytes(raw)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_junk_raises_only_our_errors(data):
    try:
        um.decode(data)
    except LedgerlinkError:
        pass


BASE = {1: 1, 2: 7, 3: IMAGE_CONFIGURATION, 4: "sensor-v2", 5: bytes(32), 6: 100, 7: 64}


@pytest.mark.parametrize("change", [
    {1: 2}, {1: True}, {2: 0}, {2: um.SEQUENCE_MAX + 1}, {2: -1}, {3: 0}, {3: 4}, {4: ""}, {4: "c" * 65},
    {4: b"sensor"}, {5: bytes(31)}, {5: "00" * 32}, {6: 0}, {6: um.PAYLOAD_SIZE_MAX + 1}, {7: 63}, {7: 4097},
    {8: []}, {8: [bytes(32), bytes(32)]}, {8: [bytes(32)] * 9}, {8: bytes(32)}, {9: ""}, {9: 3}, {10: 1},
    {"x": 1},
])
def test_each_bad_field_is_refused(change):
    obj = dict(BASE)
    obj.update(change)
    with pytest.raises(InvalidMessage):
        um.decode(cbor.dumps(obj))


@pytest.mark.parametrize("missing", [1, 2, 3, 4, 5, 6, 7])
def test_each_required_field(missing):
    um.decode(cbor.dumps(BASE))
    obj = dict(BASE)
    del obj[missing]
    with pytest.raises(InvalidMessage):
        um.decode(cbor.dumps(obj))


def test_non_deterministic_and_oversized_encodings_are_refused():
    good = cbor.dumps(BASE)
    with pytest.raises(DecodeError):
        um.decode(bytes([good[0]]) + b"\x01\x18\x01" + good[3:])        # 1 written in two bytes
    with pytest.raises(InvalidMessage):
        um.decode(cbor.dumps({**BASE, 9: "v" * 1100}))
    with pytest.raises(InvalidMessage):
        um.decode(cbor.dumps([BASE]))


def test_signed_manifest_names_its_signer_and_binds_the_update_domain():
    net = DevNet()
    key = net["maintenance"]
    m = um.Manifest(3, IMAGE_FIRMWARE, "sensor-v2", hashlib.sha256(b"fw").digest(), 2, 64, version="1.2.0")
    signed = um.Signed(um.sign(m, key.priv, key.id, "cpython"))
    assert signed.signer == key.id and signed.manifest == m
    assert signed.digest == hashlib.sha256(m.encode()).digest()
    assert signed.verify(key.pub) and not signed.verify(net["admin"].pub)
    from ledgerlink.core import cose

    other_domain = cose.sign1(m.encode(), key.priv, kid=key.id, external_aad=b"ledgerlink-tx-v1")
    assert not um.Signed(other_domain).verify(key.pub)
    with pytest.raises(InvalidMessage):
        um.Signed(cose.sign1(m.encode(), key.priv, kid=b"short"))
    with pytest.raises(InvalidMessage):
        um.sign(m, key.priv, b"x" * 15)
    assert um.COMPONENT_NAMES[IMAGE_APP_LIBRARY] == "app-library"


_OFFER = {}


def _offer():
    if not _OFFER:
        from ledgerlink.protocol.codes import IMAGE_CONFIGURATION as CFG
        from tests.updates.site import ReleaseSite

        site = ReleaseSite()
        _OFFER["site"] = site
        _OFFER["offer"] = site.release(b"{}", CFG, 1)
    return _OFFER["site"], _OFFER["offer"]


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_junk_offers_are_refused_as_update_refusals(data):
    from ledgerlink.protocol import update_check as uc

    site, _ = _offer()
    try:
        uc.check_offer(data, site.chain_id, site.keys, "sensor-v2", "cpython")
    except uc.UpdateRefused as exc:
        assert exc.code in (uc.UPDATE_MALFORMED, uc.UPDATE_BAD_PROOF)
    else:
        raise AssertionError("junk accepted")


@given(st.data())
@settings(max_examples=150, deadline=None)
def test_any_changed_byte_of_an_offer_is_refused_or_changes_nothing_signed(data):
    from ledgerlink.protocol import update_check as uc

    site, offer = _offer()
    good = uc.check_offer(offer, site.chain_id, site.keys, "sensor-v2", "cpython")
    raw = bytearray(offer)
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    try:
        signed = uc.check_offer(bytes(raw), site.chain_id, site.keys, "sensor-v2", "cpython")
    except uc.UpdateRefused:
        return
    assert signed.digest == good.digest and signed.manifest == good.manifest     # e.g. a byte of an unsigned vote
