"""NIST P-256 (secp256r1) arithmetic in the portable Python subset.

Points at the API boundary are affine tuples ``(x, y)`` of ints, or ``None`` for the point at infinity.

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


def _to_affine(pt, inverse=None):
    x, y, z = pt
    if z % P == 0:
        return None
    zi = (inverse or _inv)(z)
    return (x * zi % P, y * zi % P)


def _to_affine_secret(pt):
    return _to_affine(pt, _inv_secret)


def is_on_curve(pt):
    """True when the affine point ``pt`` lies on the curve (coordinates in range)."""
    if pt is None:
        return False
    x, y = pt
    if not (0 <= x < P and 0 <= y < P):
        return False
    return (y * y - (x * x * x - 3 * x + B)) % P == 0


# --- complete projective formulas (RCB16, a = -3) ------------------------------------------

def _add(p1, p2, P=P, B=B):
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


def _add_affine(p1, x2, y2, P=P, B=B):
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


def _double(pt, P=P, B=B):
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

_windows = []
# Per-window tables (52 x 16 affine points, about 90 KB) where memory is plentiful; the 16-entry comb
# on boards.
BASE_METHOD = "windows" if sys.implementation.name == "cpython" else "comb"
_WINDOWS = 52  # signed odd 5-bit digits of an odd scalar below 2^257
_SENTINEL = 1 << 320
_SHIFT16 = N - (((1 << 256) - 1) // 15) % N  # adding it subtracts sum 16^i (i < 64) mod n
_SHIFT_COMB = N - ((1 << 64) - 1)  # adding it subtracts 2^64 - 1 mod n


def _comb_table():
    """The comb entries, read anew from ``_COMB`` for each use (about 1.6 KB of a board's heap not kept
    between signatures; reading costs under 1% of a signature)."""
    return [int.from_bytes(_COMB[at:at + 32], "big") | (int.from_bytes(_COMB[at + 32:at + 64], "big") << 256)
            | (1 << 512) for at in range(0, len(_COMB), 64)]


def _compute_comb_table():
    """The comb table from first principles: entry j = G + sum of 2^(64*t)*G over the bits t of j."""
    g = (GX, GY, 1)
    teeth = [g]
    for _ in range(3):
        q = teeth[-1]
        for _ in range(64):
            q = _double(q)
        teeth.append(q)
    table = []
    for j in range(16):
        acc = g
        for bit in range(4):
            if (j >> bit) & 1:
                acc = _add(acc, teeth[bit])
        table.append(_normalize(acc))
    return table


def _window_tables():
    """Row i holds (2j+1) * 32^i * G for j < 16, affine, packed as x | y << 256."""
    if not _windows:
        base = (GX, GY, 1)
        for _ in range(_WINDOWS):
            twice = _double(base)
            row = []
            acc = base
            for _ in range(16):
                aff = _to_affine(acc)
                row.append(aff[0] | (aff[1] << 256))
                acc = _add(acc, twice)
            _windows.append(row)
            for _ in range(5):
                base = _double(base)
    return _windows


def _normalize(pt):
    aff = _to_affine(pt)
    if aff is None:
        return _INF
    return (aff[0], aff[1], 1)


def _check_scalar(k):
    if not isinstance(k, int) or not 0 < k < N:
        raise InvalidScalar("scalar out of range [1, n-1]")


def _select_affine(row, digit, P=P, M=_MASK256):
    """Entry (|digit| - 1) / 2 of ``row``, negated when digit < 0; every entry is read."""
    sign = digit >> 8
    index = ((digit ^ sign) - sign - 1) >> 1
    acc = 0
    j = 0
    for entry in row:
        acc |= entry & (((index ^ j) - 1) >> 8)
        j += 1
    y = acc >> 256
    return acc & M, y ^ ((y ^ (P - y)) & sign)


def _base_mult_windows(k):
    """Regular signed-window recoding (every digit odd, in [-31, 31]) of k + n or k + 2n, whichever is odd."""
    tables = _window_tables()
    # A sentinel bit far above the scalar keeps every intermediate the same length for every k.
    # k + N (k even) or k + 2N (k odd): odd, and the same work whatever the parity of k.
    k = (k + N * (2 - ((k + 1) & 1))) | _SENTINEL
    digit = (k & 63) - 32
    k = (k - digit) >> 5
    x, y = _select_affine(tables[0], digit)
    acc = (x, y, 1)
    i = 1
    last = _WINDOWS - 1
    while i < last:
        digit = (k & 63) - 32
        k = (k - digit) >> 5
        x, y = _select_affine(tables[i], digit)
        acc = _add_affine(acc, x, y)
        i += 1
    x, y = _select_affine(tables[last], k - (_SENTINEL >> (5 * last)))
    return _add_affine(acc, x, y)


def _base_mult_comb(k):
    """Comb over k' = k - (2^64 - 1) mod n with entries G + tau(d)*G: no entry is infinity."""
    table = _comb_table()
    k = (k + _SHIFT_COMB) % N
    acc = _INF
    i = 63
    while i >= 0:
        acc = _double(acc)
        digit = ((k >> i) & 1) | (((k >> (64 + i)) & 1) << 1) | (((k >> (128 + i)) & 1) << 2) \
            | (((k >> (192 + i)) & 1) << 3)
        x, y, _ = _select(table, digit)
        acc = _add_affine(acc, x, y)
        i -= 1
    return acc


def base_mult(k, method=None):
    """k*G for a secret scalar 1 <= k < n with a fixed operation sequence.

    ``method`` is "windows" (52 signed odd 5-bit digits, 51 complete mixed additions) or "comb"
    (4-tooth comb, 64 doublings and 64 mixed additions); the default is ``BASE_METHOD``.
    """
    _check_scalar(k)
    if (method or BASE_METHOD) == "windows":
        return _to_affine_secret(_base_mult_windows(k))
    return _to_affine_secret(_base_mult_comb(k))


def mult(k, point):
    """k*point for a secret scalar 1 <= k < n and a validated public point, fixed operation sequence.

    Window digits are shifted from [0, 15] to [1, 16] (k' = k - sum 16^i mod n), so the table holds
    1*Q .. 16*Q and never the point at infinity, whose zero coordinates would make steps cheaper.
    """
    _check_scalar(k)
    if point is None or not is_on_curve(point):
        raise InvalidPoint("point is not on P-256")
    base = (point[0], point[1], 1)
    acc = base
    table = [_pack(base)]
    for _ in range(15):                 # packed as made: the unpacked points are not all alive at once
        acc = _add(acc, base)
        table.append(_pack(acc))
    kk = (k + _SHIFT16) % N
    acc = _select(table, kk >> 252)
    i = 62
    while i >= 0:
        acc = _double(_double(_double(_double(acc))))
        acc = _add(acc, _select(table, (kk >> (4 * i)) & 15))
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

def _jdouble(pt, P=P, B=B):
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


def _jadd_affine(pt, x2, y2, P=P, B=B):
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


# Precomputed tables (tests/core/test_ecdsa_ecdh.py recomputes them), bytes constants that a board reads
# in place from ROMFS: the comb entries (affine x, y; z = 1), 64 bytes each, and the odd multiples
# 1*G .. 15*G of the board's verification window (x, y), 64 bytes each.
_COMB = (
    b"\x6b\x17\xd1\xf2\xe1\x2c\x42\x47\xf8\xbc\xe6\xe5\x63\xa4\x40\xf2\x77\x03\x7d\x81\x2d\xeb\x33\xa0"
    b"\xf4\xa1\x39\x45\xd8\x98\xc2\x96\x4f\xe3\x42\xe2\xfe\x1a\x7f\x9b\x8e\xe7\xeb\x4a\x7c\x0f\x9e\x16"
    b"\x2b\xce\x33\x57\x6b\x31\x5e\xce\xcb\xb6\x40\x68\x37\xbf\x51\xf5\x7c\xf2\x7b\x18\x8d\x03\x4f\x7e"
    b"\x8a\x52\x38\x03\x04\xb5\x1a\xc3\xc0\x89\x69\xe2\x77\xf2\x1b\x35\xa6\x0b\x48\xfc\x47\x66\x99\x78"
    b"\x07\x77\x55\x10\xdb\x8e\xd0\x40\x29\x3d\x9a\xc6\x9f\x74\x30\xdb\xba\x7d\xad\xe6\x3c\xe9\x82\x29"
    b"\x9e\x04\xb7\x9d\x22\x78\x73\xd1\x30\x0a\x4b\xbc\x89\xd6\x72\x6f\xb2\x57\xc0\xde\x95\xe0\x27\x89"
    b"\xe9\x6c\x98\xfd\x0d\x35\xf1\xfa\x93\x39\x1c\xe2\x09\x79\x92\xaf\x72\xaa\xc7\xe0\xd0\x9b\x46\x44"
    b"\x7f\x1d\xdb\x25\xff\x1e\x3c\x6f\x5b\xb1\xee\xad\xa9\xd8\x06\xa5\xaa\x54\xa2\x91\xc0\x81\x27\xa0"
    b"\x72\xdc\x05\x65\xee\x2f\x7e\x1d\xea\x07\xb9\xf6\xb9\xf6\x40\xee\x82\x1f\xbd\x55\xb2\x2a\xab\x1e"
    b"\x26\x21\x1f\x8d\xa5\xa9\x37\x98\x2d\xbf\xcb\x58\x0d\x62\x81\xcf\xa4\x57\xe5\x09\xeb\xda\x30\x61"
    b"\xc9\xb0\xa2\xf3\x6d\xa4\xaf\x20\x64\x3d\xc3\xd1\xf3\xf6\x96\x80\xef\x95\x19\x32\x8a\x9c\x72\xff"
    b"\xdd\xc6\x06\x8b\xb9\x1d\xfc\x60\xef\x7f\xbd\x2b\x1a\x0a\x11\xb7\x13\x94\x9c\x93\x2a\x1d\x36\x7f"
    b"\x61\x1e\x9f\xc3\x7d\xbb\x2c\x9b\xc1\xee\x98\x07\x02\x2c\x21\x9c\x23\x18\x3b\x08\x95\xca\x17\x40"
    b"\x19\x60\x35\xa7\x73\x76\xd8\xa8\x69\x48\x1e\xd9\xa5\x2f\xe8\x5a\x11\x6b\x7f\xe8\xec\xc1\x0f\xc9"
    b"\xb6\xc2\x16\xef\x38\x27\x98\x27\xf0\xec\x08\xa3\x65\x40\x8f\x45\x36\xa0\x26\x3a\x82\xdc\x2d\x28"
    b"\x9d\xf2\x46\x92\x87\xbf\xf8\x2c\x99\x81\x01\x4e\x4e\xd5\x0b\x6c\x08\x68\x97\x09\x1d\xb5\x11\x44"
    b"\xeb\x5d\x77\x45\xb2\x11\x41\xea\xa2\xe8\xf4\x83\xf4\x3e\x43\x91\x7c\xcd\x84\xe7\x0d\x71\x5f\x26"
    b"\xe4\x8e\xca\xff\xfc\x5c\xde\x01\xea\xfd\x72\xeb\xdb\xec\xc1\x7b\x09\x90\xe6\xa1\x58\x00\x6c\xee"
    b"\x85\xf2\x2c\xfe\x28\x44\xb6\x45\xca\xc9\x17\xe2\x73\x1a\x34\x79\x9e\xb4\x90\x01\x0e\x85\x2e\x9a"
    b"\x8a\xe2\x06\xee\x90\xdf\x78\xa0\x79\x6a\xb4\xb9\x19\x47\x54\xe3\x92\xca\xf7\x17\x38\x33\x3a\x9d"
    b"\xa7\xcf\x15\xdb\xd3\xc8\x5b\xa1\xca\xbc\xd3\xb1\xed\xf2\x9f\x87\xde\x53\xe9\x82\x42\x3a\xcb\x76"
    b"\x8c\xee\x5f\x0f\x2d\x77\x4f\x7a\x4e\x76\x9e\x76\x72\xc9\xdd\xad\x31\x85\x5f\x7d\xb8\xc7\xfe\xdb"
    b"\x74\xe0\x2f\x08\x02\x03\xa5\x6b\x2d\xf4\x8c\x04\x67\x7c\x8a\x3e\x42\xb9\x90\x82\xde\x83\x06\x63"
    b"\x1e\xc0\x05\x72\x06\x94\x72\x81\xfb\x9a\xe1\x6f\x3b\x91\x22\xa5\xa4\xc3\x61\x65\xb8\x24\xbb\xb0"
    b"\xf0\xd1\xc5\xc3\xcc\x83\xa1\xd7\x13\x1a\x01\x18\x6d\x76\x45\xf9\x96\x6e\x66\xa6\xff\xa3\x44\xb7"
    b"\x9d\x33\x3e\xd7\xf0\x6e\xdc\xf8\xa8\x3f\x46\xa3\x32\x84\xa1\x83\x99\x87\x6a\xab\xec\x59\x46\xcf"
    b"\x48\x93\xa3\xfa\xfe\x51\x5d\xe7\xde\x31\x51\xbb\x99\xb0\x69\xd6\x0c\x88\xbc\x4d\x71\x6b\x12\x87"
    b"\x59\x5c\x52\x20\x81\x2f\xfc\xae\x5b\x82\xdd\x5b\xd5\x4f\xb4\x96\x7f\x99\x1e\xd2\xc3\x1a\x35\x73"
    b"\xdd\x5d\xde\xa3\xf3\x90\x1d\xc6\x18\xd1\xb5\xb3\x9c\x04\xe6\xaa\x7c\x81\x81\xf4\xdf\x25\x64\xf3"
    b"\x3a\x57\xbf\x63\x5f\x48\xac\xa8\x15\x08\xfd\x2e\xab\x70\x87\x35\xa0\x70\x51\x3e\x8b\x5e\xe0\x4c"
    b"\xa8\x60\x84\x39\x3d\x43\x5d\x7c\x31\x74\xce\xd2\xad\x0c\xb1\x9b\x1c\xdf\x8f\x56\x91\x78\x2b\x58"
    b"\xee\xbc\x41\x4b\x49\xcd\x01\xf1\x08\x3e\x99\xff\xad\x13\x34\x60\x65\x96\xb0\x1d\xe2\x68\xda\x0d"
    b"\x40\x52\xbf\x4b\x6f\x46\x1d\xb9\x66\x3c\x62\xc3\xed\xba\xd7\xa0\x0d\x1a\x10\x14\x4e\xc3\x9c\x28"
    b"\xd3\x6b\x47\x89\xa2\x58\x2e\x7f\xfe\xcf\x4d\x51\x90\xb0\xfc\x61\x86\x2b\xe6\xbd\x71\xd7\x0c\xc8"
    b"\xe7\x24\xf3\x39\x99\xbf\xcc\x5b\x23\x5a\x27\xc3\x18\x8d\x25\xeb\x4e\x04\x7a\x3a\xf7\x48\x72\xbe"
    b"\x32\xfb\x69\xce\x24\x40\xfc\x70\x3c\x1a\xd9\x2b\xe0\x31\xe6\x2d\x87\xac\x16\xe3\xf7\x89\xde\xcf"
    b"\xf4\x0e\x74\xb2\xc2\x47\x7e\x0e\xc7\xa5\x1c\x72\xc8\xa3\x7e\xe7\x8a\x08\x49\xac\xaf\x8a\x12\x64"
    b"\xfe\xbb\x36\x7c\x3e\xfb\x40\xe7\xb4\x8e\x26\xb4\x84\xf7\xa2\x1c\x0a\x4a\x46\xfb\x6a\xaf\x36\x3a"
    b"\x66\xb0\xde\x32\x25\xc4\x74\x4b\x96\x15\xb5\x11\x0d\x1d\x78\xe5\xfa\xc0\x15\x40\x4d\x4d\x3d\xab"
    b"\x64\x13\x1b\xcd\xfe\xd6\xf6\x68\xc0\x04\xe4\x04\x8b\x7b\x0f\x98\x06\xeb\xb0\xf6\x21\xa0\x1b\x2d"
    b"\x2f\x4b\x5a\x77\x14\x4d\xaf\x0b\x07\x39\xfc\x33\xab\x60\xee\xae\x42\xc7\x05\xe3\x19\xa1\xd4\xa2"
    b"\xb6\x38\x8a\x3c\xe2\xaf\xd0\x37\x48\x17\xb0\xf7\x23\xe5\xb5\x9e\xab\x41\x39\x86\x96\x8c\x8e\x18"
    b"\x5b\xf1\xa3\x15\xb0\x4f\x03\xbb\xaa\x6c\x80\x56\xc1\xaf\xc7\x42"
)
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
