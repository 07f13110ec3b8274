"""NIST P-256 (secp256r1) arithmetic in the portable Python subset.

Points at the API boundary are affine tuples ``(x, y)`` of ints, or ``None`` for the point at infinity.
``base_mult``, ``mult`` and ``add`` live in ``p256_ct`` (loaded when first named here), so a board that only
checks signatures holds the variable-time half alone.

Secret scalars (private keys, nonces, ECQV values) only go through ``base_mult`` and ``mult``:
- both use the complete projective formulas of Renes, Costello and Batina (2016, Algorithms 4 and 6,
  a = -3), so no input point, including infinity and doubling cases, needs a branch;
- the sequence of field operations is the same for every scalar: a fixed number of doublings and
  additions, and every table entry is read on every step and combined with an arithmetic mask
  (``_select``), so no branch and no table index depends on the scalar;
- ``base_mult`` (``BASE_METHOD``): on CPython 52 signed odd 5-bit digits, no doublings and 51
  complete mixed additions over per-window tables of 16 odd multiples of G made on first use; on
  MicroPython a 4-tooth comb, 64 doublings and 64 mixed additions over the 16 entries of ``_COMB``;
- ``mult`` is a fixed 4-bit window (63 of four doublings and one addition) over 1*Q .. 16*Q.
What is *not* claimed: big-integer arithmetic of the interpreter (CPython or MicroPython mpz) may take
time that depends on operand values (e.g. normalisation of leading zero limbs). ``tools/leakage.py``
measures it (dudect-style Welch t-test on time and on MicroPython fuel); tests/core/test_ecdsa_ecdh.py
checks the arithmetic against OpenSSL, the tables against first principles and the fixed operation counts.

``mul_add_vartime`` (u1*G + u2*Q, used by signature verification) works on public data only and is
variable-time (Jacobian coordinates, width-w NAF, interleaved).
"""

import sys

from ledgerlink.core.errors import InvalidPoint, InvalidScalar

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
A = P - 3
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
G = (GX, GY)

_MASK256 = (1 << 256) - 1
_INF = (0, 1, 0)
_FAST_INV = sys.implementation.name == "cpython"  # MicroPython's pow(x, -1, m) is not an inverse
try:
    from os import urandom as _urandom
except ImportError:
    _urandom = None


# Per-window tables (52 x 16 affine points, about 90 KB) where memory is plentiful; the 16-entry comb
# on boards.
BASE_METHOD = "windows" if sys.implementation.name == "cpython" else "comb"


# --- field helpers ---------------------------------------------------------------------------

def _inv(z):
    """Inverse of public z mod p."""
    if _FAST_INV:
        return pow(z, -1, P)
    return pow(z, P - 2, P)


def _to_affine(pt, inverse=None):
    x, y, z = pt
    if z % P == 0:
        return None
    zi = (inverse or _inv)(z)
    return (x * zi % P, y * zi % P)


def is_on_curve(pt):
    """True when the affine point ``pt`` lies on the curve (coordinates in range)."""
    if pt is None:
        return False
    x, y = pt
    if not (0 <= x < P and 0 <= y < P):
        return False
    return (y * y - (x * x * x - 3 * x + B)) % P == 0


def negate(pt):
    if pt is None:
        return None
    return (pt[0], (P - pt[1]) % P)


# --- variable-time arithmetic for public data (Jacobian coordinates) -------------------------

# Each temporary is let go as soon as it is used: a board's collector can then reclaim it during the
# addition, and a signature check holds fewer 256-bit integers at once (less heap at its peak).
def _jdouble(pt, P=P, B=B):
    x1, y1, z1 = pt
    if z1 == 0 or y1 == 0:
        return (1, 1, 0)
    delta = z1 * z1 % P
    gamma = y1 * y1 % P
    beta = x1 * gamma % P
    alpha = 3 * (x1 - delta) * (x1 + delta) % P
    z3 = ((y1 + z1) * (y1 + z1) - gamma - delta) % P
    delta = None
    x3 = (alpha * alpha - 8 * beta) % P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P
    return (x3, y3, z3)


def _jadd_affine(pt, x2, y2, P=P, B=B):
    x1, y1, z1 = pt
    if z1 == 0:
        return (x2, y2, 1)
    z1z1 = z1 * z1 % P
    h = (x2 * z1z1 - x1) % P
    r = 2 * (y2 * z1 * z1z1 - y1) % P
    if h == 0:
        if r == 0:
            return _jdouble(pt)
        return (1, 1, 0)
    hh = h * h % P
    z3 = ((z1 + h) * (z1 + h) - z1z1 - hh) % P
    z1z1 = None
    i = 4 * hh
    hh = None
    j = h * i % P
    v = x1 * i % P
    i = None
    x3 = (r * r - j - 2 * v) % P
    y3 = (r * (v - x3) - 2 * y1 * j) % P
    return (x3, y3, z3)


def _jadd(p1, p2, P=P, B=B):
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if z1 == 0:
        return p2
    if z2 == 0:
        return p1
    z1z1 = z1 * z1 % P
    z2z2 = z2 * z2 % P
    u1 = x1 * z2z2 % P
    h = (x2 * z1z1 - u1) % P
    s1 = y1 * z2 * z2z2 % P
    r = 2 * (y2 * z1 * z1z1 - s1) % P
    if h == 0:
        if r == 0:
            return _jdouble(p1)
        return (1, 1, 0)
    z3 = ((z1 + z2) * (z1 + z2) - z1z1 - z2z2) * h % P
    z1z1 = z2z2 = None
    i = 4 * h * h % P
    j = h * i % P
    v = u1 * i % P
    i = u1 = None
    x3 = (r * r - j - 2 * v) % P
    y3 = (r * (v - x3) - 2 * s1 * j) % P
    return (x3, y3, z3)


def _jaffine(pt):
    x, y, z = pt
    if z == 0:
        return None
    zi = _inv(z)
    zi2 = zi * zi % P
    return (x * zi2 % P, y * zi2 * zi % P)


def _wnaf(k, w, out):
    """Width-``w`` NAF digits of ``k`` (least significant first) into ``out`` as two's complement
    bytes; returns how many. ``out`` is preallocated: a list grown digit by digit needs a 1 KB block
    on a board's heap, which a fragmented heap may not have."""
    half = 1 << (w - 1)
    full = 1 << w
    n = 0
    while k:
        if k & 1:
            d = k & (full - 1)
            if d >= half:
                d -= full
            k -= d
        else:
            d = 0
        out[n] = d & 0xFF
        n += 1
        k >>= 1
    return n


_NAF_LEN = 258  # digits of a scalar below 2^257
_naf_a = bytearray(_NAF_LEN)
_naf_b = bytearray(_NAF_LEN)
_G_WINDOW = 7 if sys.implementation.name == "cpython" else 5
# Width of the digits for the point Q of a verification, whose odd multiples are computed for each one: on a
# board 2 (plain NAF, Q alone: 1.4 KB less heap at each receipt, ack and command check than width 4, for
# about 10% more time).
_Q_WINDOW = 4 if sys.implementation.name == "cpython" else 2
_g_odd = []


def _g_table():
    """The odd multiples of G that width-``_G_WINDOW`` digits use, as one bytes object, 64 bytes (x, y)
    each; ``_g_point`` reads an entry. A board's window takes ``_G_ODD`` itself (read in place from
    ROMFS: no heap); a wider one (CPython) is computed once."""
    if not _g_odd:
        count = 1 << (_G_WINDOW - 2)
        if 64 * count <= len(_G_ODD):
            _g_odd.append(_G_ODD)
        else:
            _g_odd.append(b"".join(x.to_bytes(32, "big") + y.to_bytes(32, "big") for x, y in _compute_g_table(count)))
    return _g_odd[0]


def _g_point(table, i):
    at = 64 * i
    return int.from_bytes(table[at:at + 32], "big"), int.from_bytes(table[at + 32:at + 64], "big")


def _compute_g_table(count):
    """Odd multiples 1*G, 3*G, ..., (2*count-1)*G from first principles."""
    g = (GX, GY, 1)
    twice = _jdouble(g)
    acc = g
    out = []
    for _ in range(count):
        out.append(_jaffine(acc))
        acc = _jadd(acc, twice)
    return out


def _mul_add_jacobian(a, b, q):
    gt = _g_table()
    qj = (q[0], q[1], 1)
    qt = [qj]                           # the odd multiples of Q that width-_Q_WINDOW digits use
    if _Q_WINDOW > 2:
        q2 = _jdouble(qj)
        for _ in range((1 << (_Q_WINDOW - 2)) - 1):
            qt.append(_jadd(qt[-1], q2))
        q2 = None
    na, nb = _naf_a, _naf_b
    len_a = _wnaf(a % N, _G_WINDOW, na)
    len_b = _wnaf(b % N, _Q_WINDOW, nb)
    acc = (1, 1, 0)
    i = max(len_a, len_b) - 1
    while i >= 0:
        acc = _jdouble(acc)
        if i < len_a:
            d = na[i]
            if 0 < d < 128:
                x, y = _g_point(gt, d >> 1)
                acc = _jadd_affine(acc, x, y)
            elif d:
                x, y = _g_point(gt, (256 - d) >> 1)
                acc = _jadd_affine(acc, x, P - y)
        if i < len_b:
            d = nb[i]
            if 0 < d < 128:
                acc = _jadd(acc, qt[d >> 1])
            elif d:
                x, y, z = qt[(256 - d) >> 1]
                acc = _jadd(acc, (x, P - y, z))
        i -= 1
    return acc


def mul_add_vartime(a, b, q):
    """a*G + b*Q for public scalars and a validated public point Q; None for infinity."""
    return _jaffine(_mul_add_jacobian(a, b, q))


def mul_vartime(k, q):
    """k*Q for public k and a validated public point Q; None for infinity."""
    return _jaffine(_mul_add_jacobian(0, k, q))


def mul_add_x_equals(a, b, q, r):
    """True when a*G + b*Q is finite and its x coordinate reduced mod n equals r (ECDSA check)."""
    x, _, z = _mul_add_jacobian(a, b, q)
    if z == 0:
        return False
    z2 = z * z % P
    if (r * z2 - x) % P == 0:
        return True
    rn = r + N
    return rn < P and (rn * z2 - x) % P == 0


# --- encodings -------------------------------------------------------------------------------

def scalar_from_bytes(data):
    """Decode a 32-byte big-endian scalar in [1, n-1]; raise InvalidScalar otherwise."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != 32:
        raise InvalidScalar("scalar must be 32 bytes")
    k = int.from_bytes(data, "big")
    if not 0 < k < N:
        raise InvalidScalar("scalar out of range [1, n-1]")
    return k


def scalar_to_bytes(k):
    return (k % N).to_bytes(32, "big")


def _sqrt(v):
    root = pow(v, (P + 1) // 4, P)
    if root * root % P != v % P:
        return None
    return root


def decode_point(data):
    """Decode a SEC 1 point (33-byte compressed or 65-byte uncompressed) with full validation."""
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidPoint("point must be bytes")
    if len(data) == 65 and data[0] == 4:
        x = int.from_bytes(data[1:33], "big")
        y = int.from_bytes(data[33:], "big")
        if x >= P or y >= P:
            raise InvalidPoint("point coordinate out of range")
        if not is_on_curve((x, y)):
            raise InvalidPoint("point is not on P-256")
        return (x, y)
    if len(data) == 33 and data[0] in (2, 3):
        x = int.from_bytes(data[1:], "big")
        if x >= P:
            raise InvalidPoint("point coordinate out of range")
        y = _sqrt((x * x * x - 3 * x + B) % P)
        if y is None:
            raise InvalidPoint("compressed point is not on P-256")
        if (y & 1) != (data[0] & 1):
            y = P - y
        return (x, y)
    if len(data) == 1 and data[0] == 0:
        raise InvalidPoint("point at infinity is not a valid public key")
    raise InvalidPoint("point must be 33 bytes (02/03 prefix) or 65 bytes (04 prefix)")


def encode_point(pt, compressed=False):
    """SEC 1 encoding of an affine point; compressed is 33 bytes, uncompressed 65."""
    if pt is None:
        raise InvalidPoint("cannot encode the point at infinity")
    x, y = pt
    if compressed:
        return bytes((2 | (y & 1),)) + x.to_bytes(32, "big")
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


_G_ODD = (
    b"\x6b\x17\xd1\xf2\xe1\x2c\x42\x47\xf8\xbc\xe6\xe5\x63\xa4\x40\xf2\x77\x03\x7d\x81\x2d\xeb\x33\xa0"
    b"\xf4\xa1\x39\x45\xd8\x98\xc2\x96\x4f\xe3\x42\xe2\xfe\x1a\x7f\x9b\x8e\xe7\xeb\x4a\x7c\x0f\x9e\x16"
    b"\x2b\xce\x33\x57\x6b\x31\x5e\xce\xcb\xb6\x40\x68\x37\xbf\x51\xf5\x5e\xcb\xe4\xd1\xa6\x33\x0a\x44"
    b"\xc8\xf7\xef\x95\x1d\x4b\xf1\x65\xe6\xc6\xb7\x21\xef\xad\xa9\x85\xfb\x41\x66\x1b\xc6\xe7\xfd\x6c"
    b"\x87\x34\x64\x0c\x49\x98\xff\x7e\x37\x4b\x06\xce\x1a\x64\xa2\xec\xd8\x2a\xb0\x36\x38\x4f\xb8\x3d"
    b"\x9a\x79\xb1\x27\xa2\x7d\x50\x32\x51\x59\x0b\x7a\x51\x51\x40\xd2\xd7\x84\xc8\x56\x08\x66\x8f\xdf"
    b"\xef\x8c\x82\xfd\x1f\x5b\xe5\x24\x21\x55\x4a\x0d\xc3\xd0\x33\xed\xe0\xc1\x7d\xa8\x90\x4a\x72\x7d"
    b"\x8a\xe1\xbf\x36\xbf\x8a\x79\x26\x0d\x01\x2f\x00\xd4\xd8\x08\x88\xd1\xd0\xbb\x44\xfd\xa1\x6d\xa4"
    b"\x8e\x53\x3b\x6f\xa0\xbf\x7b\x46\x25\xbb\x30\x66\x7c\x01\xfb\x60\x7e\xf9\xf8\xb8\xa8\x0f\xef\x5b"
    b"\x30\x06\x28\x70\x31\x87\xb2\xa3\x73\xeb\x1d\xbd\xe0\x33\x18\x36\x6d\x06\x9f\x83\xa6\xf5\x90\x00"
    b"\x53\xc7\x36\x33\xcb\x04\x1b\x21\xc5\x5e\x1a\x86\xc1\xf4\x00\xb4\xea\x68\xd7\xb6\xfe\xdf\x0b\x71"
    b"\x87\x89\x38\xd5\x1d\x71\xf8\x72\x9e\x0a\xcb\x8c\x2c\x6d\xf8\xb3\xd7\x9e\x8a\x4b\x90\x94\x9e\xe0"
    b"\x2a\x27\x44\xc9\x72\xc9\xfc\xe7\x87\x01\x4a\x96\x4a\x8e\xa0\xc8\x4d\x71\x4f\xea\xa4\xde\x82\x3f"
    b"\xe8\x5a\x22\x4a\x4d\xd0\x48\xfa\x3e\xd1\x13\xb7\x88\x3b\x4c\x59\x06\x38\x37\x9d\xb0\xc2\x1c\xda"
    b"\x16\x74\x2e\xd0\x25\x50\x48\xbf\x43\x33\x91\xd3\x74\xbc\x21\xd1\x90\x99\x20\x9a\xcc\xc4\xc8\xa2"
    b"\x24\xc8\x43\xaf\xa4\xf4\xc6\x8a\x09\x0d\x04\xda\x5e\x98\x89\xda\xe2\xf8\xee\xfc\xe8\x2a\x37\x40"
    b"\x17\x7c\x83\x7a\xe0\xac\x49\x5a\x61\x80\x5d\xf2\xd8\x5e\xe2\xfc\x79\x2e\x28\x4b\x65\xea\xd5\x8a"
    b"\x98\xe1\x5d\x9d\x46\x07\x2c\x01\x63\xbb\x58\xcd\x4e\xbe\xa5\x58\xa2\x40\x91\xad\xb4\x0f\x4e\x72"
    b"\x26\xee\x14\xc3\xa1\xfb\x4d\xf3\x9c\x43\xbb\xe2\xef\xc7\xbf\xd8\xf0\x45\x4d\xc6\x97\x1a\xba\xe7"
    b"\xad\xfb\x37\x89\x99\x88\x82\x65\xae\x03\xaf\x92\xde\x3a\x0e\xf1\x63\x66\x8c\x63\xe5\x9b\x9d\x5f"
    b"\xb5\xb9\x3e\xe3\x59\x2e\x2d\x1f\x4e\x65\x94\xe5\x1f\x96\x43\xe6\x2a\x3b\x21\xce\x75\xb5\xfa\x3f"
    b"\x47\xe5\x9c\xde\x0d\x03\x4f\x36"
)


# Secret-scalar multiplication and complete additions (``p256_ct``), named here and loaded when first used.
_CT = ("_inv_secret", "_to_affine_secret", "_add", "_add_affine", "_double", "_pack",
       "_unpack", "_select", "_windows", "_WINDOWS", "_SENTINEL", "_SHIFT16",
       "_SHIFT_COMB", "_comb_table", "_compute_comb_table", "_window_tables", "_normalize", "_check_scalar",
       "_select_affine", "_base_mult_windows", "_base_mult_comb", "base_mult", "mult", "add",
       "add_vartime", "_COMB")


def __getattr__(name):
    """A name of ``p256_ct`` (k*G and k*Q for secret k, complete point additions). CPython keeps it here once
    looked up; MicroPython looks it up each time, so a board can forget ``p256_ct`` after signing, ECDH or
    a session opening and check signatures with this module alone."""
    if name in _CT:
        from ledgerlink.core import p256_ct

        value = getattr(p256_ct, name)
        if sys.implementation.name == "cpython":
            globals()[name] = value
        return value
    raise AttributeError(name)
