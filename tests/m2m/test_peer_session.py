"""Peer sessions without a broker: keys agree only between the two registered devices, and tampered,
replayed, reflected, misaddressed or wrongly signed frames are refused; property tests of the packet
and frame encoders and decoders."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.protocol import peer_session as ps
from ledgerlink.protocol.codes import device_id

CRYPTO = get_backend("cpython")
NOW = 1_800_000_000_000


class Dev:
    def __init__(self) -> None:
        self.priv = CRYPTO.generate_private_key()
        self.pub = CRYPTO.public_key(self.priv, True)
        self.id = device_id(self.pub)


def registry(*devs: Dev):
    keys = {d.id: d.pub for d in devs}
    return keys.get


def pair(query: bytes | None = None):
    a, b = Dev(), Dev()
    session, open_frame = ps.initiate(a.priv, a.id, b.id, b.pub, NOW, query)
    responder = ps.Responder(b.priv, b.id, registry(a, b))
    return a, b, session, open_frame, responder


def answer(early: bytes | None) -> bytes | None:
    return None if early is None else ps.encode_info(ps.decode_packet(early).query_id, ps.INFO_OK, "ok")


def test_both_sides_agree_and_exchange_packets_both_ways():
    a, b, s_a, open_frame, responder = pair(ps.encode_query(1, "state"))
    s_b, early, accept = responder.accept_open(open_frame, NOW + 5, answer)
    assert ps.decode_packet(early).subject == "state"
    assert ps.decode_packet(s_a.receive(accept)).body == "ok"
    for i in range(3):
        assert ps.decode_packet(s_b.receive(s_a.seal(ps.encode_query(i + 2, "lot")))).query_id == i + 2
        assert ps.decode_packet(s_a.receive(s_b.seal(ps.encode_info(i + 2, 0)))).status == 0
    assert s_a._send == s_b._recv and s_a._recv == s_b._send and s_a._send != s_a._recv


def test_every_altered_byte_of_a_data_frame_is_refused():
    _, _, s_a, open_frame, responder = pair()
    s_b, _, accept = responder.accept_open(open_frame, NOW)
    s_a.receive(accept)
    frame = s_a.seal(ps.encode_query(1, "state", {"lot": "x"}))
    for i in range(len(frame)):
        bad = bytearray(frame)
        bad[i] ^= 0x01
        with pytest.raises(ps.PeerError):
            s_b.receive(bytes(bad))
    assert ps.decode_packet(s_b.receive(frame)).subject == "state"     # the original still opens, once
    with pytest.raises(ps.PeerError) as err:
        s_b.receive(frame)
    assert err.value.reason == "replay"


def test_altered_open_early_query_and_accept_are_refused():
    a, b, s_a, open_frame, responder = pair(ps.encode_query(1, "state"))
    for i in range(len(open_frame)):
        bad = bytearray(open_frame)
        bad[i] ^= 0x01
        with pytest.raises(ps.PeerError):
            ps.Responder(b.priv, b.id, registry(a, b)).accept_open(bytes(bad), NOW, answer)
    _, _, accept = responder.accept_open(open_frame, NOW, answer)
    for i in range(len(accept)):
        bad = bytearray(accept)
        bad[i] ^= 0x01
        fresh = ps.PeerSession(s_a.crypto, a.priv, a.id, b.id, b.pub, s_a.session_id, True)
        fresh._eph_priv, fresh._open_sign1 = s_a._eph_priv, s_a._open_sign1
        with pytest.raises(ps.PeerError):
            fresh.receive(bytes(bad))
    assert ps.decode_packet(s_a.receive(accept)).body == "ok"


def test_open_from_an_unregistered_device_or_signed_by_another_key_is_refused():
    a, b = Dev(), Dev()
    _, open_frame = ps.initiate(a.priv, a.id, b.id, b.pub, NOW)
    with pytest.raises(ps.PeerError) as err:
        ps.Responder(b.priv, b.id, registry(b)).accept_open(open_frame, NOW)
    assert err.value.reason == "unregistered"
    mallory = Dev()
    _, forged = ps.initiate(mallory.priv, a.id, b.id, b.pub, NOW)         # claims a's id, signs with its own key
    with pytest.raises(ps.PeerError) as err:
        ps.Responder(b.priv, b.id, registry(a, b)).accept_open(forged, NOW)
    assert err.value.reason == "tampered"


def test_accept_signed_by_a_third_device_is_refused():
    a, b, s_a, open_frame, _ = pair()
    mallory = Dev()
    fake = ps.Responder(mallory.priv, b.id, registry(a, b))          # answers in b's name with its own key
    _, _, accept = fake.accept_open(open_frame, NOW)
    with pytest.raises(ps.PeerError) as err:
        s_a.receive(accept)
    assert err.value.reason == "tampered"


def test_early_query_is_readable_only_with_the_responders_key():
    a, b, _, open_frame, _ = pair(ps.encode_query(1, "state"))
    mallory = Dev()
    with pytest.raises(ps.PeerError):
        ps.Responder(mallory.priv, b.id, registry(a, b)).accept_open(open_frame, NOW)


def test_replayed_expired_misaddressed_and_reflected_frames_are_refused():
    a, b, s_a, open_frame, responder = pair()
    s_b, _, accept = responder.accept_open(open_frame, NOW)
    with pytest.raises(ps.PeerError) as err:
        responder.accept_open(open_frame, NOW)
    assert err.value.reason == "replay"
    with pytest.raises(ps.PeerError) as err:
        ps.Responder(b.priv, b.id, registry(a, b), max_age_ms=1000).accept_open(open_frame, NOW + 1001)
    assert err.value.reason == "expired"
    with pytest.raises(ps.PeerError) as err:
        ps.Responder(a.priv, a.id, registry(a, b)).accept_open(open_frame, NOW)
    assert err.value.reason == "state"
    s_a.receive(accept)
    own = s_a.seal(ps.encode_query(1, "state"))
    with pytest.raises(ps.PeerError):
        s_a.receive(own)                        # a frame reflected back to its sender does not open
    s_b.close(ps.CLOSE_PEER_BANNED)
    with pytest.raises(ps.PeerError) as err:
        s_b.receive(own)
    assert err.value.reason == "closed"


def test_exchange_digest_binds_session_and_both_frames():
    d = ps.exchange_digest(b"s" * 16, b"q", b"i")
    assert len(d) == 32
    assert len({d, ps.exchange_digest(b"t" * 16, b"q", b"i"), ps.exchange_digest(b"s" * 16, b"q2", b"i"),
                ps.exchange_digest(b"s" * 16, b"q", b"i2")}) == 4


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(max_size=70_000), st.binary(max_size=600))
def test_exchange_digest_is_the_hash_of_its_cbor_array(session_id, query_frame, info_frame):
    """Hashed part by part (no copy of the frames on a board), it is still SHA-256 of the CBOR array."""
    import hashlib

    want = hashlib.sha256(cbor.dumps([ps.PEER_DOMAIN, session_id, query_frame, info_frame])).digest()
    assert ps.exchange_digest(session_id, query_frame, bytearray(info_frame)) == want


def test_topics():
    a, b = bytes(range(16)), bytes(range(16, 32))
    assert ps.parse_pair_topic(ps.pair_topic("x", a, b)) == (a, b)
    for bad in ("ll/x/pair/00/11", "ll/x/dev/%s/%s" % (a.hex(), b.hex()), "ll/x/pair/%s" % a.hex(), "zz"):
        assert ps.parse_pair_topic(bad) is None


cbor_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20)
                           | st.binary(max_size=40),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.integers(0, 8) | st.text(max_size=5), children, max_size=4),
                           max_leaves=12)
subjects = st.text(min_size=1, max_size=ps.MAX_SUBJECT)
counters = st.integers(0, ps.MAX_COUNTER)


@settings(max_examples=200, deadline=None)
@given(counters, subjects, cbor_values)
def test_query_round_trip(query_id, subject, args):
    data = ps.encode_query(query_id, subject, args)
    assert ps.decode_packet(data) == ps.Packet(ps.PACKET_QUERY, query_id, subject=subject, body=args)


@settings(max_examples=200, deadline=None)
@given(counters, counters, cbor_values)
def test_info_and_close_round_trip(query_id, status, body):
    assert ps.decode_packet(ps.encode_info(query_id, status, body)) == ps.Packet(ps.PACKET_INFO, query_id,
                                                                                 status=status, body=body)
    assert ps.decode_packet(ps.encode_close(status)).reason == status


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | cbor_values.map(cbor.dumps))
def test_decoders_refuse_anything_else_with_a_peer_error(data):
    for decode in (ps.decode_packet, ps.decode_frame):
        try:
            decode(data)
        except ps.PeerError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3), cbor_values)
def test_packets_with_bad_fields_are_refused(kind, extra):
    with pytest.raises(ps.PeerError):
        ps.decode_packet(cbor.dumps({0: kind, 1: -1, 2: extra, 9: 1}))
    with pytest.raises(ps.PeerError):
        ps.encode_query(1, "x" * (ps.MAX_SUBJECT + 1))
    with pytest.raises(ps.PeerError):
        ps.encode_query(ps.MAX_COUNTER + 1, "state")
