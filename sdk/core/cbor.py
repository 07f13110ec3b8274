"""Deterministic CBOR (RFC 8949) for ledgerlink messages.

``dumps`` emits the core deterministic encoding of RFC 8949 section 4.2.1: shortest heads, definite
lengths, map keys sorted bytewise by their encoded form (duplicates refused), integers beyond 64 bits
as tag 2/3 bignums without leading zero bytes, floats in the shortest of half/single/double that keeps
the value exactly, every NaN as f97e00.

``loads`` decodes untrusted network data. It protects against malleability and parser confusion by
accepting exactly the deterministic encoding of a value (each accepted value has one byte form), and
against resource exhaustion by bounding work by the input: the input is at most ``max_size`` bytes,
every declared length is checked against the remaining input before anything is allocated, and
nesting of arrays, maps and tags is at most ``max_depth``. Every rejection is a ``DecodeError``:
truncated input, trailing bytes, indefinite lengths or breaks, reserved additional-information values
28-30, non-shortest heads, bignums or floats, unsorted or duplicate map keys, invalid UTF-8, simple
values 24-31, too deep nesting. Tested in tests/core/test_cbor.py with the RFC 8949 Appendix A
examples, one case per malformed class, cross-checks against cbor2 and a fuzz property.

Simple values, floats and bignums are coded by ``cbor_ext``, which this module imports the first time a
value needs it (``cbor.Simple``, ``cbor.UNDEFINED``, ``cbor.float_bytes`` and ``cbor.half_to_float`` load it
too), so a board whose messages hold none of them does not keep that code in its heap.

Python types: int (any size), bytes (bytearray/memoryview encode as byte strings), str, list and tuple
(arrays), dict (maps), bool, None, float, ``Tag``, ``Simple``, ``UNDEFINED``. Decoding gives int, bytes,
str, list, dict, bool, None, float, ``Tag`` (tags other than 2 and 3), ``Simple``, ``UNDEFINED``. Inside a
map key, arrays decode to tuples so the key is hashable; a map inside a map key is refused, and so is a
map with two keys that are distinct in CBOR but equal in Python (1, 1.0 and true; 0, 0.0 and false).

Encoding raises TypeError for unsupported types and ValueError for values CBOR cannot carry (duplicate
encoded keys, Tag 2/3 built by hand, out-of-range tag numbers, strings that are not valid Unicode).

A faster codec that produces identical bytes and accepts identical input can take the place of
``dumps``/``loads`` through ``register_fast`` (on CPython the ``ledgerlink`` package registers one when
it is imported, before any module takes ``dumps`` or ``loads`` by name); the pure ones stay reachable
as ``portable_dumps``/``portable_loads``.
"""

import sys

from ledgerlink.core.errors import DecodeError

DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_SIZE = 1 << 20

UINT_MAX = 0xFFFFFFFFFFFFFFFF                # the largest integer of major type 0
_IS_CPYTHON = sys.implementation.name == "cpython"
# Defined in cbor_ext (simple values, floats, bignums), which loads on first use; ``cbor.Simple`` etc. load it.
_EXT_NAMES = ("Simple", "UNDEFINED", "float_bytes", "half_to_float")


class Tag:
    """Tagged data item: tag number ``tag`` (0 .. 2**64-1) applied to ``value``."""

    def __init__(self, tag, value):
        if not isinstance(tag, int) or isinstance(tag, bool) or tag < 0 or tag > UINT_MAX:
            raise ValueError("tag number must be an integer in 0..2**64-1")
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(("Tag", self.tag, self.value))

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


def _ext():
    from ledgerlink.core import cbor_ext

    return cbor_ext


def __getattr__(name):
    if name in _EXT_NAMES:
        return getattr(_ext(), name)
    raise AttributeError("module 'ledgerlink.core.cbor' has no attribute %r" % name)


# ---------------------------------------------------------------- encoding

def head(major, value):
    """The shortest CBOR head (bytes) of major type ``major`` with argument ``value`` (0..2**64-1)."""
    out = bytearray()
    _head(out, major, value)
    return bytes(out)


def _head(out, major, value):
    """Append the shortest head for major type ``major`` and argument ``value`` (0..2**64-1)."""
    mt = major << 5
    if value < 24:
        out.append(mt | value)
    elif value < 0x100:
        out.append(mt | 24)
        out.append(value)
    elif value < 0x10000:
        out.append(mt | 25)
        out.extend(value.to_bytes(2, "big"))
    elif value < 0x100000000:
        out.append(mt | 26)
        out.extend(value.to_bytes(4, "big"))
    else:
        out.append(mt | 27)
        out.extend(value.to_bytes(8, "big"))


def _encode_int(n, out):
    if n >= 0:
        major = 0
    else:
        major = 1
        n = -1 - n
    if n <= UINT_MAX:
        _head(out, major, n)
    else:
        _ext().encode_bignum(n, major, out)


def _encode(obj, out):
    if obj is False:
        out.append(0xF4)
    elif obj is True:
        out.append(0xF5)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        _encode_int(obj, out)
    elif isinstance(obj, str):
        try:
            raw = obj.encode("utf-8")
        except UnicodeError:
            raise ValueError("text string is not valid Unicode")
        _head(out, 3, len(raw))
        out.extend(raw)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        _head(out, 2, len(raw))
        out.extend(raw)
    elif isinstance(obj, (list, tuple)):
        _head(out, 4, len(obj))
        for item in obj:
            _encode(item, out)
    elif isinstance(obj, dict):
        pairs = []
        for k, v in obj.items():
            kb = bytearray()
            _encode(k, kb)
            pairs.append((bytes(kb), v))
        pairs.sort(key=_first)
        _head(out, 5, len(pairs))
        prev = None
        for kb, v in pairs:
            if kb == prev:
                raise ValueError("map keys with the same encoding")
            prev = kb
            out.extend(kb)
            _encode(v, out)
    elif isinstance(obj, Tag):
        if obj.tag == 2 or obj.tag == 3:
            raise ValueError("tags 2 and 3 are written from int values, not Tag")
        if not isinstance(obj.tag, int) or obj.tag < 0 or obj.tag > UINT_MAX:
            raise ValueError("tag number out of range")
        _head(out, 6, obj.tag)
        _encode(obj.value, out)
    else:
        _ext().encode(obj, out)


def _first(pair):
    return pair[0]


def dumps(obj):
    """Deterministic CBOR encoding (RFC 8949 section 4.2.1) of ``obj`` as bytes."""
    out = bytearray()
    _encode(obj, out)
    return bytes(out)


# ---------------------------------------------------------------- decoding

_MIN_ARG = (24, 0x100, 0x10000, 0x100000000)


def utf8_valid(b):
    """Whether ``b`` is well-formed UTF-8 (RFC 3629: no overlongs, surrogates or values > U+10FFFF)."""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            need = 1
        elif c == 0xE0:
            need = 2
            lo = 0xA0
        elif c == 0xED:
            need = 2
            hi = 0x9F
        elif 0xE1 <= c <= 0xEF:
            need = 2
        elif c == 0xF0:
            need = 3
            lo = 0x90
        elif c == 0xF4:
            need = 3
            hi = 0x8F
        elif 0xF1 <= c <= 0xF3:
            need = 3
        else:
            return False
        if i + need >= n:
            return False
        if not lo <= b[i + 1] <= hi:
            return False
        for j in range(i + 2, i + need + 1):
            if not 0x80 <= b[j] <= 0xBF:
                return False
        i += need + 1
    return True


class _Decoder:
    """Recursive-descent reader over ``data``; ``pos`` is the next unread offset."""

    def __init__(self, data, max_depth):
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.max_depth = max_depth

    def _take(self, n, what):
        pos = self.pos
        if n > self.end - pos:
            raise DecodeError("truncated input: %s needs %d bytes at offset %d, %d left"
                              % (what, n, pos, self.end - pos))
        self.pos = pos + n
        return self.data[pos:pos + n]

    def _argument(self, ai, start):
        n = 1 << (ai - 24)
        value = int.from_bytes(self._take(n, "argument"), "big")
        if value < _MIN_ARG[ai - 24]:
            raise DecodeError("non-shortest head at offset %d" % start)
        return value

    def item(self, depth, in_key):
        data = self.data
        start = self.pos
        if start >= self.end:
            raise DecodeError("truncated input: data item expected at offset %d" % start)
        ib = data[start]
        self.pos = start + 1
        major = ib >> 5
        ai = ib & 31
        if ai >= 28:
            if ai == 31:
                raise DecodeError("indefinite length or break at offset %d" % start)
            raise DecodeError("reserved additional information %d at offset %d" % (ai, start))
        if major == 7:
            if ai == 20:
                return False
            if ai == 21:
                return True
            if ai == 22:
                return None
            return _ext().major7(self, ai, start)
        arg = ai if ai < 24 else self._argument(ai, start)
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return bytes(self._take(arg, "byte string"))
        if major == 3:
            raw = bytes(self._take(arg, "text string"))
            try:
                text = raw.decode("utf-8")
            except UnicodeError:
                raise DecodeError("invalid UTF-8 in text string at offset %d" % start)
            if not _IS_CPYTHON and not utf8_valid(raw):
                raise DecodeError("invalid UTF-8 in text string at offset %d" % start)
            return text
        if major == 6 and (arg == 2 or arg == 3):
            return _ext().bignum(self, arg, start)
        if depth >= self.max_depth:
            raise DecodeError("nesting deeper than %d at offset %d" % (self.max_depth, start))
        if major == 4:
            if arg > self.end - self.pos:
                raise DecodeError("array at offset %d declares %d items, input too short"
                                  % (start, arg))
            items = []
            for _ in range(arg):
                items.append(self.item(depth + 1, in_key))
            return tuple(items) if in_key else items
        if major == 5:
            if in_key:
                raise DecodeError("map used as a map key at offset %d" % start)
            if arg > (self.end - self.pos) // 2:
                raise DecodeError("map at offset %d declares %d pairs, input too short"
                                  % (start, arg))
            result = {}
            prev = None
            for count in range(1, arg + 1):
                kstart = self.pos
                key = self.item(depth + 1, True)
                kb = data[kstart:self.pos]
                if prev is not None:
                    if kb == prev:
                        raise DecodeError("duplicate map key at offset %d" % kstart)
                    if kb < prev:
                        raise DecodeError("map keys not in bytewise order at offset %d" % kstart)
                prev = kb
                value = self.item(depth + 1, False)
                try:
                    result[key] = value
                except TypeError:
                    raise DecodeError("unhashable map key at offset %d" % kstart)
                if len(result) != count:
                    raise DecodeError("map key at offset %d equals an earlier key in Python"
                                      % kstart)
            return result
        return Tag(arg, self.item(depth + 1, in_key))

def is_uint(v):
    """``v`` is a CDDL ``uint``: an int of major type 0 (0 to 2^64 - 1; a bignum is not)."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= UINT_MAX


def loads(data, max_depth=DEFAULT_MAX_DEPTH, max_size=DEFAULT_MAX_SIZE):
    """Decode one deterministic CBOR data item filling all of ``data``; DecodeError otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("CBOR input must be bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise DecodeError("CBOR input of %d bytes exceeds max_size %d" % (len(data), max_size))
    dec = _Decoder(data, max_depth)
    try:
        value = dec.item(0, False)
    except DecodeError:
        raise
    except (RuntimeError, MemoryError):
        raise DecodeError("CBOR input too deeply nested or too large to decode")
    if dec.pos != len(data):
        raise DecodeError("%d trailing bytes after the data item" % (len(data) - dec.pos))
    return value


portable_dumps = dumps
portable_loads = loads


def register_fast(fast_dumps, fast_loads):
    """Make ``dumps``/``loads`` the given codec, which must match the portable one byte for byte."""
    if not callable(fast_dumps) or not callable(fast_loads):
        raise TypeError("register_fast needs a dumps and a loads function")
    global dumps, loads
    dumps = fast_dumps
    loads = fast_loads
