"""Deterministic CBOR: RFC 8949 Appendix A, malformed and non-deterministic input, both codecs, fuzzing."""

import math
import struct

import cbor2
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ledgerlink import cpython_cbor
from ledgerlink.core import cbor
from ledgerlink.core.cbor import UNDEFINED, Simple, Tag
from ledgerlink.core.errors import DecodeError

FAST = settings(max_examples=150, deadline=None)


def same(a, b) -> bool:
    """Equality that also compares types, the sign of zero and treats NaN as equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        bk = {cbor.portable_dumps(k): (k, v) for k, v in b.items()}
        for k, v in a.items():
            other = bk.get(cbor.portable_dumps(k))
            if other is None or not same(k, other[0]) or not same(v, other[1]):
                return False
        return True
    if isinstance(a, Tag):
        return a.tag == b.tag and same(a.value, b.value)
    return a == b


# ---------------------------------------------------------------- RFC 8949 Appendix A

APPENDIX_A = [
    ("00", 0), ("01", 1), ("0a", 10), ("17", 23), ("1818", 24), ("1819", 25), ("1864", 100),
    ("1903e8", 1000), ("1a000f4240", 1000000), ("1b000000e8d4a51000", 1000000000000),
    ("1bffffffffffffffff", 18446744073709551615), ("c249010000000000000000", 18446744073709551616),
    ("3bffffffffffffffff", -18446744073709551616), ("c349010000000000000000", -18446744073709551617),
    ("20", -1), ("29", -10), ("3863", -100), ("3903e7", -1000),
    ("f90000", 0.0), ("f98000", -0.0), ("f93c00", 1.0), ("fb3ff199999999999a", 1.1), ("f93e00", 1.5),
    ("f97bff", 65504.0), ("fa47c35000", 100000.0), ("fa7f7fffff", 3.4028234663852886e+38),
    ("fb7e37e43c8800759c", 1.0e+300), ("f90001", 5.960464477539063e-8), ("f90400", 0.00006103515625),
    ("f9c400", -4.0), ("fbc010666666666666", -4.1), ("f97c00", math.inf), ("f97e00", math.nan),
    ("f9fc00", -math.inf),
    ("f4", False), ("f5", True), ("f6", None), ("f7", UNDEFINED), ("f0", Simple(16)), ("f8ff", Simple(255)),
    ("c074323031332d30332d32315432303a30343a30305a", Tag(0, "2013-03-21T20:04:00Z")),
    ("c11a514b67b0", Tag(1, 1363896240)), ("c1fb41d452d9ec200000", Tag(1, 1363896240.5)),
    ("d74401020304", Tag(23, b"\x01\x02\x03\x04")), ("d818456449455446", Tag(24, b"dIETF")),
    ("d82076687474703a2f2f7777772e6578616d706c652e636f6d", Tag(32, "http://www.example.com")),
    ("40", b""), ("4401020304", b"\x01\x02\x03\x04"),
    ("60", ""), ("6161", "a"), ("6449455446", "IETF"), ("62225c", "\"\\"), ("62c3bc", "\u00fc"),
    ("63e6b0b4", "\u6c34"), ("64f0908591", "\U00010151"),
    ("80", []), ("83010203", [1, 2, 3]), ("8301820203820405", [1, [2, 3], [4, 5]]),
    ("98190102030405060708090a0b0c0d0e0f101112131415161718181819", list(range(1, 26))),
    ("a0", {}), ("a201020304", {1: 2, 3: 4}), ("a26161016162820203", {"a": 1, "b": [2, 3]}),
    ("826161a161626163", ["a", {"b": "c"}]),
    ("a56161614161626142616361436164614461656145", {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}),
]

# Appendix A encodings that are valid CBOR but not deterministic (non-shortest floats, indefinite lengths).
APPENDIX_A_NOT_DETERMINISTIC = [
    "fa7f800000", "fa7fc00000", "faff800000", "fb7ff0000000000000", "fb7ff8000000000000",
    "fbfff0000000000000", "5f42010243030405ff", "7f657374726561646d696e67ff", "9fff",
    "9f018202039f0405ffff", "9f01820203820405ff", "83018202039f0405ff", "83019f0203ff820405",
    "9f0102030405060708090a0b0c0d0e0f101112131415161718181819ff", "bf61610161629f0203ffff",
    "826161bf61626163ff", "bf6346756ef563416d7421ff",
]


@pytest.mark.parametrize("hexstr,value", APPENDIX_A, ids=[h for h, _ in APPENDIX_A])
def test_appendix_a(hexstr, value):
    data = bytes.fromhex(hexstr)
    assert cbor.portable_dumps(value) == data
    assert cpython_cbor.dumps(value) == data
    assert same(cbor.portable_loads(data), value)
    assert same(cpython_cbor.loads(data), value)


@pytest.mark.parametrize("hexstr", APPENDIX_A_NOT_DETERMINISTIC)
def test_appendix_a_non_deterministic_rejected(hexstr):
    data = bytes.fromhex(hexstr)
    cbor2.loads(data)  # well-formed CBOR ...
    for loads in (cbor.portable_loads, cpython_cbor.loads):
        with pytest.raises(DecodeError):  # ... but not the deterministic encoding
            loads(data)


def test_fast_codec_is_wired_in_on_cpython():
    assert cpython_cbor.self_check()
    assert cbor.dumps is cpython_cbor.dumps
    assert cbor.loads is cpython_cbor.loads
    assert cbor.portable_dumps is not cbor.dumps


# ---------------------------------------------------------------- malformed input

BAD = {
    "empty": "",
    "truncated uint": "19 01",
    "truncated bytes": "43 0102",
    "truncated array": "82 01",
    "truncated map value": "a1 01",
    "truncated float": "fa 0000",
    "trailing byte": "01 00",
    "trailing item": "8101 01",
    "indefinite bytes": "5f 4101 ff",
    "indefinite text": "7f 6161 ff",
    "indefinite array": "9f ff",
    "indefinite map": "bf ff",
    "lone break": "ff",
    "reserved ai 28": "1c",
    "reserved ai 29": "3d",
    "reserved ai 30 in major 7": "fe",
    "non-shortest uint8": "18 17",
    "non-shortest uint16": "19 00ff",
    "non-shortest uint32": "1a 0000ffff",
    "non-shortest uint64": "1b 00000000ffffffff",
    "non-shortest negative": "38 00",
    "non-shortest length": "58 01 00",
    "non-shortest array length": "98 00",
    "non-shortest tag": "d8 01 00",
    "bignum fits uint64": "c2 48 ffffffffffffffff",
    "bignum leading zero": "c2 4a 00 010000000000000000",
    "empty bignum": "c2 40",
    "negative bignum fits": "c3 41 01",
    "bignum of text": "c2 61 61",
    "float single fits half": "fa 3fc00000",
    "float double fits single": "fb 3ff8000000000000",
    "nan with payload": "f9 7e01",
    "negative nan": "f9 fe00",
    "single nan": "fa 7fc00000",
    "simple 24 two-byte": "f8 18",
    "simple 31 two-byte": "f8 1f",
    "simple 5 two-byte": "f8 05",
    "unsorted keys": "a2 02 00 01 00",
    "length-first key order": "a2 20 00 19 0100 00",
    "duplicate keys": "a2 01 00 01 00",
    "keys equal in Python": "a2 01 00 f5 00",
    "map as map key": "a1 a0 00",
    "invalid utf-8": "62 c328",
    "utf-8 surrogate": "63 eda080",
    "utf-8 overlong": "62 c0af",
    "utf-8 truncated": "62 e6b0",
    "byte string longer than input": "5b 00000000ffffffff 00",
    "array longer than input": "9b 00000000ffffffff 00",
    "map longer than input": "bb 00000000ffffffff 0000",
    "huge declared length": "5b ffffffffffffffff",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_input_raises_decode_error(name):
    data = bytes.fromhex(BAD[name].replace(" ", ""))
    for loads in (cbor.portable_loads, cpython_cbor.loads):
        with pytest.raises(DecodeError):
            loads(data)


def test_non_bytes_input():
    for loads in (cbor.portable_loads, cpython_cbor.loads):
        for bad in (None, "00", [0], 0):
            with pytest.raises(DecodeError):
                loads(bad)
        assert loads(bytearray(b"\x01")) == 1
        assert loads(memoryview(b"\x41\x00")) == b"\x00"


def test_nesting_limit():
    for loads in (cbor.portable_loads, cpython_cbor.loads):
        assert loads(b"\x81" * 32 + b"\x01") == eval("[" * 32 + "1" + "]" * 32)
        with pytest.raises(DecodeError):
            loads(b"\x81" * 33 + b"\x01")
        with pytest.raises(DecodeError):
            loads(b"\xc6" * 33 + b"\x01")  # tags nest too
        with pytest.raises(DecodeError):
            loads(b"\xa1\x01" * 33 + b"\x01")
        assert loads(b"\x81\x81\x01", max_depth=2) == [[1]]
        with pytest.raises(DecodeError):
            loads(b"\x81\x81\x01", max_depth=1)
        assert loads(b"\x81" + bytes.fromhex("c249010000000000000000"), max_depth=1) == [2**64]
        with pytest.raises(DecodeError):
            loads(b"\x81" * 200000 + b"\x01", max_depth=10**6)  # no RecursionError escapes
        with pytest.raises(DecodeError):
            loads(b"\x81" * 100 + b"\x01" + b"\x00", max_depth=1000)


def test_size_limit():
    data = cbor.dumps(b"\x00" * 100)
    for loads in (cbor.portable_loads, cpython_cbor.loads):
        assert loads(data, max_size=len(data)) == b"\x00" * 100
        with pytest.raises(DecodeError):
            loads(data, max_size=len(data) - 1)


def test_map_keys():
    for loads in (cbor.portable_loads, cpython_cbor.loads):
        got = loads(cbor.dumps({(1, (2, b"x")): "a", Tag(7, (1,)): "b", 1.5: None, None: 0}))
        assert got == {(1, (2, b"x")): "a", Tag(7, (1,)): "b", 1.5: None, None: 0}
        assert type(next(iter(got))) is not list
    assert cbor.dumps({256: 1, -1: 2}).hex() == "a2190100012002"
    assert cbor.dumps({"aa": 1, "b": 2, 10: 3}).hex() == "a30a0361620262616101"


def test_encoder_rejects():
    class Key(str):
        __hash__ = object.__hash__

        def __eq__(self, other):
            return self is other

    for dumps in (cbor.portable_dumps, cpython_cbor.dumps):
        for bad in (object(), {1, 2}, 1j, [Ellipsis], {"a": object()}):
            with pytest.raises(TypeError):
                dumps(bad)
        for bad in (Tag(2, b"\x01"), Tag(3, b"\x01"), "\ud800", {Key("a"): 1, Key("a"): 2}):
            with pytest.raises(ValueError):
                dumps(bad)
    with pytest.raises(ValueError):
        Tag(2**64, 0)
    with pytest.raises(ValueError):
        Tag(-1, 0)
    for n in (-1, 20, 23, 24, 31, 256):
        with pytest.raises(ValueError):
            Simple(n)


def test_byte_like_and_sequence_types():
    for dumps in (cbor.portable_dumps, cpython_cbor.dumps):
        assert dumps(bytearray(b"ab")) == dumps(memoryview(b"ab")) == b"\x42ab"
        assert dumps((1, "x")) == dumps([1, "x"])


def test_half_precision_all_patterns():
    for h in range(0x10000):
        raw = h.to_bytes(2, "big")
        ref = struct.unpack(">e", raw)[0]
        got = cbor.half_to_float(h)
        assert same(got, ref)
        if not math.isnan(ref):
            assert cbor.float_bytes(got) == b"\xf9" + raw


# ---------------------------------------------------------------- property tests

TAGS = st.one_of(st.integers(min_value=6, max_value=15), st.integers(min_value=2**20, max_value=2**64 - 1))
SIMPLES = st.builds(Simple, st.one_of(st.integers(0, 19), st.integers(32, 255)))
INTS = st.one_of(st.integers(), st.integers(min_value=-2**140, max_value=2**140),
                 st.sampled_from([0, 23, 24, 255, 256, 2**16, 2**32, 2**64 - 1, 2**64, -2**64, -2**64 - 1]))
FLOATS = st.one_of(st.floats(), st.floats(width=16), st.floats(width=32), st.sampled_from([-0.0, math.nan]))
LEAVES = st.one_of(INTS, st.binary(max_size=30), st.text(max_size=12), st.booleans(), st.none(), FLOATS,
                   SIMPLES, st.just(UNDEFINED), st.binary(min_size=250, max_size=270),
                   st.text(min_size=120, max_size=270))
KEYS = st.recursive(
    st.one_of(INTS, st.text(max_size=6), st.binary(max_size=6), st.floats(allow_nan=False), st.booleans(),
              st.none(), SIMPLES),
    lambda c: st.one_of(st.lists(c, max_size=3).map(tuple), st.builds(Tag, TAGS, c)),
    max_leaves=4)
VALUES = st.recursive(
    LEAVES,
    lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(KEYS, c, max_size=5),
                        st.dictionaries(st.text(max_size=6), c, max_size=5),
                        st.dictionaries(st.integers(-300, 300), c, max_size=5), st.builds(Tag, TAGS, c)),
    max_leaves=25)


def from_cbor2(obj, in_key=False):
    """cbor2's plain decoding of a value in ledgerlink's types."""
    if isinstance(obj, cbor2.CBORTag):
        return Tag(obj.tag, from_cbor2(obj.value, in_key))
    if isinstance(obj, cbor2.CBORSimpleValue):
        return Simple(obj.value)
    if obj is cbor2.undefined:
        return UNDEFINED
    if isinstance(obj, (list, tuple)):
        items = [from_cbor2(x, in_key) for x in obj]
        return tuple(items) if in_key else items
    if isinstance(obj, (dict, cbor2.frozendict)):
        return {from_cbor2(k, True): from_cbor2(v) for k, v in obj.items()}
    return obj


def _simple_key_beside_int(obj) -> bool:
    """A map (at any depth) with a simple-value key and an integer key of the same number."""
    if isinstance(obj, dict):
        ints = {k for k in obj if type(k) is int}
        if any(isinstance(k, Simple) and k.value in ints for k in obj):
            return True
        return any(_simple_key_beside_int(k) or _simple_key_beside_int(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return any(_simple_key_beside_int(x) for x in obj)
    if isinstance(obj, Tag):
        return _simple_key_beside_int(obj.value)
    return False


@FAST
@given(VALUES)
def test_roundtrip_and_codecs_agree(value):
    data = cbor.portable_dumps(value)
    assert cpython_cbor.dumps(value) == data
    assert cbor.dumps(value) == data
    if not _simple_key_beside_int(value):        # cbor2's simple values equal ints: such keys collide there
        assert same(from_cbor2(cbor2.loads(data)), value)  # an independent decoder reads the same value
    portable = cbor.portable_loads(data, max_depth=1000)
    fast = cpython_cbor.loads(data, max_depth=1000)
    assert same(portable, value)
    assert same(fast, value)


PLAIN = st.recursive(
    st.one_of(INTS, st.binary(max_size=20), st.text(max_size=10), st.booleans(), st.none(), FLOATS),
    lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(st.text(max_size=30), c, max_size=6),
                        st.dictionaries(st.binary(max_size=30), c, max_size=6),
                        st.dictionaries(st.integers(min_value=0), c, max_size=6)),
    max_leaves=25)


@FAST
@given(PLAIN)
def test_matches_cbor2_canonical_where_key_orders_coincide(value):
    # With keys of a single major type, RFC 7049 length-first order is RFC 8949 bytewise order.
    assert cbor.portable_dumps(value) == cbor2.dumps(value, canonical=True)


@FAST
@given(st.dictionaries(KEYS, st.integers(), min_size=2, max_size=8))
def test_map_keys_sorted_bytewise(value):
    data = cbor.portable_dumps(value)
    assert cpython_cbor.dumps(value) == data
    pairs = sorted((cbor.portable_dumps(k), cbor.portable_dumps(v)) for k, v in value.items())
    assert data == bytes([0xA0 + len(pairs)]) + b"".join(k + v for k, v in pairs)
    assert [cbor.portable_dumps(k) for k in cbor.portable_loads(data)] == [k for k, _ in pairs]


def check_strict(data: bytes, max_depth: int = cbor.DEFAULT_MAX_DEPTH,
                 max_size: int = cbor.DEFAULT_MAX_SIZE) -> None:
    """Both decoders agree; an accepted input is exactly the encoding of what it decodes to.

    The fast decoder is also checked on its own, without the portable decoder it falls back to: it
    must fail on everything the portable decoder refuses and return the same value otherwise.
    """
    try:
        portable = cbor.portable_loads(data, max_depth, max_size)
    except DecodeError:
        with pytest.raises(DecodeError):
            cpython_cbor.loads(data, max_depth, max_size)
        if len(data) <= max_size:
            with pytest.raises(Exception):
                cpython_cbor._fast_loads(data, max_depth)
        return
    assert cbor.portable_dumps(portable) == data
    assert same(cpython_cbor.loads(data, max_depth, max_size), portable)
    assert same(cpython_cbor._fast_loads(data, max_depth), portable)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz_arbitrary_bytes(data):
    check_strict(data)


@settings(max_examples=200, deadline=None)
@given(VALUES, st.data())
def test_fuzz_mutated_encodings(value, draw):
    data = bytearray(cbor.portable_dumps(value))
    assume(data)
    kind = draw.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
    i = draw.draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        data[i] ^= 1 << draw.draw(st.integers(0, 7))
    elif kind == "set":
        data[i] = draw.draw(st.integers(0, 255))
    elif kind == "truncate":
        del data[i:]
    elif kind == "insert":
        data.insert(i, draw.draw(st.integers(0, 255)))
    else:
        del data[i]
    check_strict(bytes(data))


def loose_head(major: int, arg: int, draw) -> bytes:
    """A head for ``arg``: mostly the shortest, sometimes a wider one (non-deterministic)."""
    widths = [w for w, limit in ((0, 24), (1, 1 << 8), (2, 1 << 16), (4, 1 << 32), (8, 1 << 64)) if arg < limit]
    width = widths[0]
    if len(widths) > 1 and draw(st.integers(0, 5)) == 0:
        width = draw(st.sampled_from(widths[1:]))
    if width == 0:
        return bytes([major << 5 | arg])
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + arg.to_bytes(width, "big")


NAN_FORMS = ["f97e01", "f9fe00", "f97c01", "f97fff", "fa7fc00000", "faffc00000", "fa7f800001",
             "fb7ff8000000000000", "fb7ff0000000000001"]


def loose(obj, draw) -> bytes:
    """A well-formed or malformed CBOR encoding of ``obj`` that is sometimes not the deterministic one.

    Deviations, each drawn rarely at every node: wider heads (ints, lengths, tags), integers as
    bignums, bignums with leading zero bytes, wider floats, NaN payloads and signs, simple values in
    two-byte form, indefinite-length strings, arrays and maps, shuffled and duplicated map entries.
    """
    def deviate() -> bool:
        return draw(st.integers(0, 7)) == 0

    if obj is False or obj is True or obj is None or obj is UNDEFINED:
        return cbor.portable_dumps(obj)
    if isinstance(obj, Simple):
        if obj.value < 24 and deviate():
            return bytes([0xF8, obj.value])
        return cbor.portable_dumps(obj)
    if isinstance(obj, int):
        major, n = (0, obj) if obj >= 0 else (1, -1 - obj)
        if n <= 2**64 - 1 and not deviate():
            return loose_head(major, n, draw)
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        if deviate():
            raw = b"\x00" * draw(st.integers(1, 2)) + raw
        return bytes([0xC2 + major]) + loose_head(2, len(raw), draw) + raw
    if isinstance(obj, float):
        canonical = cbor.float_bytes(obj)
        if not deviate():
            return canonical
        if obj != obj:
            return bytes.fromhex(draw(st.sampled_from(NAN_FORMS)))
        wider = [(0xFA, ">f"), (0xFB, ">d")][len(canonical) // 4:]
        if not wider:
            return canonical
        head, fmt = draw(st.sampled_from(wider))
        return bytes([head]) + struct.pack(fmt, obj)
    if isinstance(obj, (bytes, str)):
        major = 2 if isinstance(obj, bytes) else 3
        if obj and deviate():
            cut = draw(st.integers(0, len(obj)))
            chunks = [c.encode("utf-8") if major == 3 else c for c in (obj[:cut], obj[cut:])]
            return bytes([major << 5 | 31]) + b"".join(loose_head(major, len(c), draw) + c for c in chunks) + b"\xff"
        raw = obj.encode("utf-8") if major == 3 else obj
        return loose_head(major, len(raw), draw) + raw
    if isinstance(obj, (list, tuple)):
        items = b"".join(loose(x, draw) for x in obj)
        if deviate():
            return b"\x9f" + items + b"\xff"
        return loose_head(4, len(obj), draw) + items
    if isinstance(obj, dict):
        pairs = sorted((cbor.portable_dumps(k), loose(k, draw) + loose(v, draw)) for k, v in obj.items())
        pairs = [p for _, p in pairs]
        if len(pairs) > 1 and deviate():
            pairs = draw(st.permutations(pairs))
        if pairs and deviate():
            i = draw(st.integers(0, len(pairs) - 1))
            pairs = pairs[:i + 1] + [pairs[i]] + pairs[i + 1:]
        if deviate():
            return b"\xbf" + b"".join(pairs) + b"\xff"
        return loose_head(5, len(pairs), draw) + b"".join(pairs)
    assert isinstance(obj, Tag)
    return loose_head(6, obj.tag, draw) + loose(obj.value, draw)


@settings(max_examples=400, deadline=None)
@given(VALUES, st.data())
def test_loose_encodings_refused_unless_deterministic(value, data):
    # A valid CBOR encoding of a value other than its deterministic one is the deterministic encoding
    # of nothing, so both decoders must refuse it (the fast one on its own too).
    enc = loose(value, data.draw)
    if data.draw(st.integers(0, 15)) == 0:
        enc += bytes([data.draw(st.integers(0, 255))])
    if enc == cbor.portable_dumps(value):
        assert same(cpython_cbor._fast_loads(enc, 1000), value)
        assert same(cpython_cbor.loads(enc, max_depth=1000), value)
        assert same(cbor.portable_loads(enc, max_depth=1000), value)
        return
    for loads in (cbor.portable_loads, cpython_cbor.loads):
        with pytest.raises(DecodeError):
            loads(enc, max_depth=1000)
    with pytest.raises(Exception):
        cpython_cbor._fast_loads(enc, 1000)


@FAST
@given(VALUES)
def test_fast_decoder_reads_every_deterministic_encoding_itself(value):
    # No silent fallback: the fast decoder alone returns what was encoded.
    assert same(cpython_cbor._fast_loads(cbor.portable_dumps(value), 1000), value)


@FAST
@given(VALUES, st.integers(0, 6), st.integers(-2, 1))
def test_depth_and_size_limits_agree(value, max_depth, size_delta):
    data = cbor.portable_dumps(value)
    check_strict(data, max_depth=max_depth)
    check_strict(data, max_size=len(data) + size_delta)


# Items that are not deterministic CBOR (or not CBOR); each is refused wherever it appears.
NON_DETERMINISTIC_ITEMS = {
    "uint 23 in 1 byte": "1817", "uint 255 in 2": "1900ff", "uint in 4": "1a0000ffff",
    "uint in 8": "1b00000000ffffffff", "negative in 1": "3800", "negative in 2": "3900ff",
    "negative in 4": "3a0000ffff", "negative in 8": "3b00000000ffffffff",
    "bstr length in 1": "5800", "bstr length 23 in 1": "5817" + "00" * 23, "bstr length in 2": "59000100",
    "bstr length in 4": "5a0000000100", "bstr length in 8": "5b000000000000000100",
    "text length in 1": "780161", "text length in 2": "79000161",
    "array length in 1": "9800", "array length in 2": "990000", "array length in 4": "9a00000000",
    "array length in 8": "9b0000000000000000", "map length in 1": "b800", "map length in 2": "b90000",
    "tag in 1": "d80600", "tag in 2": "d9000600", "tag 2 in 1": "d80249010000000000000000",
    "bignum fits uint64": "c248ffffffffffffffff", "bignum fits 1 byte": "c24101", "empty bignum": "c240",
    "bignum leading zero": "c24a00010000000000000000", "negative bignum fits": "c34101",
    "bignum length in 1": "c25809010000000000000000", "bignum of text": "c26161",
    "bignum of array": "c280", "bignum of 9-byte text": "c269010000000000000000",
    "bignum of 9-item array": "c289010000000000000000", "indefinite bignum": "c25f4101ff",
    "half fits as single": "fa3fc00000", "single as double": "fb3ff8000000000000",
    "inf as single": "fa7f800000", "inf as double": "fb7ff0000000000000", "-0.0 as single": "fa80000000",
    "-0.0 as double": "fb8000000000000000", "half subnormal as single": "fa33800000",
    "half subnormal as double": "fb3e70000000000000", "single subnormal as double": "fb36a0000000000000",
    "nan payload": "f97e01", "negative nan": "f9fe00", "signalling nan": "f97c01", "single nan": "fa7fc00000",
    "double nan": "fb7ff8000000000000",
    "simple 0 in 2 bytes": "f800", "simple 19 in 2": "f813", "false in 2": "f814", "undefined in 2": "f817",
    "simple 24": "f818", "simple 31": "f81f",
    "ai 28": "1c", "ai 29": "3d", "ai 30": "5e", "ai 28 text": "7c", "ai 28 array": "9c", "ai 28 map": "bc",
    "ai 28 tag": "dc", "ai 28 major 7": "fc", "ai 29 major 7": "fd", "ai 30 major 7": "fe",
    "ai 31 uint": "1f", "ai 31 negative": "3f", "ai 31 tag": "df", "break": "ff",
    "ai 28 then 8 bytes": "1c0000000100000000", "ai 29 then 8 bytes": "1d0000000100000000",
    "ai 30 then 8 bytes": "1e0000000100000000", "ai 28 bstr then 9 bytes": "5c000000000000000100",
    "ai 28 array then 9 bytes": "9c000000000000000100", "ai 28 tag then 9 bytes": "dc000000000000000600",
    "indefinite bstr": "5f4100ff", "empty indefinite bstr": "5fff", "indefinite text": "7f6161ff",
    "indefinite array": "9f01ff", "empty indefinite array": "9fff", "indefinite map": "bf0100ff",
    "utf-8 continuation": "6180", "utf-8 invalid": "62c328", "utf-8 surrogate": "63eda080",
    "utf-8 overlong 2": "62c0af", "utf-8 overlong 3": "63e08080", "utf-8 above U+10FFFF": "64f4908080",
    "utf-8 ff": "61ff",
    "unsorted int keys": "a2020001 00", "duplicate keys": "a201000100", "unsorted text keys": "a2616200616100",
    "length-first order": "a22000190100 00", "unsorted bstr keys": "a2420000004100 00",
    "unsorted mixed keys": "a2616100 0100", "0 and false": "a20000f400", "1 and 1.0": "a20100f93c0000",
    "0 and 0.0": "a20000f9000000", "nan keys": "a2f97e0000f97e0000",
    "map as key": "a1a000", "map in array key": "a181a000", "map in tagged key": "a1c6a000",
    "truncated 1-byte arg": "18", "truncated 2-byte arg": "1901", "truncated 8-byte arg": "1b00",
    "truncated bstr": "4200", "truncated bstr length": "58", "truncated long bstr": "581800",
    "truncated text": "6261", "truncated array": "8201", "truncated map": "a100", "truncated tag": "c6",
    "truncated half": "f900", "truncated single": "fa0000", "truncated double": "fb00",
    "truncated bignum": "c2490100",
}
CONTEXTS = {
    "top": "{}", "array item": "81{}", "second array item": "8201{}", "map value": "a100{}",
    "second map value": "a2000001{}", "map key": "a1{}00", "tag content": "c6{}",
    "array in map": "a10081{}", "map in array": "81a100{}", "array in tag in array": "81c681{}",
}


@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("name", sorted(NON_DETERMINISTIC_ITEMS))
def test_non_deterministic_item_refused_everywhere(name, context):
    data = bytes.fromhex(CONTEXTS[context].format(NON_DETERMINISTIC_ITEMS[name]).replace(" ", ""))
    for loads in (cbor.portable_loads, cpython_cbor.loads):
        with pytest.raises(DecodeError):
            loads(data)
    with pytest.raises(Exception):
        cpython_cbor._fast_loads(data, cbor.DEFAULT_MAX_DEPTH)


BOUNDARY_INTS = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64, 2**72]


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_lengths_at_head_boundaries(n):
    leaves = [b"\x01" * n, "\u00e9" * (n // 2) + "a" * (n % 2)]
    if n <= 256:
        leaves += [[0] * n, {i: 0 for i in range(n)}]
    leaves += BOUNDARY_INTS + [-1 - i for i in BOUNDARY_INTS]
    for leaf in leaves:
        for value in (leaf, [leaf], [1, leaf, 2], {0: leaf}, {0: leaf, 1: leaf}, Tag(6, leaf), [[leaf]]):
            data = cbor.portable_dumps(value)
            check_strict(data)
            assert same(cpython_cbor._fast_loads(data, 8), value)
        if not isinstance(leaf, (list, dict)):
            for value in ({leaf: 0}, {leaf: 0, "~": leaf}, {(leaf, 1): leaf}):
                data = cbor.portable_dumps(value)
                check_strict(data)
                assert same(cpython_cbor._fast_loads(data, 8), value)


def test_every_input_of_up_to_two_bytes():
    for n in range(0x10000):
        check_strict(n.to_bytes(2, "big"))
        if n < 0x100:
            check_strict(bytes([n]))


def test_every_half_float_in_every_width():
    for h in range(0x10000):
        x = struct.unpack(">e", h.to_bytes(2, "big"))[0]
        check_strict(b"\xf9" + h.to_bytes(2, "big"))
        check_strict(b"\xfa" + struct.pack(">f", x))
        check_strict(b"\xfb" + struct.pack(">d", x))


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_single_and_double_bit_patterns(single, double):
    check_strict(b"\xfa" + single.to_bytes(4, "big"))
    check_strict(b"\xfb" + double.to_bytes(8, "big"))


@FAST
@given(FLOATS)
def test_fast_float_bytes_matches_portable(x):
    assert cpython_cbor._float_bytes(x) == cbor.float_bytes(x)


def test_protocol_messages_decode_on_the_fast_path():
    from ledgerlink.core import cose
    from ledgerlink.core.backend import get_backend

    backend = get_backend("cpython")
    priv = bytes(31) + b"\x07"
    dev = bytes(range(16))
    body = cbor.dumps({1: dev, 2: 7, 3: 1_700_000_000_000, 4: {"t": 21.5, "rh": 40, "p": 1013.25}})
    frames = [body, cose.sign1(body, priv, dev, b"ll/s/dev/up", backend),
              cose.encrypt0(body, bytes(16), partial_iv=b"\x07", base_iv=bytes(13), kid=b"s" * 8,
                            external_aad=b"ll/s/dev/up", backend=backend)]
    for data in frames:
        value = cpython_cbor._fast_loads(data, 8)
        assert cbor.portable_dumps(value) == data
        assert same(value, cbor.portable_loads(data, max_depth=8))


@FAST
@given(st.floats(allow_nan=False))
def test_float_shortest_form(x):
    data = cbor.float_bytes(x)
    assert struct.unpack({3: ">e", 5: ">f", 9: ">d"}[len(data)], data[1:])[0] == x
    for fmt, head in ((">e", 0xF9), (">f", 0xFA)):
        try:
            exact = struct.unpack(fmt, struct.pack(fmt, x))[0] == x
        except OverflowError:
            exact = False
        if exact:
            assert data[0] == head
            break
    else:
        assert data[0] == 0xFB
    assert cbor.portable_loads(data) == x


@FAST
@given(st.binary(max_size=12))
def test_utf8_validator_matches_cpython(raw):
    try:
        raw.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert cbor.utf8_valid(raw) is valid


@FAST
@given(st.text(max_size=12))
def test_utf8_validator_accepts_text(text):
    assert cbor.utf8_valid(text.encode("utf-8"))


def test_uint_is_cbor_major_type_0():
    assert cbor.is_uint(0) and cbor.is_uint(2**64 - 1)
    assert not cbor.is_uint(2**64) and not cbor.is_uint(-1) and not cbor.is_uint(True) and not cbor.is_uint(1.0)
