"""AES block cipher and AES-CCM of the portable core against FIPS 197, RFC 3610, Wycheproof and references."""

import pytest
from Crypto.Cipher import AES as CryptoAES
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import aes, ccm
from ledgerlink.core.errors import InvalidKey, InvalidTag
from ledgerlink.tools.micropython_vm import MicroPythonVM
from tests.conftest import load_vectors

# FIPS 197 appendix C: plaintext 00112233...ff under keys 000102...
FIPS197 = [
    ("000102030405060708090a0b0c0d0e0f", "69c4e0d86a7b0430d8cdb78070b4c55a"),
    ("000102030405060708090a0b0c0d0e0f1011121314151617", "dda97ca4864cdfe06eaf70a0ec0d7191"),
    ("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "8ea2b7ca516745bfeafc49904b496089"),
]
FIPS197_PLAINTEXT = bytes.fromhex("00112233445566778899aabbccddeeff")

# RFC 3610 section 8, packet vector #1.
RFC3610_KEY = bytes(range(0xC0, 0xD0))
RFC3610_NONCE = bytes.fromhex("00000003020100a0a1a2a3a4a5")
RFC3610_AAD = bytes(range(0x00, 0x08))
RFC3610_PLAINTEXT = bytes(range(0x08, 0x1F))
RFC3610_OUTPUT = bytes.fromhex("588c979a61c663d2f066d0c2c0f989806d5f6b61dac38417e8d12cfdf926e0")

REFUSED_PARAMETER_FLAGS = {"InvalidNonceSize", "InvalidTagSize", "InsecureTagSize"}


@pytest.mark.parametrize("key_hex,expected", FIPS197)
def test_fips197(key_hex, expected):
    cipher = aes.AES(bytes.fromhex(key_hex))
    assert cipher.encrypt_block(FIPS197_PLAINTEXT) == bytes.fromhex(expected)
    assert cipher.encrypt_block(bytearray(FIPS197_PLAINTEXT)) == bytes.fromhex(expected)


def test_aes_bad_key_and_block():
    for bad_key in (b"", bytes(15), bytes(17), bytes(31), bytes(33), bytes(64), "0" * 16, None, 16):
        with pytest.raises(InvalidKey):
            aes.AES(bad_key)
    cipher = aes.AES(bytes(16))
    for bad_block in (b"", bytes(15), bytes(17), None, "0" * 16):
        with pytest.raises(InvalidKey):
            cipher.encrypt_block(bad_block)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from((16, 24, 32)).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       block=st.binary(min_size=16, max_size=16))
def test_aes_matches_pycryptodome(key, block):
    assert aes.AES(key).encrypt_block(block) == CryptoAES.new(key, CryptoAES.MODE_ECB).encrypt(block)


class _FakeEcb:
    def __init__(self, key):
        self._cipher = CryptoAES.new(key, CryptoAES.MODE_ECB)

    def encrypt(self, block):
        return self._cipher.encrypt(block)


class _FakeCryptolib:
    """Stands in for MicroPython's cryptolib; like some ports it refuses 24-byte keys."""

    def __init__(self):
        self.calls = 0

    def aes(self, key, mode):
        assert mode == 1
        if len(key) == 24:
            raise ValueError("key size not supported")
        self.calls += 1
        return _FakeEcb(key)


def test_cryptolib_path_and_fallback(monkeypatch):
    fake = _FakeCryptolib()
    monkeypatch.setattr(aes, "_cryptolib", fake)
    for key_hex, expected in FIPS197:
        cipher = aes.AES(bytes.fromhex(key_hex))
        assert cipher.implementation == ("python" if len(key_hex) == 48 else "cryptolib")
        assert cipher.encrypt_block(FIPS197_PLAINTEXT) == bytes.fromhex(expected)
    assert fake.calls == 2
    assert ccm.seal(RFC3610_KEY, RFC3610_NONCE, RFC3610_PLAINTEXT, RFC3610_AAD) == RFC3610_OUTPUT
    assert fake.calls == 3


@settings(max_examples=100, deadline=None)
@given(key=st.sampled_from((16, 24, 32)).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       block=st.binary(min_size=16, max_size=16))
def test_encrypt_into_matches_encrypt_block(key, block):
    cipher = aes.AES(key)
    expected = cipher.encrypt_block(block)
    out = bytearray(16)
    cipher.encrypt_into(block, out)
    assert bytes(out) == expected
    cipher.encrypt_into(memoryview(block), out)
    assert bytes(out) == expected
    in_place = bytearray(block)
    cipher.encrypt_into(in_place, in_place)
    assert bytes(in_place) == expected


def test_encrypt_into_refuses_bad_buffers():
    cipher = aes.AES(bytes(16))
    for bad_block in (b"", bytes(15), bytes(17), None, "0" * 16):
        with pytest.raises(InvalidKey):
            cipher.encrypt_into(bad_block, bytearray(16))
    for bad_out in (bytearray(15), bytearray(17), bytes(16), None, [0] * 16):
        with pytest.raises(InvalidKey):
            cipher.encrypt_into(bytes(16), bad_out)


def test_encrypt_into_cryptolib_path(monkeypatch):
    monkeypatch.setattr(aes, "_cryptolib", _FakeCryptolib())
    key_hex, expected = FIPS197[0]
    cipher = aes.AES(bytes.fromhex(key_hex))
    assert cipher.implementation == "cryptolib"
    buf = bytearray(FIPS197_PLAINTEXT)
    cipher.encrypt_into(buf, buf)
    assert bytes(buf) == bytes.fromhex(expected)


@pytest.mark.parametrize("key_len", (16, 24, 32))
def test_python_path_ints_stay_small(key_len):
    # MicroPython allocates every int from 2**30 on; tables and round keys keep to 16 bits.
    cipher = aes.AES(bytes(range(key_len)))
    tables = (aes._SBOX, aes._H0, aes._H1, aes._H2, aes._H3, aes._L0, aes._L1, aes._L2, aes._L3)
    assert all(len(t) == 256 and 0 <= min(t) and max(t) < 1 << 16 for t in tables)
    assert len(cipher._round_keys) == 8 * (cipher._rounds + 1) == 8 * (key_len // 4 + 7)
    assert all(0 <= w < 1 << 16 for w in cipher._round_keys)


VM_ALLOCATION = """
import gc, json
from ledgerlink.core import aes, ccm
key = bytes(range(16)); nonce = bytes(range(13))
msg = bytes(i & 255 for i in range(1024))
aes.AES(key)
a0 = gc.mem_alloc()
sealed = ccm.seal(key, nonce, msg, b"hdr")
a1 = gc.mem_alloc()
opened = ccm.open(key, nonce, sealed, b"hdr")
a2 = gc.mem_alloc()
print(json.dumps([a1 - a0, a2 - a1, sealed.hex(), opened == msg]))
"""


@pytest.mark.micropython
def test_ccm_allocation_in_micropython_vm(tmp_path):
    # A 1 KB message is 130 AES blocks; the VM has 1 MB of heap and no garbage collection.
    vm = MicroPythonVM(workdir=tmp_path)
    (seal_alloc, open_alloc, sealed_hex, round_trip), _fuel = vm.run_json(VM_ALLOCATION, fuel=2_000_000_000)
    msg = bytes(i & 255 for i in range(1024))
    assert bytes.fromhex(sealed_hex) == AESCCM(bytes(range(16)), tag_length=8).encrypt(
        bytes(range(13)), msg, b"hdr")
    assert round_trip is True
    assert seal_alloc < 16 * 1024
    assert open_alloc < 16 * 1024


def test_cpython_uses_python_fallback():
    assert aes._cryptolib is None
    assert aes.AES(bytes(16)).implementation == "python"


def test_rfc3610_packet_vector_1():
    assert ccm.seal(RFC3610_KEY, RFC3610_NONCE, RFC3610_PLAINTEXT, RFC3610_AAD, 8) == RFC3610_OUTPUT
    assert ccm.open(RFC3610_KEY, RFC3610_NONCE, RFC3610_OUTPUT, RFC3610_AAD, 8) == RFC3610_PLAINTEXT


def test_cose_alg10_constants():
    assert ccm.COSE_ALG_AES_CCM_16_64_128 == 10
    assert (ccm.AES_CCM_16_64_128_KEY_LEN, ccm.AES_CCM_16_64_128_NONCE_LEN, ccm.AES_CCM_16_64_128_TAG_LEN) == (
        16, 13, 8)
    key, nonce = bytes(range(16)), bytes(range(13))
    sealed = ccm.seal(key, nonce, b"reading", b"hdr")
    assert len(sealed) == len(b"reading") + 8
    assert sealed == ccm.seal(key, nonce, b"reading", b"hdr", 8)


def test_wycheproof_aes_ccm():
    data = load_vectors("wycheproof/aes_ccm_test.json")
    counts = {"valid": 0, "tag": 0, "refused": 0}
    for group in data["testGroups"]:
        tag_len = group["tagSize"] // 8
        assert group["tagSize"] % 8 == 0
        for t in group["tests"]:
            key, iv, aad, msg, ct, tag = (bytes.fromhex(t[k]) for k in ("key", "iv", "aad", "msg", "ct", "tag"))
            flags = set(t["flags"])
            if t["result"] == "valid":
                assert ccm.seal(key, iv, msg, aad, tag_len) == ct + tag, t["tcId"]
                assert ccm.open(key, iv, ct + tag, aad, tag_len) == msg, t["tcId"]
                counts["valid"] += 1
            elif flags & REFUSED_PARAMETER_FLAGS:
                assert t["result"] == "invalid"
                with pytest.raises(InvalidKey):
                    ccm.seal(key, iv, msg, aad, tag_len)
                with pytest.raises(InvalidKey):
                    ccm.open(key, iv, ct + tag, aad, tag_len)
                counts["refused"] += 1
            else:
                assert t["result"] == "invalid" and flags == {"ModifiedTag"}, t["tcId"]
                with pytest.raises(InvalidTag):
                    ccm.open(key, iv, ct + tag, aad, tag_len)
                counts["tag"] += 1
    assert counts["valid"] >= 400 and counts["tag"] >= 80 and counts["refused"] >= 60
    assert sum(counts.values()) == data["numberOfTests"]


def test_every_rfc3610_parameter_accepted():
    key = bytes(range(16))
    for nonce_len in range(7, 14):
        for tag_len in (4, 6, 8, 10, 12, 14, 16):
            nonce = bytes(range(nonce_len))
            sealed = ccm.seal(key, nonce, b"payload", b"aad", tag_len)
            assert len(sealed) == 7 + tag_len
            assert ccm.open(key, nonce, sealed, b"aad", tag_len) == b"payload"


def test_bad_parameters():
    key, nonce = bytes(16), bytes(13)
    for bad_key in (bytes(15), bytes(20), b"", None, "k" * 16):
        with pytest.raises(InvalidKey):
            ccm.seal(bad_key, nonce, b"x")
        with pytest.raises(InvalidKey):
            ccm.open(bad_key, nonce, bytes(9))
    for bad_nonce in (bytes(6), bytes(14), bytes(16), b"", None, "n" * 13):
        with pytest.raises(InvalidKey):
            ccm.seal(key, bad_nonce, b"x")
        with pytest.raises(InvalidKey):
            ccm.open(key, bad_nonce, bytes(9))
    for bad_tag in (0, 2, 3, 5, 7, 9, 15, 17, 18, 32, -8, 8.0, None, "8"):
        with pytest.raises(InvalidKey):
            ccm.seal(key, nonce, b"x", b"", bad_tag)
        with pytest.raises(InvalidKey):
            ccm.open(key, nonce, bytes(20), b"", bad_tag)
    for bad_data in (None, "text", 7):
        with pytest.raises(InvalidKey):
            ccm.seal(key, nonce, bad_data)
        with pytest.raises(InvalidKey):
            ccm.open(key, nonce, bad_data)
    for bad_aad in ("text", 7, [1]):
        with pytest.raises(InvalidKey):
            ccm.seal(key, nonce, b"x", bad_aad)
        with pytest.raises(InvalidKey):
            ccm.open(key, nonce, bytes(9), bad_aad)
    assert ccm.seal(key, nonce, b"x", None) == ccm.seal(key, nonce, b"x", b"")


def test_message_too_long_for_length_field():
    # Nonce of 13 bytes leaves L = 2: at most 65535 bytes.
    key, nonce = bytes(16), bytes(13)
    assert len(ccm.seal(key, nonce, bytes(0xFFFF))) == 0xFFFF + 8
    with pytest.raises(InvalidKey):
        ccm.seal(key, nonce, bytes(0x10000))
    with pytest.raises(InvalidTag):
        ccm.open(key, nonce, bytes(0x10000 + 8))


def test_short_and_tampered_data_refused():
    key, nonce = bytes(range(16)), bytes(range(13))
    sealed = ccm.seal(key, nonce, b"temperature=21.5", b"device-7")
    for short in (b"", sealed[:7]):
        with pytest.raises(InvalidTag):
            ccm.open(key, nonce, short, b"device-7")
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(InvalidTag):
            ccm.open(key, nonce, bytes(tampered), b"device-7")
    with pytest.raises(InvalidTag):
        ccm.open(key, nonce, sealed, b"device-8")
    with pytest.raises(InvalidTag):
        ccm.open(key, nonce, sealed, b"")
    with pytest.raises(InvalidTag):
        ccm.open(key, bytes(13), sealed, b"device-7")
    with pytest.raises(InvalidTag):
        ccm.open(bytes(16), nonce, sealed, b"device-7")
    with pytest.raises(InvalidTag):
        ccm.open(key, nonce, sealed[:-1], b"device-7")
    assert ccm.open(key, nonce, sealed, b"device-7") == b"temperature=21.5"


def test_aad_length_encodings():
    # Associated data of 0xFEFF bytes uses the 2-byte length, 0xFF00 switches to 0xFFFE + 4 bytes.
    key, nonce = bytes(range(16)), bytes(range(12))
    for n in (0xFEFF, 0xFF00):
        aad = bytes(i & 0xFF for i in range(n))
        sealed = ccm.seal(key, nonce, b"msg", aad)
        assert sealed == AESCCM(key, tag_length=8).encrypt(nonce, b"msg", aad)
        assert ccm.open(key, nonce, sealed, aad) == b"msg"
    assert ccm._encode_aad_length(0xFEFF) == b"\xfe\xff"
    assert ccm._encode_aad_length(0xFF00) == b"\xff\xfe\x00\x00\xff\x00"
    assert ccm._encode_aad_length(1 << 32) == b"\xff\xff" + (1 << 32).to_bytes(8, "big")


ccm_inputs = st.fixed_dictionaries({
    "key": st.sampled_from((16, 24, 32)).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    "nonce": st.integers(min_value=7, max_value=13).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    "aad": st.binary(max_size=80),
    "plaintext": st.binary(max_size=100),
    "tag_len": st.sampled_from(ccm.TAG_LENGTHS),
})


@settings(max_examples=150, deadline=None)
@given(case=ccm_inputs)
def test_ccm_matches_pycryptodome_and_cryptography(case):
    key, nonce, aad, pt, tag_len = (case[k] for k in ("key", "nonce", "aad", "plaintext", "tag_len"))
    sealed = ccm.seal(key, nonce, pt, aad, tag_len)

    ref = CryptoAES.new(key, CryptoAES.MODE_CCM, nonce=nonce, mac_len=tag_len)
    ref.update(aad)
    ct, tag = ref.encrypt_and_digest(pt)
    assert sealed == ct + tag
    assert sealed == AESCCM(key, tag_length=tag_len).encrypt(nonce, pt, aad)
    assert ccm.open(key, nonce, sealed, aad, tag_len) == pt


@settings(max_examples=100, deadline=None)
@given(case=ccm_inputs, position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_ccm_any_bit_flip_is_refused(case, position, bit):
    key, nonce, aad, pt, tag_len = (case[k] for k in ("key", "nonce", "aad", "plaintext", "tag_len"))
    sealed = bytearray(ccm.seal(key, nonce, pt, aad, tag_len))
    sealed[position % len(sealed)] ^= 1 << bit
    with pytest.raises(InvalidTag):
        ccm.open(key, nonce, bytes(sealed), aad, tag_len)
