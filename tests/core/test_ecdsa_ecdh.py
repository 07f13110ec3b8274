"""P-256, ECDSA and ECDH of the portable core: Wycheproof, RFC 6979, cross-checks and bad input."""

import hashlib
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledgerlink.core import ecdh, ecdsa, p256
from ledgerlink.core.errors import InvalidPoint, InvalidScalar, InvalidSignature
from tests import portable_vectors
from tests.conftest import load_vectors

scalars = st.integers(min_value=1, max_value=p256.N - 1)
_NOT_ON_CURVE_X = next(x for x in range(1, 100) if p256._sqrt((x ** 3 - 3 * x + p256.B) % p256.P) is None)


def _openssl_point(k: int) -> tuple[int, int]:
    pub = ec.derive_private_key(k, ec.SECP256R1()).public_key()
    return p256.decode_point(pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))


@pytest.mark.parametrize("name, der", [
    ("wycheproof/ecdsa_secp256r1_sha256_p1363_test.json", False),
    ("wycheproof/ecdsa_secp256r1_sha256_test.json", True),
])
def test_wycheproof_ecdsa(name, der):
    doc = load_vectors(name)
    count, failures = portable_vectors.check_ecdsa(doc, der)
    assert count == doc["numberOfTests"]
    assert failures == []


@pytest.mark.parametrize("name, spki", [
    ("wycheproof/ecdh_secp256r1_ecpoint_test.json", False),
    ("wycheproof/ecdh_secp256r1_test.json", True),
])
def test_wycheproof_ecdh(name, spki):
    doc = load_vectors(name)
    count, failures = portable_vectors.check_ecdh(doc, spki)
    assert count == doc["numberOfTests"]
    assert failures == []


def test_rfc6979_a21_p256_sha256():
    # RFC 6979 appendix A.2.5, P-256 with SHA-256, message "sample" and "test": the same nonce, so the
    # same r; s is the canonical one of the RFC's s and n - s ("sample"'s is above n/2, "test"'s below).
    x = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
    for message, r, s in [
            (b"sample", "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
             "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8"),
            (b"test", "F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367",
             "019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083")]:
        canonical = ecdsa.canonical_s(int(s, 16))
        assert (canonical != int(s, 16)) == (message == b"sample")
        assert ecdsa.sign(x, message) == bytes.fromhex(r) + canonical.to_bytes(32, "big")


@settings(max_examples=15, deadline=None)
@given(k=scalars)
def test_scalar_multiplication_matches_openssl(k):
    expected = _openssl_point(k)
    assert p256.base_mult(k, "windows") == expected
    assert p256.base_mult(k, "comb") == expected
    assert p256.mult(k, p256.G) == expected
    assert p256.mul_vartime(k, p256.G) == expected


@settings(max_examples=10, deadline=None)
@given(a=scalars, b=scalars, c=scalars)
@example(a=1, b=1, c=p256.N - 1)                            # a*G + b*Q is the point at infinity
def test_mul_add_and_add(a, b, c):
    q = p256.base_mult(c)
    k = (a + b * c) % p256.N
    expected = _openssl_point(k) if k else None
    assert p256.mul_add_vartime(a, b, q) == expected
    assert p256.add(p256.base_mult(a), p256.mult(b, q)) == expected


def test_complete_addition_special_cases():
    g = p256.G
    assert p256.add(g, g) == _openssl_point(2)
    assert p256.add(g, p256.negate(g)) is None
    assert p256.add(None, g) == g
    assert p256.add(None, None) is None
    assert p256.base_mult(p256.N - 1) == p256.negate(g)


def test_fixed_operation_count():
    from ledgerlink.core import p256_ct     # the fixed-sequence half of p256, where these are called

    names = ["_add", "_add_affine", "_double", "_select", "_select_affine", "_to_affine_secret"]
    calls = dict.fromkeys(names, 0)
    original = {name: getattr(p256_ct, name) for name in names}

    def counting(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)
        return wrapper

    p256.base_mult(5, "comb")  # the lazily built tables are not part of a multiplication
    p256.base_mult(5, "windows")
    try:
        for name in names:
            setattr(p256_ct, name, counting(name, original[name]))
        seen = set()
        for k in (1, 2, 3, p256.N - 1, p256.N - 2, 0xFFFF, 1 << 200, 0x5555 << 100):
            for name in names:
                calls[name] = 0
            p256.base_mult(k, "comb")
            p256.base_mult(k, "windows")
            p256.mult(k, p256.G)
            seen.add(tuple(sorted(calls.items())))
    finally:
        for name in names:
            setattr(p256_ct, name, original[name])
    assert len(seen) == 1
    assert all(count > 0 for _, count in next(iter(seen)))


@settings(max_examples=10, deadline=None)
@given(msg=st.binary(max_size=64))
def test_sign_matches_cryptography_backend_and_verifies(msg):
    from ledgerlink.core.backend import get_backend
    fast = get_backend("cpython")
    priv = ecdsa.generate_private_key()
    sig = ecdsa.sign(priv, msg)
    assert sig == fast.sign(priv, msg)
    pub = ecdsa.public_key(priv)
    assert pub == fast.public_key(priv)
    assert ecdsa.public_key(priv, True) == fast.public_key(priv, True)
    assert ecdsa.verify(pub, msg, sig)
    assert ecdsa.verify(ecdsa.public_key(priv, True), msg, sig)
    assert not ecdsa.verify(pub, msg + b"x", sig)
    bad = bytearray(sig)
    bad[5] ^= 1
    assert not ecdsa.verify(pub, msg, bytes(bad))
    assert ecdsa.sig_from_der(ecdsa.sig_to_der(sig)) == sig


def test_ecdh_agrees_both_ways():
    a, b = ecdsa.generate_private_key(), ecdsa.generate_private_key()
    z1 = ecdh.shared_secret(a, ecdsa.public_key(b))
    assert z1 == ecdh.shared_secret(b, ecdsa.public_key(a, True))
    from ledgerlink.core.backend import get_backend
    assert z1 == get_backend("cpython").ecdh(a, ecdsa.public_key(b))


def test_keygen_uses_rng_and_rejects_out_of_range():
    draws = [b"\xff" * 32, bytes(32), (5).to_bytes(32, "big")]
    assert ecdsa.generate_private_key(lambda n: draws.pop(0)) == (5).to_bytes(32, "big")


@pytest.mark.parametrize("data", [
    b"", b"\x04" + bytes(64), b"\x02" + _NOT_ON_CURVE_X.to_bytes(32, "big"), b"\x05" + bytes(32), b"\x00",
    b"\x04" + p256.P.to_bytes(32, "big") + bytes(32),
    b"\x02" + p256.P.to_bytes(32, "big"),
    p256.encode_point(p256.G)[:-1] + b"\x00",
    p256.encode_point(p256.G) + b"\x00",
])
def test_invalid_points_refused(data):
    with pytest.raises(InvalidPoint):
        p256.decode_point(data)


@pytest.mark.parametrize("raw", [bytes(32), p256.N.to_bytes(32, "big"), b"\xff" * 32, b"\x01" * 31])
def test_out_of_range_scalars_refused(raw):
    with pytest.raises(InvalidScalar):
        ecdsa.public_key(raw)
    with pytest.raises(InvalidScalar):
        ecdsa.sign(raw, b"x")


def test_point_round_trip_and_signature_edge_cases():
    pub = ecdsa.public_key(b"\x01" * 32)
    assert p256.encode_point(p256.decode_point(pub)) == pub
    assert not ecdsa.verify(pub, b"m", bytes(64))
    assert not ecdsa.verify(pub, b"m", b"\x00" * 63)
    assert not ecdsa.verify(pub, b"m", p256.N.to_bytes(32, "big") + (1).to_bytes(32, "big"))
    with pytest.raises(InvalidPoint):
        ecdsa.verify(b"\x04" + bytes(64), b"m", bytes(64))
    for der in (b"", b"\x30\x00", b"\x30\x06\x02\x01\x00\x02\x01\x01", b"\x31" + bytes(7)):
        with pytest.raises(InvalidSignature):
            ecdsa.sig_from_der(der)
    assert hashlib.sha256(b"").digest()


def test_precomputed_tables_match_first_principles():
    comb = [p256._unpack(e) for e in p256._comb_table()]
    assert comb == p256._compute_comb_table()
    odd = p256._G_ODD
    assert [(int.from_bytes(odd[i:i + 32], "big"), int.from_bytes(odd[i + 32:i + 64], "big"))
            for i in range(0, len(odd), 64)] == p256._compute_g_table(8)
    table = p256._g_table()
    assert [p256._g_point(table, i) for i in range(len(table) // 64)] == p256._compute_g_table(1 << (p256._G_WINDOW - 2))


@pytest.mark.parametrize("window", [2, 3, 4, 5])
def test_verification_agrees_for_every_q_window(monkeypatch, window):
    """A board verifies with width-3 digits for Q, CPython with width 4: both give a*G + b*Q."""
    monkeypatch.setattr(p256, "_Q_WINDOW", window)
    rng = random.Random(window)
    for _ in range(5):
        a, b = rng.randrange(1, p256.N), rng.randrange(1, p256.N)
        q = p256.base_mult(rng.randrange(1, p256.N))
        assert p256.mul_add_vartime(a, b, q) == p256.add(p256.base_mult(a), p256.mult(b, q))
    priv = ecdsa.generate_private_key()
    signature = ecdsa.sign(priv, b"m")
    assert ecdsa.verify(ecdsa.public_key(priv), b"m", signature)
    assert not ecdsa.verify(ecdsa.public_key(priv), b"n", signature)
