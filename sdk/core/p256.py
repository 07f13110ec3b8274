"""NIST P-256 (secp256r1) arithmetic in the portable Python subset.

Points at the API boundary are affine tuples ``(x, y)`` of ints, or ``None`` for the point at infinity.

Secret scalars (private keys, nonces, ECQV values) only go through ``base_mult`` and ``mult``:
- both use the complete projective formulas of Renes, Costello and Batina (2016, Algorithms 4 and 6,
  a = -3), so no input point, including infinity and doubling cases, needs a branch;
- the sequence of field operations is the same for every scalar: a fixed number of doublings and
  additions, and every table entry is read on every step and combined with an arithmetic mask
  (``_select``), so no branch and no table index depends on the scalar;
- ``base_mult`` is a fixed-base comb (4 teeth, 64 rows, a 16-entry table built once);
  ``mult`` is a fixed 4-bit window over a 16-entry table of multiples of the point.
What is *not* claimed: big-integer arithmetic of the interpreter (CPython or MicroPython mpz) may take
time that depends on operand values (e.g. normalisation of leading zero limbs). ``tools/leakage.py``
measures it (dudect-style Welch t-test on time and on MicroPython fuel); tests/core/test_p256.py
checks the arithmetic against independent implementations and the fixed operation counts.

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


# --- field helpers ---------------------------------------------------------------------------

def _inv(z):
    """Inverse of public z mod p."""
    if _FAST_INV:
        return pow(z, -1, P)
    return pow(z, P - 2, P)


def _inv_secret(z):
    """Inverse of a secret-derived z mod p.

    Fermat inversion (a fixed exponent) on ports without a built-in modular inverse; where the
    interpreter has a fast, variable-time inverse (CPython), z is first blinded by a random factor.
    """
    if _FAST_INV and _urandom is not None:
        blind = int.from_bytes(_urandom(32), "big") % (P - 1) + 1
        return pow(z * blind % P, -1, P) * blind % P
    return pow(z, P - 2, P)


def _to_affine(pt):
    x, y, z = pt
    if z % P == 0:
        return None
    zi = _inv(z)
    return (x * zi % P, y * zi % P)


def _to_affine_secret(pt):
    x, y, z = pt
    if z % P == 0:
        return None
    zi = _inv_secret(z)
    return (x * zi % P, y * zi % P)


def is_on_curve(pt):
    """True when the affine point ``pt`` lies on the curve (coordinates in range)."""
    if pt is None:
        return False
    x, y = pt
    if not (0 <= x < P and 0 <= y < P):
        return False
    return (y * y - (x * x * x - 3 * x + B)) % P == 0


# --- complete projective formulas (RCB16, a = -3) ------------------------------------------

def _add(p1, p2):
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    t0 = x1 * x2 % P
    t1 = y1 * y2 % P
    t2 = z1 * z2 % P
    t3 = (x1 + y1) * (x2 + y2) - t0 - t1
    t4 = ((y1 + z1) * (y2 + z2) - t1 - t2) % P
    y3 = ((x1 + z1) * (x2 + z2) - t0 - t2) % P
    x3 = 3 * (y3 - B * t2 % P)
    z3 = t1 - x3
    x3 = t1 + x3
    t2 = 3 * t2
    y3 = 3 * ((B * y3 - t2 - t0) % P)
    t0 = 3 * t0 - t2
    return ((t3 * x3 - t4 * y3) % P, (x3 * z3 + t0 * y3) % P, (t4 * z3 + t3 * t0) % P)


def _add_affine(p1, x2, y2):
    """``_add`` with Z2 = 1: complete for every p1, but (x2, y2) must not be infinity."""
    x1, y1, z1 = p1
    t0 = x1 * x2 % P
    t1 = y1 * y2 % P
    t3 = (x1 + y1) * (x2 + y2) - t0 - t1
    t4 = (y2 * z1 + y1) % P
    y3 = (x2 * z1 + x1) % P
    x3 = 3 * (y3 - B * z1 % P)
    z3 = t1 - x3
    x3 = t1 + x3
    t2 = 3 * z1
    y3 = 3 * ((B * y3 - t2 - t0) % P)
    t0 = 3 * t0 - t2
    return ((t3 * x3 - t4 * y3) % P, (x3 * z3 + t0 * y3) % P, (t4 * z3 + t3 * t0) % P)


def _double(pt):
    x, y, z = pt
    xx = x * x % P
    yy = y * y % P
    zz = z * z % P
    xy2 = 2 * x * y % P
    u = 3 * ((B * zz - 2 * x * z) % P)
    zz3 = 3 * zz
    v = 3 * ((2 * B * x * z - zz3 - xx) % P)
    yz2 = 2 * y * z % P
    return (((yy - u) * xy2 - yz2 * v) % P,
            ((yy - u) * (yy + u) + (3 * xx - zz3) * v) % P,
            4 * yz2 * yy % P)


# --- constant-time table selection ---------------------------------------------------------

def _pack(pt):
    x, y, z = pt
    return (x % P) | ((y % P) << 256) | ((z % P) << 512)


def _unpack(v):
    return (v & _MASK256, (v >> 256) & _MASK256, v >> 512)


def _select(table, digit):
    """Return table[digit] reading every entry; ``digit`` only feeds arithmetic masks."""
    acc = 0
    j = 0
    for entry in table:
        acc |= entry & (((digit ^ j) - 1) >> 8)
        j += 1
    return _unpack(acc)


# --- scalar multiplication -------------------------------------------------------------------

_comb = []
_windows = []
# Per-window tables (64 x 16 affine points, ~100 KB) where memory is plentiful; the 16-entry comb
# (~2 KB) on boards.
BASE_METHOD = "windows" if sys.implementation.name == "cpython" else "comb"
_C = ((1 << 256) - 1) // 15  # sum of 16^i for i < 64: shifts window digits from [0, 15] to [1, 16]


def _comb_table():
    if not _comb:
        g = (GX, GY, 1)
        teeth = [g]
        for _ in range(3):
            q = teeth[-1]
            for _ in range(64):
                q = _double(q)
            teeth.append(q)
        for j in range(16):
            acc = _INF
            for bit in range(4):
                if (j >> bit) & 1:
                    acc = _add(acc, teeth[bit])
            _comb.append(_pack(_normalize(acc)))
    return _comb


def _window_tables():
    if not _windows:
        base = (GX, GY, 1)
        for _ in range(64):
            row = []
            acc = base
            for _ in range(16):
                aff = _to_affine(acc)
                row.append(aff[0] | (aff[1] << 256))
                acc = _add(acc, base)
            _windows.append(row)
            base = (row[15] & _MASK256, row[15] >> 256, 1)
    return _windows


def _normalize(pt):
    aff = _to_affine(pt)
    if aff is None:
        return _INF
    return (aff[0], aff[1], 1)


def _check_scalar(k):
    if not isinstance(k, int) or not 0 < k < N:
        raise InvalidScalar("scalar out of range [1, n-1]")


def _select_affine(row, digit):
    acc = 0
    j = 0
    for entry in row:
        acc |= entry & (((digit ^ j) - 1) >> 8)
        j += 1
    return acc & _MASK256, acc >> 256


def _base_mult_windows(k):
    tables = _window_tables()
    kk = (k - _C) % N
    x, y = _select_affine(tables[0], kk & 15)
    acc = (x, y, 1)
    i = 1
    while i < 64:
        x, y = _select_affine(tables[i], (kk >> (4 * i)) & 15)
        acc = _add_affine(acc, x, y)
        i += 1
    return acc


def _base_mult_comb(k):
    table = _comb_table()
    acc = _INF
    i = 63
    while i >= 0:
        acc = _double(acc)
        digit = ((k >> i) & 1) | (((k >> (64 + i)) & 1) << 1) | (((k >> (128 + i)) & 1) << 2) \
            | (((k >> (192 + i)) & 1) << 3)
        acc = _add(acc, _select(table, digit))
        i -= 1
    return acc


def base_mult(k, method=None):
    """k*G for a secret scalar 1 <= k < n with a fixed operation sequence.

    ``method`` is "windows" (64 fixed 4-bit windows, one complete mixed addition each) or "comb"
    (4-tooth comb, 64 doublings and additions); the default is ``BASE_METHOD``.
    """
    _check_scalar(k)
    if (method or BASE_METHOD) == "windows":
        return _to_affine_secret(_base_mult_windows(k))
    return _to_affine_secret(_base_mult_comb(k))


def mult(k, point):
    """k*point for a secret scalar 1 <= k < n and a validated public point, fixed operation sequence."""
    _check_scalar(k)
    if point is None or not is_on_curve(point):
        raise InvalidPoint("point is not on P-256")
    base = (point[0], point[1], 1)
    entries = [_INF, base]
    for j in range(2, 16):
        entries.append(_add(entries[j - 1], base))
    table = [_pack(e) for e in entries]
    acc = _INF
    i = 63
    while i >= 0:
        acc = _double(_double(_double(_double(acc))))
        acc = _add(acc, _select(table, (k >> (4 * i)) & 15))
        i -= 1
    return _to_affine_secret(acc)


def add(p1, p2):
    """Sum of two affine points (either may be None); complete formulas, no special cases."""
    a = _INF if p1 is None else (p1[0], p1[1], 1)
    b = _INF if p2 is None else (p2[0], p2[1], 1)
    return _to_affine(_add(a, b))


def add_vartime(p1, p2):
    """Sum of two public affine points; None for infinity."""
    return add(p1, p2)


def negate(pt):
    if pt is None:
        return None
    return (pt[0], (P - pt[1]) % P)


# --- variable-time arithmetic for public data (Jacobian coordinates) -------------------------

def _jdouble(pt):
    x1, y1, z1 = pt
    if z1 == 0 or y1 == 0:
        return (1, 1, 0)
    delta = z1 * z1 % P
    gamma = y1 * y1 % P
    beta = x1 * gamma % P
    alpha = 3 * (x1 - delta) * (x1 + delta) % P
    x3 = (alpha * alpha - 8 * beta) % P
    z3 = ((y1 + z1) * (y1 + z1) - gamma - delta) % P
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % P
    return (x3, y3, z3)


def _jadd_affine(pt, x2, y2):
    x1, y1, z1 = pt
    if z1 == 0:
        return (x2, y2, 1)
    z1z1 = z1 * z1 % P
    u2 = x2 * z1z1 % P
    s2 = y2 * z1 * z1z1 % P
    h = (u2 - x1) % P
    r = 2 * (s2 - y1) % P
    if h == 0:
        if r == 0:
            return _jdouble(pt)
        return (1, 1, 0)
    hh = h * h % P
    i = 4 * hh
    j = h * i % P
    v = x1 * i % P
    x3 = (r * r - j - 2 * v) % P
    y3 = (r * (v - x3) - 2 * y1 * j) % P
    z3 = ((z1 + h) * (z1 + h) - z1z1 - hh) % P
    return (x3, y3, z3)


def _jadd(p1, p2):
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if z1 == 0:
        return p2
    if z2 == 0:
        return p1
    z1z1 = z1 * z1 % P
    z2z2 = z2 * z2 % P
    u1 = x1 * z2z2 % P
    u2 = x2 * z1z1 % P
    s1 = y1 * z2 * z2z2 % P
    s2 = y2 * z1 * z1z1 % P
    h = (u2 - u1) % P
    r = 2 * (s2 - s1) % P
    if h == 0:
        if r == 0:
            return _jdouble(p1)
        return (1, 1, 0)
    i = 4 * h * h % P
    j = h * i % P
    v = u1 * i % P
    x3 = (r * r - j - 2 * v) % P
    y3 = (r * (v - x3) - 2 * s1 * j) % P
    z3 = ((z1 + z2) * (z1 + z2) - z1z1 - z2z2) * h % P
    return (x3, y3, z3)


def _jaffine(pt):
    x, y, z = pt
    if z == 0:
        return None
    zi = _inv(z)
    zi2 = zi * zi % P
    return (x * zi2 % P, y * zi2 * zi % P)


def _wnaf(k, w):
    digits = []
    half = 1 << (w - 1)
    full = 1 << w
    while k:
        if k & 1:
            d = k & (full - 1)
            if d >= half:
                d -= full
            k -= d
        else:
            d = 0
        digits.append(d)
        k >>= 1
    return digits


_G_WINDOW = 7 if sys.implementation.name == "cpython" else 5
_g_odd = []


def _g_table():
    if not _g_odd:
        g = (GX, GY, 1)
        twice = _jdouble(g)
        acc = g
        for _ in range(1 << (_G_WINDOW - 2)):
            _g_odd.append(_jaffine(acc))
            acc = _jadd(acc, twice)
    return _g_odd


def _mul_add_jacobian(a, b, q):
    gt = _g_table()
    qj = (q[0], q[1], 1)
    q2 = _jdouble(qj)
    qt = [qj]
    for _ in range(7):
        qt.append(_jadd(qt[-1], q2))
    na = _wnaf(a % N, _G_WINDOW)
    nb = _wnaf(b % N, 5)
    acc = (1, 1, 0)
    i = max(len(na), len(nb)) - 1
    while i >= 0:
        acc = _jdouble(acc)
        if i < len(na):
            d = na[i]
            if d > 0:
                x, y = gt[d >> 1]
                acc = _jadd_affine(acc, x, y)
            elif d < 0:
                x, y = gt[(-d) >> 1]
                acc = _jadd_affine(acc, x, P - y)
        if i < len(nb):
            d = nb[i]
            if d > 0:
                acc = _jadd(acc, qt[d >> 1])
            elif d < 0:
                x, y, z = qt[(-d) >> 1]
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
