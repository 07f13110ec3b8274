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
# Per-window tables (64 x 16 affine points, ~100 KB) where memory is plentiful; the 16-entry comb
# (~2 KB) on boards.
BASE_METHOD = "windows" if sys.implementation.name == "cpython" else "comb"
_WINDOWS = 52  # signed odd 5-bit digits of an odd scalar below 2^257
_SENTINEL = 1 << 320
_SHIFT16 = N - (((1 << 256) - 1) // 15) % N  # adding it subtracts sum 16^i (i < 64) mod n
_SHIFT_COMB = N - ((1 << 64) - 1)  # adding it subtracts 2^64 - 1 mod n


def _comb_table():
    """The comb entries, parsed anew for each use (about 1.6 KB of a board's heap not kept between
    signatures; parsing costs under 1% of a signature)."""
    return [_pack((int(h[:64], 16), int(h[64:128], 16), int(h[128:], 16))) for h in _COMB_HEX]


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

    ``method`` is "windows" (64 fixed 4-bit windows, one complete mixed addition each) or "comb"
    (4-tooth comb, 64 doublings and additions); the default is ``BASE_METHOD``.
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
_g_odd = []


def _g_table():
    """The odd multiples of G as one bytes object, 64 bytes (x, y) each: on a board 520 B of heap
    where a list of integer pairs took 1.7 KB; ``_g_point`` reads an entry."""
    if not _g_odd:
        _g_odd.append(bytes.fromhex("".join(_G_ODD_HEX[:1 << (_G_WINDOW - 2)])))
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
    q2 = _jdouble(qj)
    qt = [qj]                           # 1Q, 3Q, 5Q, 7Q: width-4 digits for Q (1.4 KB less heap than
    for _ in range(3):                  # width 5 on a board, for about 1% more additions)
        qt.append(_jadd(qt[-1], q2))
    q2 = None
    na, nb = _naf_a, _naf_b
    len_a = _wnaf(a % N, _G_WINDOW, na)
    len_b = _wnaf(b % N, 4, nb)
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


# Precomputed tables (tests/core/test_ecdsa_ecdh.py recomputes them): comb entries as x|y|z,
# odd multiples of G as x|y.
_COMB_HEX = (
    "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f51",
    "7cf27b188d034f7e8a52380304b51ac3c08969e277f21b35a60b48fc4766997807775510db8ed040293d9ac69f7430dbba7dade63ce982299e04b79d227873d11",
    "300a4bbc89d6726fb257c0de95e02789e96c98fd0d35f1fa93391ce2097992af72aac7e0d09b46447f1ddb25ff1e3c6f5bb1eeada9d806a5aa54a291c08127a01",
    "72dc0565ee2f7e1dea07b9f6b9f640ee821fbd55b22aab1e26211f8da5a937982dbfcb580d6281cfa457e509ebda3061c9b0a2f36da4af20643dc3d1f3f696801",
    "ef9519328a9c72ffddc6068bb91dfc60ef7fbd2b1a0a11b713949c932a1d367f611e9fc37dbb2c9bc1ee9807022c219c23183b0895ca1740196035a77376d8a81",
    "69481ed9a52fe85a116b7fe8ecc10fc9b6c216ef38279827f0ec08a365408f4536a0263a82dc2d289df2469287bff82c9981014e4ed50b6c086897091db511441",
    "eb5d7745b21141eaa2e8f483f43e43917ccd84e70d715f26e48ecafffc5cde01eafd72ebdbecc17b0990e6a158006cee85f22cfe2844b645cac917e2731a34791",
    "9eb490010e852e9a8ae206ee90df78a0796ab4b9194754e392caf71738333a9da7cf15dbd3c85ba1cabcd3b1edf29f87de53e982423acb768cee5f0f2d774f7a1",
    "4e769e7672c9ddad31855f7db8c7fedb74e02f080203a56b2df48c04677c8a3e42b99082de8306631ec0057206947281fb9ae16f3b9122a5a4c36165b824bbb01",
    "f0d1c5c3cc83a1d7131a01186d7645f9966e66a6ffa344b79d333ed7f06edcf8a83f46a33284a18399876aabec5946cf4893a3fafe515de7de3151bb99b069d61",
    "0c88bc4d716b1287595c5220812ffcae5b82dd5bd54fb4967f991ed2c31a3573dd5ddea3f3901dc618d1b5b39c04e6aa7c8181f4df2564f33a57bf635f48aca81",
    "1508fd2eab708735a070513e8b5ee04ca86084393d435d7c3174ced2ad0cb19b1cdf8f5691782b58eebc414b49cd01f1083e99ffad1334606596b01de268da0d1",
    "4052bf4b6f461db9663c62c3edbad7a00d1a10144ec39c28d36b4789a2582e7ffecf4d5190b0fc61862be6bd71d70cc8e724f33999bfcc5b235a27c3188d25eb1",
    "4e047a3af74872be32fb69ce2440fc703c1ad92be031e62d87ac16e3f789decff40e74b2c2477e0ec7a51c72c8a37ee78a0849acaf8a1264febb367c3efb40e71",
    "b48e26b484f7a21c0a4a46fb6aaf363a66b0de3225c4744b9615b5110d1d78e5fac015404d4d3dab64131bcdfed6f668c004e4048b7b0f9806ebb0f621a01b2d1",
    "2f4b5a77144daf0b0739fc33ab60eeae42c705e319a1d4a2b6388a3ce2afd0374817b0f723e5b59eab413986968c8e185bf1a315b04f03bbaa6c8056c1afc7421",
)
_G_ODD_HEX = (
    "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
    "5ecbe4d1a6330a44c8f7ef951d4bf165e6c6b721efada985fb41661bc6e7fd6c8734640c4998ff7e374b06ce1a64a2ecd82ab036384fb83d9a79b127a27d5032",
    "51590b7a515140d2d784c85608668fdfef8c82fd1f5be52421554a0dc3d033ede0c17da8904a727d8ae1bf36bf8a79260d012f00d4d80888d1d0bb44fda16da4",
    "8e533b6fa0bf7b4625bb30667c01fb607ef9f8b8a80fef5b300628703187b2a373eb1dbde03318366d069f83a6f5900053c73633cb041b21c55e1a86c1f400b4",
    "ea68d7b6fedf0b71878938d51d71f8729e0acb8c2c6df8b3d79e8a4b90949ee02a2744c972c9fce787014a964a8ea0c84d714feaa4de823fe85a224a4dd048fa",
    "3ed113b7883b4c590638379db0c21cda16742ed0255048bf433391d374bc21d19099209accc4c8a224c843afa4f4c68a090d04da5e9889dae2f8eefce82a3740",
    "177c837ae0ac495a61805df2d85ee2fc792e284b65ead58a98e15d9d46072c0163bb58cd4ebea558a24091adb40f4e7226ee14c3a1fb4df39c43bbe2efc7bfd8",
    "f0454dc6971abae7adfb378999888265ae03af92de3a0ef163668c63e59b9d5fb5b93ee3592e2d1f4e6594e51f9643e62a3b21ce75b5fa3f47e59cde0d034f36",
    "47776904c0f1cc3a9c0984b66f75301a5fa68678f0d64af8ba1abce34738a73eaa005ee6b5b957286231856577648e8381b2804428d5733f32f787ff71f1fcdc",
    "cb6d2861102c0c25ce39b7c17108c507782c452257884895c1fc7b74ab03ed8358d7614b24d9ef515c35e7100d6d6ce4a496716e30fa3e03e39150752bcecdaa",
    "3250fcf686637c7b2e4ac86eb473bca53a582139f42b1523fd76364e67399e8342e7c342667d359397b3090d1d7eb88c897cd3c33b566a8215de24a071d48c09",
    "0e91c7239c2640d7d28a3e39d4583fa63c0bc0a5df64a4fe672e573045ca78965df65c3b550dba221a22733bb8e0bd6d7e68833575e7a5ae138046543140ad55",
    "3a67e2554b0c0bb685f4f52d8c07fa8441652fc5b76f1b2484a4dc45f200d68727d0f1872f1fcf4326daf267163afb0d8c188af735a7618aa9ed16b302f79324",
    "184ffa5819d80d51deba2fac4611f378576355bd683e54abf2e201173b0883d1c0a66e276688f359a4c6d90826cb999545bdeccc63f0491620d242c260906e6f",
    "d6d33adefa195b07a7c36da090853b8cfd8cd1c688b58a41dedd693d1c784def84aaba16ee195d7e3f78245f558a5dcb09a166ab4b95eded550c124593d1bca6",
    "301d9e502dc7e05da85da026a7ae9aa0fac9db7d52a95b3e3e3f9aa0a1b45b8b6551b6f6b3061223e0d23c026b017d72298d9ae46887ca61d58db6aea17ee267",
    "9807d699fcd81356fa9aa25b89d9d34ea03b0a533aa872fd65c100f3cb2cd793c2a59cdccab11bf286a01a4d1d091b2fffe630b96c5878532f6bf92479634af4",
    "d58d4a589ed27d168ffa3ad7326c48ca94e8e1fe92af9700a12d389033bb291ad45514d102726b8576ea92632dc7fef667271c163b034979a5b0c9c6f586b9d5",
    "419a6a646ddb817dd6b0978611a826aae0d21379246bfd4473a92894502b3348332544cf1102f584545c9fb1954c2fd513c6d072f3dee1e2db1d6c81b09214b2",
    "22a682f7c3996d4d42014976a179046e547b942dd2d138d4a0c199ddfb2776c44f4606b0102223eeb918c9835a54356c979dcc310265b0685347f649cbaa285d",
    "67a6bec240dee0651cf258d2e6cfe8aa6067c5c3d4175a593a7de694995d2fa2de692b7022d131586c249b49464d44991542c7ee209aca6c49c24ce1441feed5",
    "986ae2506f1ff104d04230861d8f4b498f4bc4c6d009b30f7544dc129b82d28d003cccc0a6460e0ae328a4d97d3c7b61d86fc6289c189f2525110c441bb07e97",
    "a891d06670bde99b3ecd0f5ddff0672e0f5f609edd29d6d979c78080fae0ba03b596cd922cbfa1c1419a88c4033c1ce71c6b38f0feb0f2ccefc3edc8166934ae",
    "42c315cc48958708595361ea83071bbcdd5b31583e19066d51d689227b1c0d7c649a61ce571b95852914d1dfbb7a799074f1a1e1eb87f164d6c4a72bb2f9b1b9",
    "f785b0e098068875bb22b146866e6c0528fb7ea9758fd4fd7d228ce6a567445573fdb0bf6080da6ee15c767f0d9f5b414b04b6fd5f3aa60ae7bc490c10d62408",
    "672c4a514d9de43eaadee6863c1d68bc95f7eb56e81008ff044360f0018e22b1548c7e9196a25bfe611de5a4ace203f7136246589704d9419935399191f37104",
    "6f01bd49c9d952455a47802254b88039982b1ca78de9b983f126ec9f7449d0361562080ff1d5deab11a0f21a608776cea78551bfc3749b08360233dd989e17db",
    "079dba7ba068c9267571a109fe7fea2cc2a595b762c1eadadec1dff7df6e60a0dc1e19b743d4d1811d223f9d2a9588ab83eb2df35751a397fb0da5aeb4824dea",
    "c116e30ebb4d2865126d45a8ea907f86289d406e2d6c6bd88abd97b1d0f56077e9478823c35b30c2b8b16d9bb13b87657d5bd5e89e59c8c5313fd7fda410c206",
    "665f1a6ffe0c6437765b2784fca9bdf7e50941119e8dc8eca2b6ea0e0faa4b45490e2ca49ffd18c26e8cca29f7eac37f7dede5bf81e215bc6e25a6602b7f4ccf",
    "059ccb19edd3da9a2d3a6b3d8d9900013e7910a08b724fd55939ac380d32af0ebb6ad7eccad49159da65281b9345638e1621f7a33956cecd928e1e3c97fe91d1",
    "6a9501d85bf5dc802a1f28a08acc7d8fdf53c8af01a7cd3832a290825d8bdac1ca640ad19347374381c6c6e44a3c56a3f8461b5c697a6f3530aff53d5f1ef1a3",
)
