"""SHA-256, HMAC-SHA256 and HKDF-SHA256 of the portable core against RFC 5869, Wycheproof and references."""

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import kdf
from ledgerlink.core.errors import InvalidKey
from tests.conftest import load_vectors

# RFC 5869 appendix A, test cases 1-3 (SHA-256).
RFC5869 = [
    {
        "ikm": "0b" * 22,
        "salt": "000102030405060708090a0b0c",
        "info": "f0f1f2f3f4f5f6f7f8f9",
        "length": 42,
        "prk": "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "okm": "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        "34007208d5b887185865",
    },
    {
        "ikm": bytes(range(0x00, 0x50)).hex(),
        "salt": bytes(range(0x60, 0xB0)).hex(),
        "info": bytes(range(0xB0, 0x100)).hex(),
        "length": 82,
        "prk": "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "okm": "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    },
    {
        "ikm": "0b" * 22,
        "salt": "",
        "info": "",
        "length": 42,
        "prk": "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "okm": "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        "9d201395faa4b61a96c8",
    },
]


@pytest.mark.parametrize("case", RFC5869, ids=["tc1", "tc2", "tc3"])
def test_rfc5869(case):
    ikm, salt, info = (bytes.fromhex(case[k]) for k in ("ikm", "salt", "info"))
    prk = kdf.hkdf_extract(salt, ikm)
    assert prk == bytes.fromhex(case["prk"])
    assert kdf.hkdf_expand(prk, info, case["length"]) == bytes.fromhex(case["okm"])
    assert kdf.hkdf(ikm, salt, info, case["length"]) == bytes.fromhex(case["okm"])


def test_rfc5869_none_salt_equals_zero_salt():
    ikm = bytes.fromhex(RFC5869[2]["ikm"])
    assert kdf.hkdf_extract(None, ikm) == bytes.fromhex(RFC5869[2]["prk"])
    assert kdf.hkdf_extract(bytes(32), ikm) == bytes.fromhex(RFC5869[2]["prk"])


def test_wycheproof_hmac_sha256():
    data = load_vectors("wycheproof/hmac_sha256_test.json")
    valid = invalid = 0
    for group in data["testGroups"]:
        tag_bytes = group["tagSize"] // 8
        for t in group["tests"]:
            key, msg, tag = bytes.fromhex(t["key"]), bytes.fromhex(t["msg"]), bytes.fromhex(t["tag"])
            full = kdf.hmac_sha256(key, msg)
            assert len(full) == 32
            matches = kdf.constant_time_equal(full[:tag_bytes], tag)
            if t["result"] == "valid":
                assert matches, t["tcId"]
                valid += 1
            else:
                assert t["result"] == "invalid"
                assert not matches, t["tcId"]
                invalid += 1
    assert valid >= 60 and invalid >= 100
    assert valid + invalid == data["numberOfTests"]


def test_wycheproof_hkdf_sha256():
    data = load_vectors("wycheproof/hkdf_sha256_test.json")
    valid = invalid = 0
    for group in data["testGroups"]:
        for t in group["tests"]:
            ikm, salt, info = (bytes.fromhex(t[k]) for k in ("ikm", "salt", "info"))
            if t["result"] == "valid":
                assert kdf.hkdf(ikm, salt, info, t["size"]) == bytes.fromhex(t["okm"]), t["tcId"]
                valid += 1
            else:
                assert t["result"] == "invalid"
                with pytest.raises(InvalidKey):
                    kdf.hkdf(ikm, salt, info, t["size"])
                with pytest.raises(InvalidKey):
                    kdf.hkdf_expand(kdf.hkdf_extract(salt, ikm), info, t["size"])
                invalid += 1
    assert valid >= 80 and invalid >= 3
    assert valid + invalid == data["numberOfTests"]


def test_sha256_empty_and_abc():
    assert kdf.sha256(b"") == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert kdf.sha256(b"abc") == bytes.fromhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_hkdf_length_bounds():
    prk = kdf.hkdf_extract(b"salt", b"ikm")
    assert kdf.hkdf_expand(prk, b"info", 0) == b""
    assert len(kdf.hkdf_expand(prk, b"info", 255 * 32)) == 255 * 32
    for bad in (255 * 32 + 1, -1, 1.5, None):
        with pytest.raises(InvalidKey):
            kdf.hkdf_expand(prk, b"info", bad)
        with pytest.raises(InvalidKey):
            kdf.hkdf(b"ikm", b"salt", b"info", bad)


def test_bad_input_types():
    for bad in (None, "text", 5, [1, 2]):
        with pytest.raises(InvalidKey):
            kdf.hmac_sha256(bad, b"data")
        with pytest.raises(InvalidKey):
            kdf.hmac_sha256(b"key", bad)
        with pytest.raises(InvalidKey):
            kdf.sha256(bad)


def test_accepts_bytearray_and_memoryview():
    expected = hmac.new(b"k" * 70, b"message", hashlib.sha256).digest()
    assert kdf.hmac_sha256(bytearray(b"k" * 70), memoryview(b"message")) == expected


def test_constant_time_equal():
    assert kdf.constant_time_equal(b"", b"")
    assert kdf.constant_time_equal(b"abc", bytearray(b"abc"))
    assert not kdf.constant_time_equal(b"abc", b"abd")
    assert not kdf.constant_time_equal(b"abc", b"xbc")
    assert not kdf.constant_time_equal(b"abc", b"ab")
    assert not kdf.constant_time_equal(b"", b"\x00")


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=200), msg=st.binary(max_size=300))
def test_hmac_matches_stdlib(key, msg):
    assert kdf.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()
    assert kdf.sha256(msg) == hashlib.sha256(msg).digest()


@settings(max_examples=150, deadline=None)
@given(
    ikm=st.binary(max_size=80),
    salt=st.binary(max_size=80),
    info=st.binary(max_size=80),
    length=st.integers(min_value=1, max_value=600),
)
def test_hkdf_matches_cryptography(ikm, salt, info, length):
    expected = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
    assert kdf.hkdf(ikm, salt, info, length) == expected
    prk = kdf.hkdf_extract(salt, ikm)
    assert kdf.hkdf_expand(prk, info, length) == HKDFExpand(hashes.SHA256(), length, info).derive(prk)


@settings(max_examples=100, deadline=None)
@given(a=st.binary(max_size=40), b=st.binary(max_size=40))
def test_constant_time_equal_matches_eq(a, b):
    assert kdf.constant_time_equal(a, b) == (a == b)
