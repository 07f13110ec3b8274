"""Property tests of the anonymous-session primitives and messages: round trips, any tampered field
fails, and any bytes given to a decoder give a LedgerlinkError or a value, never another exception."""

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import ecies, p256, schnorr_zk
from ledgerlink.core.errors import InvalidProof, LedgerlinkError
from ledgerlink.protocol import anon_device, anon_wire
from tests.anon.site import Rng

FAST = settings(max_examples=25, deadline=None)
scalars = st.integers(1, p256.N - 1).map(lambda k: k.to_bytes(32, "big"))
small = st.binary(max_size=40)


@FAST
@given(scalars, small, small, st.data())
def test_proof_verifies_and_any_tampered_field_fails(x, user_id, other_info, data):
    a = schnorr_zk.public_point(x)
    proof = schnorr_zk.prove(x, user_id, other_info, Rng(x.hex() + user_id.hex()))
    schnorr_zk.verify(a, proof, user_id, other_info)
    i = data.draw(st.integers(0, len(proof) - 1))
    bit = 1 << data.draw(st.integers(0, 7))
    tampered = proof[:i] + bytes([proof[i] ^ bit]) + proof[i + 1:]
    with pytest.raises(InvalidProof):
        schnorr_zk.verify(a, tampered, user_id, other_info)
    with pytest.raises(InvalidProof):
        schnorr_zk.verify(a, proof, user_id + b"x", other_info)
    with pytest.raises(InvalidProof):
        schnorr_zk.verify(a, proof, user_id, other_info + b"x")
    with pytest.raises(InvalidProof):
        schnorr_zk.verify(schnorr_zk.public_point(((int.from_bytes(x, "big") % (p256.N - 1)) + 1).to_bytes(32, "big")),
                          proof, user_id, other_info)


def test_proof_challenge_is_the_rfc_8235_input():
    x = (7).to_bytes(32, "big")
    proof = schnorr_zk.prove(x, b"user", b"other", Rng("rfc"))
    v = p256.decode_point(proof[:33])
    a = p256.base_mult(7)

    def item(b):
        return len(b).to_bytes(4, "big") + b

    data = (item(p256.encode_point(p256.G)) + item(p256.encode_point(v)) + item(p256.encode_point(a)) + item(b"user")
            + item(b"other"))
    c = int.from_bytes(hashlib.sha256(data).digest(), "big")
    r = int.from_bytes(proof[33:], "big")
    assert p256.add(p256.mul_vartime(r, p256.G), p256.mul_vartime(c % p256.N, a)) == v


@FAST
@given(st.binary(max_size=200), small, small, st.data())
def test_ecies_round_trip_and_any_tampered_part_fails(plaintext, info, aad, data):
    d = Rng(info.hex() + aad.hex())(32)
    q = schnorr_zk.public_point(d)
    c1, c2, c3 = ecies.encrypt(q, plaintext, info, aad, Rng("e" + plaintext.hex()))
    assert len(c1) == 33 and len(c3) == 16 and len(c2) == len(plaintext)
    assert ecies.decrypt(d, c1, c2, c3, info, aad) == plaintext
    which = data.draw(st.sampled_from(["c1", "c2", "c3", "info", "aad"] if c2 else ["c1", "c3", "info", "aad"]))
    parts = {"c1": c1, "c2": c2, "c3": c3, "info": info, "aad": aad}
    value = parts[which]
    i = data.draw(st.integers(0, max(0, len(value) - 1)))
    parts[which] = value[:i] + bytes([value[i] ^ 1]) + value[i + 1:] if value else b"\x00"
    with pytest.raises(LedgerlinkError):
        ecies.decrypt(d, parts["c1"], parts["c2"], parts["c3"], parts["info"], parts["aad"])


ids = st.binary(min_size=16, max_size=16)
tags16 = st.binary(min_size=16, max_size=16)


@FAST
@given(st.binary(min_size=33, max_size=33), st.binary(min_size=1, max_size=300), tags16)
def test_request_round_trip(c1, c2, c3):
    assert anon_wire.decode_request(anon_wire.encode_request(c1, c2, c3)) == (c1, c2, c3)


@FAST
@given(ids, st.binary(min_size=65, max_size=65), st.integers(0, 2**64 - 1), st.binary(min_size=8, max_size=8),
       st.binary(min_size=1, max_size=128), tags16)
def test_request_body_round_trip(anon_id, proof, time_ms, tag, e2, e3):
    body = anon_wire.encode_request_body(anon_id, proof, time_ms, tag, (e2, e3))
    assert anon_wire.decode_request_body(body) == (anon_id, proof, time_ms, tag, (e2, e3))


@FAST
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=13, max_size=13), st.binary(min_size=8, max_size=8),
       st.integers(0, 2**32), st.binary(min_size=32, max_size=32), st.integers(1, 2**16))
def test_response_bodies_round_trip(key, iv, sid, until, tx, reason):
    body = anon_wire.encode_response_body(0, (key, iv, sid, until), tx)
    assert anon_wire.decode_response_body(body) == (0, (key, iv, sid, until, tx))
    assert anon_wire.decode_response_body(anon_wire.encode_response_body(reason)) == (reason, None)
    assert anon_wire.decode_response(anon_wire.encode_response(key, tx[:16])) == (key, tx[:16])


@FAST
@given(st.binary(min_size=8, max_size=8), st.binary(min_size=33, max_size=33), st.binary(min_size=1, max_size=64),
       tags16, st.binary(min_size=1, max_size=128), st.binary(min_size=32, max_size=32), st.integers(0, 2**32), ids)
def test_grant_and_escrow_round_trip(sid, c1, c2, c3, e2, tx, until, anon_id):
    payload = anon_wire.encode_grant_payload(sid, (c1, c2, c3), c1, (e2, c3), tx, until, anon_id)
    assert anon_wire.decode_grant_payload(payload) == (sid, (c1, c2, c3), c1, (e2, c3), tx, until, anon_id)
    assert anon_wire.decode_escrow_plain(anon_wire.encode_escrow_plain(anon_id, tx + tx)) == (anon_id, tx + tx)


DECODERS = [anon_wire.decode_request, anon_wire.decode_request_body, anon_wire.decode_response,
            anon_wire.decode_response_body, anon_wire.decode_grant_payload, anon_wire.decode_escrow_plain]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DECODERS), st.one_of(st.binary(max_size=120), st.builds(
    lambda items: __import__("ledgerlink.core.cbor", fromlist=["dumps"]).dumps(items),
    st.recursive(st.one_of(st.binary(max_size=70), st.integers(0, 2**40)),
                 lambda inner: st.one_of(st.lists(inner, max_size=8),
                                         st.dictionaries(st.integers(0, 8), inner, max_size=8)), max_leaves=12))))
def test_decoders_refuse_any_other_input_with_a_ledgerlink_error(decode, data):
    try:
        decode(data)
    except LedgerlinkError:
        pass


@FAST
@given(st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32), st.integers(0, 95))
def test_counter_file_round_trip_and_any_flipped_bit_is_lost(k, secret, bit):
    data = anon_device.encode_counter(k, secret)
    assert anon_device.decode_counter(data, secret) == k
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert anon_device.decode_counter(bytes(flipped), secret) is None
    assert anon_device.decode_counter(data, bytes(32) if secret != bytes(32) else b"\x01" * 32) is None


@pytest.fixture(scope="module")
def fog_site(tmp_path_factory):
    from tests.anon.site import Site

    return Site(tmp_path_factory.mktemp("anon-fog"))


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.builds(
    lambda c1, c2, c3: anon_wire.encode_request(c1, c2, c3), st.binary(min_size=33, max_size=33),
    st.binary(min_size=1, max_size=200), tags16)))
def test_fog_refuses_any_bytes_without_raising(fog_site, payload):
    effects = fog_site.fogs[0].on_request("ll/plant-1/anon/req", payload, fog_site.time_ms)
    assert len(effects) == 1 and effects[0].reason in (1, 6)       # malformed or bad-tag, and no reply


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_cloud_refuses_any_bytes_as_a_grant_or_data_with_a_ledgerlink_error(fog_site, grant, frame):
    for call in (lambda: fog_site.cloud.on_grant(grant),
                 lambda: fog_site.cloud.open_data("ll/plant-1/anon/up/00", frame, fog_site.time_ms)):
        try:
            call()
        except LedgerlinkError:
            pass
        else:
            raise AssertionError("random bytes were taken")
