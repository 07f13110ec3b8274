"""cbor2-backed deterministic CBOR for CPython, byte-identical to ``ledgerlink.core.cbor``.

``dumps`` prepares the value and hands it to cbor2's plain encoder, which already writes shortest
heads, definite lengths and bignums as tags 2/3 and keeps dict order. cbor2's canonical mode is not
used: it is slower and sorts map keys length-first (RFC 7049), not bytewise (RFC 8949). Maps are
therefore re-ordered here: keys of one major type (all text, all byte strings, all integers) by plain
sorts, which give the bytewise order of their encodings; maps with other keys are encoded pair by pair
and passed to cbor2 as pre-encoded bytes, as are floats (shortest of binary16/32/64 via struct).

``loads`` keeps the portable decoder's strictness by construction: cbor2 decodes, the result is
converted to ledgerlink types, and the input is accepted only when the deterministic encoding of that
value equals it byte for byte (that encoding is unique). Anything else -- a cbor2 error, types only
cbor2 produces (dates, sets, ...), too deep nesting, a mismatch -- goes to ``portable_loads``, which
returns the authoritative value or raises ``DecodeError``. Invalid input thus costs both decoders.

Against the portable codec, messages with text or integer map keys, byte strings and lists encode
1.6-3x and decode 1.3-2.8x faster; many small nested maps decode at the same speed, and maps whose
keys mix types are slower (about 1.4x to encode, 2x to decode).

Protects against: divergence between the two codecs. ``self_check`` runs at import over edge cases
(bignums, float widths, NaN, mixed-type keys, non-deterministic input) and only when it passes does
this module install itself as ``ledgerlink.core.cbor.dumps``/``loads``. Tested in
tests/core/test_cbor.py by property tests comparing both codecs on generated values and on arbitrary
and mutated bytes.
"""

import struct
from bisect import bisect_left
from typing import Any

import cbor2

from ledgerlink.core import cbor as _portable
from ledgerlink.core.cbor import UNDEFINED, Simple, Tag
from ledgerlink.core.errors import DecodeError

_U64_MAX = 0xFFFFFFFFFFFFFFFF
_pack_e = struct.Struct(">e").pack
_unpack_e = struct.Struct(">e").unpack
_pack_f = struct.Struct(">f").pack
_unpack_f = struct.Struct(">f").unpack
_pack_d = struct.Struct(">d").pack
_LEAVES = frozenset((str, bytes, int, bool, type(None)))
_SCALARS = frozenset((str, bytes, int, float, bool, type(None)))


class _Raw:
    """Bytes that are already deterministic CBOR, written as they are."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _write_raw(encoder: cbor2.CBOREncoder, value: Any) -> None:
    if type(value) is _Raw:
        encoder.write(value.data)
        return
    raise TypeError("cannot encode %s as CBOR" % type(value).__name__)


_NAN = b"\xf9\x7e\x00"


def _float_bytes(x: float) -> bytes:
    """``float_bytes`` of the portable codec, through struct's binary16/32 packing."""
    if x != x:
        return _NAN
    try:
        h = _pack_e(x)
        if _unpack_e(h)[0] == x:
            return b"\xf9" + h
    except OverflowError:
        pass
    try:
        f = _pack_f(x)
        if _unpack_f(f)[0] == x:
            return b"\xfa" + f
    except OverflowError:
        pass
    return b"\xfb" + _pack_d(x)


def _utf8_len(k: str) -> int:
    return len(k.encode("utf-8"))


def _sorted_keys(d: dict) -> list | None:
    """Keys of ``d`` in bytewise order of their encodings, or None when they need encoding first.

    Within one major type of text, byte string or integer keys, a shorter encoding sorts first and
    equal lengths compare like the values (UTF-8 keeps code point order), so plain sorts suffice.
    """
    first = next(iter(d))
    kt = type(first)
    if len(d) == 1 and kt in _LEAVES:
        return [first]
    try:
        if kt is str:
            joined = "".join(d)
            keys = sorted(d)
            keys.sort(key=len if joined.isascii() else _utf8_len)
            return keys
        if kt is bytes:
            b"".join(d)
            keys = sorted(d)
            if all(type(k) is bytes for k in keys):
                keys.sort(key=len)
                return keys
            return None
    except TypeError:
        return None
    if kt is int and all(type(k) is int for k in d):
        keys = sorted(d)
        if keys[0] >= 0:
            return keys
        if keys[-1] < 0:
            keys.reverse()
            return keys
        if keys[0] >= -_U64_MAX - 1 and keys[-1] <= _U64_MAX:
            split = bisect_left(keys, 0)
            return keys[split:] + keys[split - 1::-1]
    return None


def _prep(obj: Any) -> Any:
    """Copy of ``obj`` for cbor2's plain encoder; TypeError/ValueError as the portable encoder."""
    t = type(obj)
    if t in _LEAVES:
        return obj
    if t is list or t is tuple:
        for x in obj:
            if type(x) not in _LEAVES:
                return [x if type(x) in _LEAVES else _prep(x) for x in obj]
        return obj
    if t is dict:
        if not obj:
            return obj
        keys = _sorted_keys(obj)
        if keys is not None:
            out = {}
            for k in keys:
                v = obj[k]
                out[k] = v if type(v) in _LEAVES else _prep(v)
            return out
        pairs = sorted(((dumps(k), v) for k, v in obj.items()), key=_first)
        raw = bytearray()
        _portable._head(raw, 5, len(pairs))
        prev = None
        for kb, v in pairs:
            if kb == prev:
                raise ValueError("map keys with the same encoding")
            prev = kb
            raw += kb
            raw += dumps(v)
        return _Raw(bytes(raw))
    if t is float:
        return _Raw(_float_bytes(obj))
    if t is Tag:
        if obj.tag == 2 or obj.tag == 3:
            raise ValueError("tags 2 and 3 are written from int values, not Tag")
        if type(obj.tag) is not int or obj.tag < 0 or obj.tag > _U64_MAX:
            raise ValueError("tag number out of range")
        return cbor2.CBORTag(obj.tag, _prep(obj.value))
    if t is Simple:
        return cbor2.CBORSimpleValue(obj.value)
    if obj is UNDEFINED:
        return cbor2.undefined
    if t is bytearray or t is memoryview:
        return bytes(obj)
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, str):
        return _prep(str(obj))
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, float):
        return _prep(float(obj))
    if isinstance(obj, (list, tuple)):
        return [_prep(x) for x in obj]
    if isinstance(obj, dict):
        return _prep(dict(obj))
    if isinstance(obj, Tag):
        return _prep(Tag(obj.tag, obj.value))
    if isinstance(obj, Simple):
        return _prep(Simple(obj.value))
    raise TypeError("cannot encode %s as CBOR" % t.__name__)


def _first(pair: tuple) -> bytes:
    return pair[0]


def dumps(obj: Any) -> bytes:
    """Deterministic CBOR (RFC 8949 section 4.2.1) of ``obj``; same bytes as ``portable_dumps``."""
    prepared = _prep(obj)
    if type(prepared) is _Raw:
        return prepared.data
    return cbor2.dumps(prepared, default=_write_raw)


class _Reject(Exception):
    """The cbor2 result is not one the portable decoder could return."""


def _convert(obj: Any, depth: int, max_depth: int, in_key: bool) -> Any:
    """``obj`` from cbor2.loads in ledgerlink types, converted in place where possible."""
    t = type(obj)
    if t in _SCALARS:
        return obj
    if t is list and not in_key:
        if depth >= max_depth:
            raise _Reject
        for i, x in enumerate(obj):
            if type(x) not in _SCALARS:
                obj[i] = _convert(x, depth + 1, max_depth, False)
        return obj
    if t is tuple or t is list:
        if depth >= max_depth:
            raise _Reject
        items = [x if type(x) in _SCALARS else _convert(x, depth + 1, max_depth, in_key)
                 for x in obj]
        return tuple(items) if in_key else items
    if t is cbor2.frozendict and not in_key:
        if depth >= max_depth:
            raise _Reject
        return {_convert(k, depth + 1, max_depth, True): _convert(v, depth + 1, max_depth, False)
                for k, v in obj.items()}
    if t is dict and not in_key:
        if depth >= max_depth:
            raise _Reject
        for k in obj:
            if type(k) not in _SCALARS:
                return {_convert(k, depth + 1, max_depth, True): _convert(v, depth + 1, max_depth, False)
                        for k, v in obj.items()}
        for k, v in obj.items():
            if type(v) not in _SCALARS:
                obj[k] = _convert(v, depth + 1, max_depth, False)
        return obj
    if t is cbor2.CBORTag:
        if depth >= max_depth or obj.tag == 2 or obj.tag == 3:
            raise _Reject
        return Tag(obj.tag, _convert(obj.value, depth + 1, max_depth, in_key))
    if t is cbor2.CBORSimpleValue:
        return Simple(obj.value)
    if obj is cbor2.undefined:
        return UNDEFINED
    raise _Reject


def loads(data: bytes | bytearray | memoryview, max_depth: int = _portable.DEFAULT_MAX_DEPTH,
          max_size: int = _portable.DEFAULT_MAX_SIZE) -> Any:
    """Decode like ``portable_loads`` (same values, same DecodeError cases), usually faster."""
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError("CBOR input must be bytes")
        data = bytes(data)
    if len(data) <= max_size:
        try:
            value = _convert(cbor2.loads(data, max_depth=min(max_depth + 1, 400),
                                         allow_indefinite=False),
                             0, max_depth, False)
            if dumps(value) == data:
                return value
        except Exception:
            pass
    return _portable.portable_loads(data, max_depth, max_size)


_CHECK_VALUES = (
    0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, _U64_MAX, 2**64, 2**200, -1, -24, -25,
    -2**64, -2**64 - 1, -2**200, 0.0, -0.0, 1.5, 65504.0, 100000.0, 5.960464477539063e-8,
    1.401298464324817e-45, 1.1, float("inf"), float("-inf"), float("nan"), 1e300,
    "", "a", "\u00fc\u6c34\U00010151", b"", b"\x00" * 30, True, False, None, UNDEFINED,
    Simple(0), Simple(19), Simple(32), Simple(255), Tag(1, 1.5), Tag(_U64_MAX, [1]),
    [], [1, [2, [3]]], (1, "x"),
    {"b": 1, "aa": 2, "": 3}, {256: 1, -1: 2, 24: 3, 2**64: 4, -2**64 - 1: 5},
    {b"b": 1, "a": 2, 1: 3, (1, 2): 4, 1.5: 5, Tag(5, 1): 6, False: 7, None: 8},
    {(1000,): 1, (1, 1): 2, "x": {10: [], -10: {}}},
    Tag(6, [Tag(7, {1: [2]}), {}]),
)


def self_check() -> bool:
    """Whether this codec matches the portable one on a fixed set of edge cases."""
    for value in _CHECK_VALUES:
        fast = dumps(value)
        if fast != _portable.portable_dumps(value):
            return False
        back = loads(fast)
        if _portable.portable_dumps(back) != fast or type(back) is not type(
                _portable.portable_loads(fast)):
            return False
    for bad in (b"\x18\x00", b"\xa2\x02\x00\x01\x00", b"\xa2\x01\x00\x01\x00", b"\xfa\x3f\xc0\x00\x00",
                b"\xc2\x41\x01", b"\x5f\x40\xff", b"\x62\xc3\x28", b"\x01\x00", b"\xf8\x10"):
        try:
            loads(bad)
        except DecodeError:
            continue
        return False
    return True


try:
    _CHECKED = self_check()
except Exception:
    _CHECKED = False
if _CHECKED:
    _portable._use_fast(dumps, loads)
