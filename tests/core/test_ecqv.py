"""ECQV (SEC 4): the shared CAMP vector under both hash conventions, round trips and tampering."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor, ecdsa, ecqv, p256
from ledgerlink.core.errors import (
    DecodeError, InvalidCertificate, InvalidMessage, InvalidPoint, InvalidScalar,
)
from tests.conftest import load_vectors

V = load_vectors("ecqv/camp_p256_sha256.json")
_NOT_ON_CURVE_X = next(x for x in range(1, 100) if p256._sqrt((x ** 3 - 3 * x + p256.B) % p256.P) is None)


def _int(hex_text):
    return int(hex_text, 16)


def _point(xy):
    return (_int(xy["x"]), _int(xy["y"]))


TBS = bytes.fromhex(V["tbsCert"])
K_U = _int(V["kU"])
K = _int(V["k"])
D_CA = _int(V["dCA"])
Q_CA = _point(V["QCA"])


def _make_cert(p_u_compressed):
    return TBS + p_u_compressed


def test_vector_request_and_ca_key():
    assert p256.base_mult(K_U) == _point(V["RU"])
    assert p256.base_mult(D_CA) == Q_CA


@pytest.mark.parametrize("convention, block", [
    (ecqv.SEC4, "sec4_leftmost_bits"),
    (ecqv.FULL_DIGEST, "full_digest"),
])
def test_camp_vector_both_conventions(convention, block):
    expected = V[block]
    r_u = p256.encode_point(_point(V["RU"]), True)
    cert, r, p_u = ecqv.issue_raw(r_u, p256.scalar_to_bytes(D_CA), _make_cert, k=K, convention=convention)
    assert cert[-33:].hex().upper() == V["PU_compressed"]
    assert hashlib.sha256(cert).hexdigest().upper() == V["sha256_CertU"]
    if "e" in expected:
        assert ecqv.hash_to_integer(cert, convention) == _int(expected["e"])
    assert r.hex().upper() == expected["r"]

    d_u, q_u = ecqv.reconstruct_raw(p256.scalar_to_bytes(K_U), r, cert, p_u,
                                    p256.encode_point(Q_CA), convention)
    assert d_u.hex().upper() == expected["dU"]
    if "QU" in expected:
        assert q_u == _point(expected["QU"])
    else:
        assert p256.encode_point(q_u).hex().upper() == expected["QU_uncompressed"]
    assert ecqv.public_key_raw(cert, p_u, Q_CA, convention) == q_u


def test_pinned_convention_is_sec4_leftmost_255_bits():
    cert = TBS + bytes.fromhex(V["PU_compressed"])
    assert ecqv.hash_to_integer(cert) == _int(V["sec4_leftmost_bits"]["e"])
    assert ecqv.hash_to_integer(cert) == int.from_bytes(hashlib.sha256(cert).digest(), "big") >> 1


def _issue(rng_seed, usage=ecqv.USAGE_SESSION):
    ca_priv = ecdsa.generate_private_key()
    k_u, r_u = ecqv.create_request()
    cert, r = ecqv.issue(r_u, ca_priv, serial=bytes([rng_seed % 256]) * 8, issuer=b"fog-ca-1",
                         subject=b"device-%d" % rng_seed, valid_from=1000, valid_until=2000, usage=usage)
    return ca_priv, ecdsa.public_key(ca_priv), k_u, r_u, cert, r


@settings(max_examples=15, deadline=None)
@given(st.integers(min_value=0, max_value=10**6))
def test_round_trip_keys_agree_and_sign(seed):
    ca_priv, ca_pub, k_u, _, cert, r = _issue(seed)
    d_u, q_u = ecqv.reconstruct(k_u, cert, r, ca_pub)
    assert ecqv.public_key(cert, ca_pub) == q_u
    assert ecdsa.public_key(d_u) == q_u
    sig = ecdsa.sign(d_u, b"reading")
    assert ecdsa.verify(ecqv.public_key(cert, ca_pub), b"reading", sig)


def test_decoded_certificate_fields():
    _, _, _, _, cert, _ = _issue(7)
    parsed = ecqv.decode_cert(cert)
    assert parsed.subject == b"device-7"
    assert parsed.valid_at(1500) and not parsed.valid_at(2000) and not parsed.valid_at(999)
    assert parsed.encode() == cert


def test_session_certificate_names_its_peer_key():
    ca_priv = ecdsa.generate_private_key()
    peer = ecdsa.public_key(ecdsa.generate_private_key())          # uncompressed in, compressed in the cert
    k_u, r_u = ecqv.create_request()
    cert, r = ecqv.issue(r_u, ca_priv, b"s" * 8, b"gw", b"dev", 0, 10, peer=peer)
    parsed = ecqv.decode_cert(cert)
    assert cbor.loads(cert)[8] == p256.encode_point(p256.decode_point(peer), True)
    assert parsed.peer == p256.decode_point(peer) and parsed.encode() == cert
    ecqv.reconstruct(k_u, cert, r, ecdsa.public_key(ca_priv))
    items = cbor.loads(cert)
    for bad in (b"\x02" * 32, b"\x05" + bytes(32), 7):
        with pytest.raises((InvalidMessage, InvalidPoint)):
            ecqv.decode_cert(cbor.dumps(items[:8] + [bad]))
    with pytest.raises(InvalidMessage):
        ecqv.decode_cert(cbor.dumps(items + [items[8]]))


def test_wrong_r_is_refused():
    _, ca_pub, k_u, _, cert, r = _issue(1)
    bad_r = ((int.from_bytes(r, "big") + 1) % p256.N).to_bytes(32, "big")
    with pytest.raises(InvalidCertificate):
        ecqv.reconstruct(k_u, cert, bad_r, ca_pub)


def test_wrong_ca_is_refused():
    _, _, k_u, _, cert, r = _issue(2)
    other_ca = ecdsa.public_key(ecdsa.generate_private_key())
    with pytest.raises(InvalidCertificate):
        ecqv.reconstruct(k_u, cert, r, other_ca)


def test_altered_certificate_is_refused():
    _, ca_pub, k_u, _, cert, r = _issue(3)
    parsed = ecqv.decode_cert(cert)
    parsed.valid_until += 1
    with pytest.raises(InvalidCertificate):
        ecqv.reconstruct(k_u, parsed.encode(), r, ca_pub)


@pytest.mark.parametrize("r", [bytes(32), p256.N.to_bytes(32, "big"), b"\x01" * 31])
def test_out_of_range_r(r):
    _, ca_pub, k_u, _, cert, _ = _issue(4)
    with pytest.raises(InvalidCertificate):
        ecqv.reconstruct(k_u, cert, r, ca_pub)


def test_invalid_request_point_is_refused():
    ca_priv = ecdsa.generate_private_key()
    off_curve = b"\x04" + (1).to_bytes(32, "big") + (1).to_bytes(32, "big")
    for bad in (off_curve, b"\x02" + bytes(31), b"\x05" + bytes(32), b""):
        with pytest.raises(InvalidPoint):
            ecqv.issue(bad, ca_priv, b"s" * 8, b"ca", b"dev", 0, 10)


def test_invalid_ca_key_is_refused():
    _, r_u = ecqv.create_request()
    with pytest.raises(InvalidScalar):
        ecqv.issue(r_u, bytes(32), b"s" * 8, b"ca", b"dev", 0, 10)


@pytest.mark.parametrize("mutate, error", [
    (lambda items: items[:7], InvalidMessage),
    (lambda items: [2] + items[1:], InvalidMessage),
    (lambda items: items[:3] + [b""] + items[4:], InvalidMessage),
    (lambda items: items[:4] + [10, 5] + items[6:], InvalidMessage),
    (lambda items: items[:7] + [b"\x02" + _NOT_ON_CURVE_X.to_bytes(32, "big")], InvalidPoint),
    (lambda items: items[:7] + [bytes(65)], InvalidMessage),
])
def test_malformed_certificates(mutate, error):
    from ledgerlink.core import cbor

    _, _, _, _, cert, _ = _issue(5)
    items = cbor.loads(cert)
    with pytest.raises(error):
        ecqv.decode_cert(cbor.dumps(mutate(items)))


def test_garbage_certificate_bytes():
    with pytest.raises(DecodeError):
        ecqv.decode_cert(b"\x9f\x01")
    with pytest.raises(DecodeError):
        ecqv.decode_cert(b"\x00" * 600)
