"""NIST P-256 with secret scalars: k*G (``base_mult``) and k*Q (``mult``) with a fixed operation sequence,
and complete point additions (``add``). ``p256`` names every function here and loads this module when
one is first used, so a board forgets it after signing, ECDH or a session opening and checks signatures
with ``p256`` alone. What is protected against (no branch or table index depends on a secret scalar)
and how it is tested: ``p256``.
"""

from ledgerlink.core import p256
from ledgerlink.core.errors import InvalidPoint, InvalidScalar
from ledgerlink.core.p256 import _INF, _MASK256, GX, GY, B, N, P, _to_affine, is_on_curve


def _inv_secret(z):
    """Inverse of a secret-derived z mod p.

    Fermat inversion (a fixed exponent) on ports without a built-in modular inverse; where the
    interpreter has a fast, variable-time inverse (CPython), z is first blinded by a random factor.
    """
    if p256._FAST_INV and p256._urandom is not None:
        blind = int.from_bytes(p256._urandom(32), "big") % (P - 1) + 1
        return pow(z * blind % P, -1, P) * blind % P
    return pow(z, P - 2, P)


def _to_affine_secret(pt):
    return _to_affine(pt, _inv_secret)


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
    tables = p256._window_tables()
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
    table = p256._comb_table()         # through p256: tests replace it there
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
    if (method or p256.BASE_METHOD) == "windows":
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
