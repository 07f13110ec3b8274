"""Deterministic CBOR for CPython, byte-identical to ``ledgerlink.core.cbor`` (cbor2 encoder, own decoder).

``dumps`` prepares the value and hands it to cbor2's plain encoder, which writes shortest heads,
definite lengths and bignums as tags 2/3 and keeps dict order (cbor2's canonical mode sorts keys
length-first, RFC 7049, not bytewise, RFC 8949). Map keys of one major type are ordered by plain sorts,
which give the bytewise order of their encodings; maps with other keys are encoded pair by pair and
passed to cbor2 as pre-encoded bytes, as are floats (shortest of binary16/32/64 via struct).

``loads`` is a strict one-pass recursive-descent decoder (cbor2 accepts non-shortest heads and unsorted
keys). It makes the portable decoder's checks -- shortest heads, lengths, bignums and floats, definite
lengths, bytewise ordered keys without duplicates (also in Python), UTF-8, simple values, nesting --
and returns the same values. It reads the common small items of arrays and maps inline and checks
bounds once: offsets only grow, so reading past the end raises IndexError or struct.error or leaves
the offset beyond the input, where the final check refuses it. Whatever it refuses raises
``DecodeError`` at once, with no second parse. Its cost is linear in the input: nesting is bounded by
``max_depth``, and a map holds at most ``MAX_COLLIDING_KEYS`` keys whose Python hash a sender can
choose (arrays, tags, bignums and floats: 20,000 bignum keys that hash alike, 258 kB of CBOR, cost
3.5 s to insert into one dict). That limit is the one place it refuses a deterministic encoding
``portable_loads`` accepts.

Against the portable codec, messages with text or integer map keys, byte strings and lists encode
1.6-3x faster and maps whose keys mix types about 1.4x slower; gateway frames, reading bodies and
ledger transactions decode 2-3x faster (1.5-3 us each), large arrays of byte strings up to 3.5x.

``self_check`` runs at import over edge cases (bignums, float widths, NaN, mixed-type keys,
non-deterministic input); only when it passes does this module register itself with
``ledgerlink.core.cbor.register_fast``. Tested in tests/core/test_cbor.py (both codecs compared on
generated values, their non-deterministic encodings, arbitrary and mutated bytes) and
tests/core/test_cbor_strict.py (CPU time of refusing 4 MB hostile frames).
"""

import struct
from bisect import bisect_left
from typing import Any

import cbor2

from ledgerlink.core import cbor as _portable
from ledgerlink.core.cbor import UNDEFINED, Simple, Tag
from ledgerlink.core.errors import DecodeError

_U64_MAX = _portable.UINT_MAX
_pack_e = struct.Struct(">e").pack
_unpack_e = struct.Struct(">e").unpack
_pack_f = struct.Struct(">f").pack
_unpack_f = struct.Struct(">f").unpack
_pack_d = struct.Struct(">d").pack
_LEAVES = frozenset((str, bytes, int, bool, type(None)))


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
    """The input is not one deterministic CBOR data item this decoder accepts."""


MAX_COLLIDING_KEYS = 64      # map keys per map that are arrays, tags, bignums or floats (see above)


_BYTE = tuple(bytes((i,)) for i in range(256))
_SPECIAL = (False, True, None, UNDEFINED)
_unpack_from_h = struct.Struct(">H").unpack_from
_unpack_from_i = struct.Struct(">I").unpack_from
_unpack_from_q = struct.Struct(">Q").unpack_from
_unpack_from_e = struct.Struct(">e").unpack_from
_unpack_from_f = struct.Struct(">f").unpack_from
_unpack_from_d = struct.Struct(">d").unpack_from
_from_bytes = int.from_bytes


def _arg(data: bytes, pos: int, ai: int) -> tuple[int, int]:
    """(argument, next offset) of a head with additional information ``ai`` >= 24 read from ``pos``."""
    if ai == 24:
        arg = data[pos]
        if arg < 24:
            raise _Reject
        return arg, pos + 1
    if ai == 25:
        arg = _unpack_from_h(data, pos)[0]
        if arg < 0x100:
            raise _Reject
        return arg, pos + 2
    if ai == 26:
        arg = _unpack_from_i(data, pos)[0]
        if arg < 0x10000:
            raise _Reject
        return arg, pos + 4
    if ai == 27:
        arg = _unpack_from_q(data, pos)[0]
        if arg < 0x100000000:
            raise _Reject
        return arg, pos + 8
    raise _Reject


def _item(data: bytes, pos: int, room: int) -> tuple[Any, int]:
    """(value, next offset) of the item at ``pos``; ``room`` more arrays, maps and tags may nest.

    Inside arrays and maps, unsigned integers below 24, byte strings shorter than 256 bytes, map keys
    that are text strings shorter than 24 bytes and map values that are unsigned integers are read
    inline, without a call.
    """
    ib = data[pos]
    pos += 1
    if ib >= 0xE0:
        return _major7(data, pos, ib)
    major = ib >> 5
    arg = ib & 31
    if arg >= 24:
        arg, pos = _arg(data, pos, arg)
    if major == 2:
        end = pos + arg
        return data[pos:end], end
    if major == 0:
        return arg, pos
    if major == 4:
        if room <= 0:
            raise _Reject
        room -= 1
        items = []
        append = items.append
        for _ in range(arg):
            ib = data[pos]
            if ib < 0x18:
                append(ib)
                pos += 1
            elif 0x40 <= ib <= 0x58:
                if ib == 0x58:
                    n = data[pos + 1]
                    if n < 24:
                        raise _Reject
                    pos += 2
                else:
                    n = ib - 0x40
                    pos += 1
                end = pos + n
                append(data[pos:end])
                pos = end
            else:
                value, pos = _item(data, pos, room)
                append(value)
        return items, pos
    if major == 5:
        if room <= 0:
            raise _Reject
        room -= 1
        result = {}
        prev = b""
        colliding = 0
        for _ in range(arg):
            ib = data[pos]
            if ib < 0x18:
                kb = _BYTE[ib]
                key = ib
                pos += 1
            elif 0x60 <= ib < 0x78:
                start = pos
                pos += ib - 0x5F
                kb = data[start:pos]
                key = kb[1:].decode("utf-8")
            else:
                if 0x80 <= ib < 0xA0 or 0xC0 <= ib < 0xE0 or ib >= 0xF9:
                    colliding += 1
                    if colliding > MAX_COLLIDING_KEYS:
                        raise _Reject
                start = pos
                key, pos = _key(data, pos, room)
                kb = data[start:pos]
            if kb <= prev:
                raise _Reject
            prev = kb
            ib = data[pos]
            if ib < 0x18:
                result[key] = ib
                pos += 1
            elif 0x40 <= ib <= 0x58:
                if ib == 0x58:
                    n = data[pos + 1]
                    if n < 24:
                        raise _Reject
                    pos += 2
                else:
                    n = ib - 0x40
                    pos += 1
                end = pos + n
                result[key] = data[pos:end]
                pos = end
            elif ib < 0x1C:
                if ib == 0x18:
                    value = data[pos + 1]
                    if value < 24:
                        raise _Reject
                    pos += 2
                elif ib == 0x19:
                    value = _unpack_from_h(data, pos + 1)[0]
                    if value < 0x100:
                        raise _Reject
                    pos += 3
                elif ib == 0x1A:
                    value = _unpack_from_i(data, pos + 1)[0]
                    if value < 0x10000:
                        raise _Reject
                    pos += 5
                else:
                    value = _unpack_from_q(data, pos + 1)[0]
                    if value < 0x100000000:
                        raise _Reject
                    pos += 9
                result[key] = value
            else:
                result[key], pos = _item(data, pos, room)
        if len(result) != arg:
            raise _Reject
        return result, pos
    if major == 3:
        end = pos + arg
        return data[pos:end].decode("utf-8"), end
    if major == 1:
        return -1 - arg, pos
    if arg == 2 or arg == 3:
        return _bignum(data, pos, arg)
    if room <= 0:
        raise _Reject
    value, pos = _item(data, pos, room - 1)
    return Tag(arg, value), pos


def _key(data: bytes, pos: int, room: int) -> tuple[Any, int]:
    """``_item`` for a map key: arrays as tuples (also inside tags), maps refused."""
    ib = data[pos]
    major = ib >> 5
    if major == 5:
        raise _Reject
    if major != 4 and (major != 6 or ib == 0xC2 or ib == 0xC3):
        return _item(data, pos, room)
    if room <= 0:
        raise _Reject
    pos += 1
    arg = ib & 31
    if arg >= 24:
        arg, pos = _arg(data, pos, arg)
    if major == 6:
        value, pos = _key(data, pos, room - 1)
        return Tag(arg, value), pos
    items = []
    for _ in range(arg):
        value, pos = _key(data, pos, room - 1)
        items.append(value)
    return tuple(items), pos


def _major7(data: bytes, pos: int, ib: int) -> tuple[Any, int]:
    """(value, next offset) of a major type 7 item whose initial byte ``ib`` is at ``pos`` - 1."""
    if ib < 0xF4:
        return Simple(ib - 0xE0), pos
    if ib < 0xF8:
        return _SPECIAL[ib - 0xF4], pos
    if ib == 0xF9:
        value = _unpack_from_e(data, pos)[0]
        if value != value and data[pos:pos + 2] != b"\x7e\x00":
            raise _Reject
        return value, pos + 2
    if ib == 0xFA:
        value = _unpack_from_f(data, pos)[0]
        end = pos + 4
    elif ib == 0xFB:
        value = _unpack_from_d(data, pos)[0]
        end = pos + 8
    elif ib == 0xF8:
        value = data[pos]
        if value < 32:
            raise _Reject
        return Simple(value), pos + 1
    else:
        raise _Reject
    if _float_bytes(value) != data[pos - 1:end]:
        raise _Reject
    return value, end


def _bignum(data: bytes, pos: int, tag: int) -> tuple[int, int]:
    """(value, next offset) of the byte string at ``pos`` under tag 2 or 3, in its only accepted form."""
    ib = data[pos]
    if ib >> 5 != 2:
        raise _Reject
    n = ib & 31
    pos += 1
    if n >= 24:
        n, pos = _arg(data, pos, n)
    end = pos + n
    if n == 0 or data[pos] == 0:
        raise _Reject
    value = _from_bytes(data[pos:end], "big")
    if value <= _U64_MAX:
        raise _Reject
    return (value if tag == 2 else -1 - value), end


def _fast_loads(data: bytes, max_depth: int) -> Any:
    """The value ``portable_loads(data, max_depth)`` returns for ``data``.

    Raises some exception (not always DecodeError) on every input ``portable_loads`` refuses, and may
    raise on valid input too (deep nesting that exceeds the interpreter's recursion limit).
    """
    value, pos = _item(data, 0, max_depth)
    if pos != len(data):
        raise _Reject
    return value


def loads(data: bytes | bytearray | memoryview, max_depth: int = _portable.DEFAULT_MAX_DEPTH,
          max_size: int = _portable.DEFAULT_MAX_SIZE) -> Any:
    """Decode like ``portable_loads`` (same values; DecodeError on the same inputs, and on maps with
    more than ``MAX_COLLIDING_KEYS`` keys of hash-collidable types), in time linear in ``len(data)``."""
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError("CBOR input must be bytes")
        data = bytes(data)
    if len(data) > max_size:
        raise DecodeError("CBOR input of %d bytes exceeds max_size %d" % (len(data), max_size))
    try:
        return _fast_loads(data, max_depth)
    except (RecursionError, MemoryError):
        raise DecodeError("CBOR input too deeply nested or too large to decode") from None
    except Exception:
        raise DecodeError("not one deterministic CBOR data item") from None


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
    _portable.register_fast(dumps, loads)
