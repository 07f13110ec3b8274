"""The rarely used part of the CBOR codec (``ledgerlink.core.cbor``): simple values, floats and bignums.

``cbor`` imports this module the first time a value needs it, so a device whose messages carry only
integers, strings, arrays, maps, tags, booleans and null never holds this code. The rules are those of ``cbor``'s docstring;
tested with it in tests/core/test_cbor.py.
"""

import struct

from ledgerlink.core.cbor import UINT_MAX, _head
from ledgerlink.core.errors import DecodeError


class Simple:
    """Simple value ``value`` in 0..19 or 32..255 (20..23 are False/True/None/UNDEFINED)."""

    def __init__(self, value):
        if not isinstance(value, int) or isinstance(value, bool) or not (
                0 <= value <= 19 or 32 <= value <= 255):
            raise ValueError("simple value must be in 0..19 or 32..255")
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Simple) and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(("Simple", self.value))

    def __repr__(self):
        return "Simple(%d)" % self.value


class _Undefined:
    """Type of the single ``UNDEFINED`` value (CBOR simple value 23)."""

    def __repr__(self):
        return "UNDEFINED"

    def __bool__(self):
        return False


UNDEFINED = _Undefined()


def float_bytes(x):
    """Shortest exact CBOR encoding (head byte included) of float ``x``; any NaN gives f97e00."""
    bits = int.from_bytes(struct.pack(">d", x), "big")
    sign = bits >> 63
    e = (bits >> 52) & 0x7FF
    m = bits & 0xFFFFFFFFFFFFF
    if e == 0x7FF:
        if m:
            return b"\xf9\x7e\x00"
        return b"\xf9\xfc\x00" if sign else b"\xf9\x7c\x00"
    if e == 0:
        if m == 0:
            return b"\xf9\x80\x00" if sign else b"\xf9\x00\x00"
        return b"\xfb" + bits.to_bytes(8, "big")
    exp = e - 1023
    sig = m | (1 << 52)
    if -14 <= exp <= 15:
        if m & 0x3FFFFFFFFFF == 0:
            h = (sign << 15) | ((exp + 15) << 10) | (m >> 42)
            return b"\xf9" + h.to_bytes(2, "big")
    elif -24 <= exp < -14:
        shift = 28 - exp
        if sig & ((1 << shift) - 1) == 0:
            h = (sign << 15) | (sig >> shift)
            return b"\xf9" + h.to_bytes(2, "big")
    if -126 <= exp <= 127:
        if m & 0x1FFFFFFF == 0:
            f = (sign << 31) | ((exp + 127) << 23) | (m >> 29)
            return b"\xfa" + f.to_bytes(4, "big")
    elif -149 <= exp < -126:
        shift = -97 - exp
        if sig & ((1 << shift) - 1) == 0:
            f = (sign << 31) | (sig >> shift)
            return b"\xfa" + f.to_bytes(4, "big")
    return b"\xfb" + bits.to_bytes(8, "big")


def half_to_float(h):
    """Value of the IEEE 754 binary16 number with bit pattern ``h`` (0..0xffff)."""
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = m * 5.9604644775390625e-08
    elif e == 31:
        v = float("nan") if m else float("inf")
    else:
        v = (m + 1024) * 2.0 ** (e - 25)
    return -v if h & 0x8000 else v


def encode(obj, out):
    """Append the encoding of ``obj`` (a float, ``Simple`` or ``UNDEFINED``); TypeError for any other type."""
    if obj is UNDEFINED:
        out.append(0xF7)
    elif isinstance(obj, float):
        out.extend(float_bytes(obj))
    elif isinstance(obj, Simple):
        if obj.value < 24:
            out.append(0xE0 | obj.value)
        else:
            out.append(0xF8)
            out.append(obj.value)
    else:
        raise TypeError("cannot encode %s as CBOR" % type(obj).__name__)


def encode_bignum(n, major, out):
    """Append tag 2 (``major`` 0) or 3 (``major`` 1) around the big-endian bytes of ``n`` (> 2**64-1)."""
    raw = n.to_bytes((len(hex(n)) - 1) // 2, "big")
    out.append(0xC2 + major)
    _head(out, 2, len(raw))
    out.extend(raw)


# ---------------------------------------------------------------- decoding (``dec`` is a cbor._Decoder)

def bignum(dec, tag, start):
    """The integer of tag ``tag`` (2 or 3) whose content starts at ``dec.pos``."""
    data = dec.data
    if dec.pos >= dec.end:
        raise DecodeError("truncated input: bignum content missing at offset %d" % dec.pos)
    ib = data[dec.pos]
    dec.pos += 1
    if ib >> 5 != 2:
        raise DecodeError("tag %d at offset %d must enclose a byte string" % (tag, start))
    ai = ib & 31
    if ai < 24:
        length = ai
    elif ai < 28:
        length = dec._argument(ai, dec.pos - 1)
    else:
        raise DecodeError("indefinite or reserved length in bignum at offset %d" % start)
    raw = dec._take(length, "bignum")
    if length == 0 or raw[0] == 0:
        raise DecodeError("bignum with leading zero bytes at offset %d" % start)
    value = int.from_bytes(raw, "big")
    if value <= UINT_MAX:
        raise DecodeError("bignum at offset %d fits a plain integer" % start)
    return value if tag == 2 else -1 - value


def major7(dec, ai, start):
    """The simple value or float of major type 7 with additional information ``ai`` (not 20-22) at ``start``."""
    if ai < 20:
        return Simple(ai)
    if ai == 23:
        return UNDEFINED
    if ai == 24:
        value = dec._take(1, "simple value")[0]
        if value < 32:
            raise DecodeError("simple value %d in two-byte form at offset %d" % (value, start))
        return Simple(value)
    raw = dec._take(1 << (ai - 24), "float")
    if ai == 25:
        value = half_to_float(int.from_bytes(raw, "big"))
    elif ai == 26:
        value = struct.unpack(">f", raw)[0]
    else:
        value = struct.unpack(">d", raw)[0]
    if float_bytes(value) != dec.data[start:dec.pos]:
        raise DecodeError("float at offset %d not in shortest form" % start)
    return value
