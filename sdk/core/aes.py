"""AES-128/192/256 block encryption (FIPS 197), the block cipher under AES-CCM.

Only the forward cipher is provided: CCM uses AES in counter and CBC-MAC modes, which never decrypt
a block. ``AES(key)`` uses the port's ``cryptolib.aes(key, 1)`` (ECB) when MicroPython provides it
and accepts the key; otherwise a pure-Python implementation with T-tables built on first use. The
tables are split into 16-bit halves so that no int reaches 2**30, above which MicroPython allocates
each int on the heap; ``encrypt_into`` then encrypts a block without allocating.

Security note: the pure-Python fallback indexes its lookup tables with bytes that depend on the key
and the data. On hardware with data caches this is a cache-timing side channel: an attacker who can
run code on the same machine, or time many encryptions precisely, may learn key bits. It is meant for
CPython hosts (where the ``cpython`` backend with OpenSSL is normally used instead) and for MicroPython
boards without ``cryptolib``, most of which have no data cache; boards with ``cryptolib`` use the
port's own implementation. Interpreter overhead also makes the timing of every operation
data-dependent; the fallback makes no constant-time claim.

Tested in tests/core/test_aes_ccm.py: FIPS 197 appendix C vectors for all key sizes, equality with
pycryptodome's AES on random keys and blocks, ``encrypt_into`` (also in place), the bounds of tables and
round keys, the ``cryptolib`` path and its fallback.
"""

from ledgerlink.core.errors import InvalidKey

BLOCK_SIZE = 16
KEY_SIZES = (16, 24, 32)


def _find_cryptolib():
    try:
        import cryptolib
        return cryptolib
    except ImportError:
        pass
    try:
        import ucryptolib
        return ucryptolib
    except ImportError:
        return None


_cryptolib = _find_cryptolib()

_SBOX = None
_H0 = _H1 = _H2 = _H3 = None
_L0 = _L1 = _L2 = _L3 = None
_RCON = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1B, 0x36)


def _xtime(x):
    x <<= 1
    if x & 0x100:
        x ^= 0x11B
    return x


def _build_tables():
    """Compute the S-box (multiplicative inverse in GF(2^8) plus affine map) and the T-table halves.

    T-table word ``i`` for input ``a`` is ``(_Hi[a] << 16) | _Li[a]``; e.g. T0[a] = (2s, s, s, 3s)
    with s = S(a). Keeping the halves apart keeps every value below 2**16.
    """
    global _SBOX, _H0, _H1, _H2, _H3, _L0, _L1, _L2, _L3
    exp = [0] * 255
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x ^= _xtime(x)
    sbox = [0] * 256
    for a in range(256):
        inv = exp[(255 - log[a]) % 255] if a else 0
        s = inv
        r = inv
        for _ in range(4):
            r = ((r << 1) | (r >> 7)) & 0xFF
            s ^= r
        sbox[a] = s ^ 0x63
    h0 = [0] * 256
    h1 = [0] * 256
    h2 = [0] * 256
    h3 = [0] * 256
    l0 = [0] * 256
    l1 = [0] * 256
    l2 = [0] * 256
    l3 = [0] * 256
    for a in range(256):
        s = sbox[a]
        s2 = _xtime(s)
        s3 = s2 ^ s
        h0[a] = (s2 << 8) | s
        l0[a] = (s << 8) | s3
        h1[a] = (s3 << 8) | s2
        l1[a] = (s << 8) | s
        h2[a] = (s << 8) | s3
        l2[a] = (s2 << 8) | s
        h3[a] = (s << 8) | s
        l3[a] = (s3 << 8) | s2
    _SBOX = sbox
    _H0, _H1, _H2, _H3 = h0, h1, h2, h3
    _L0, _L1, _L2, _L3 = l0, l1, l2, l3


def _expand_key(key):
    """FIPS 197 key expansion; returns (round key words as a flat list of 16-bit halves, rounds)."""
    sb = _SBOX
    nk = len(key) // 4
    rounds = nk + 6
    w = []
    for i in range(nk):
        w.append((key[4 * i] << 8) | key[4 * i + 1])
        w.append((key[4 * i + 2] << 8) | key[4 * i + 3])
    for i in range(nk, 4 * (rounds + 1)):
        hi = w[2 * i - 2]
        lo = w[2 * i - 1]
        if i % nk == 0:
            hi, lo = ((hi & 0xFF) << 8) | (lo >> 8), ((lo & 0xFF) << 8) | (hi >> 8)
            hi = ((sb[hi >> 8] ^ _RCON[i // nk - 1]) << 8) | sb[hi & 0xFF]
            lo = (sb[lo >> 8] << 8) | sb[lo & 0xFF]
        elif nk > 6 and i % nk == 4:
            hi = (sb[hi >> 8] << 8) | sb[hi & 0xFF]
            lo = (sb[lo >> 8] << 8) | sb[lo & 0xFF]
        w.append(w[2 * (i - nk)] ^ hi)
        w.append(w[2 * (i - nk) + 1] ^ lo)
    return w, rounds


_BUFFER_TYPES = (bytes, bytearray, memoryview)


def _is_block(block):
    return isinstance(block, _BUFFER_TYPES) and len(block) == BLOCK_SIZE


class AES:
    """The AES forward cipher under one key of 16, 24 or 32 bytes (InvalidKey otherwise).

    ``implementation`` is ``"cryptolib"`` or ``"python"``.
    """

    def __init__(self, key):
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise InvalidKey("AES key must be bytes")
        key = bytes(key)
        if len(key) not in KEY_SIZES:
            raise InvalidKey("AES key must be 16, 24 or 32 bytes")
        self._ecb = None
        self._round_keys = None
        if _cryptolib is not None:
            try:
                self._ecb = _cryptolib.aes(key, 1)
            except Exception:
                self._ecb = None
        if self._ecb is not None:
            self.implementation = "cryptolib"
        else:
            if _SBOX is None:
                _build_tables()
            self._round_keys, self._rounds = _expand_key(key)
            self.implementation = "python"

    def encrypt_block(self, block):
        """Encrypt one 16-byte block; returns 16 bytes."""
        if not _is_block(block):
            raise InvalidKey("AES block must be 16 bytes")
        if self._ecb is not None:
            return bytes(self._ecb.encrypt(bytes(block)))
        out = bytearray(BLOCK_SIZE)
        self._encrypt_python(block, out)
        return bytes(out)

    def encrypt_into(self, block, out):
        """Encrypt the 16-byte ``block`` into the 16-byte bytearray ``out`` (which may be ``block``).

        The pure-Python path allocates nothing; CCM uses this with preallocated buffers.
        """
        if not _is_block(block) or not isinstance(out, bytearray) or len(out) != BLOCK_SIZE:
            raise InvalidKey("AES block must be 16 bytes")
        if self._ecb is not None:
            result = self._ecb.encrypt(bytes(block))
            for i in range(BLOCK_SIZE):
                out[i] = result[i]
        else:
            self._encrypt_python(block, out)

    def _encrypt_python(self, b, out):
        """The cipher on 16-bit halves of the state columns; allocates nothing on MicroPython.

        Every int stays below 2**16 (MicroPython boxes ints from 2**30 on), and locals are assigned
        one by one (unpacking more than three names builds a tuple).
        """
        H0 = _H0
        H1 = _H1
        H2 = _H2
        H3 = _H3
        L0 = _L0
        L1 = _L1
        L2 = _L2
        L3 = _L3
        rk = self._round_keys
        h0 = ((b[0] << 8) | b[1]) ^ rk[0]
        l0 = ((b[2] << 8) | b[3]) ^ rk[1]
        h1 = ((b[4] << 8) | b[5]) ^ rk[2]
        l1 = ((b[6] << 8) | b[7]) ^ rk[3]
        h2 = ((b[8] << 8) | b[9]) ^ rk[4]
        l2 = ((b[10] << 8) | b[11]) ^ rk[5]
        h3 = ((b[12] << 8) | b[13]) ^ rk[6]
        l3 = ((b[14] << 8) | b[15]) ^ rk[7]
        k = 8
        end = 8 * self._rounds
        while k < end:
            a0 = h0 >> 8
            b0 = h0 & 0xFF
            c0 = l0 >> 8
            d0 = l0 & 0xFF
            a1 = h1 >> 8
            b1 = h1 & 0xFF
            c1 = l1 >> 8
            d1 = l1 & 0xFF
            a2 = h2 >> 8
            b2 = h2 & 0xFF
            c2 = l2 >> 8
            d2 = l2 & 0xFF
            a3 = h3 >> 8
            b3 = h3 & 0xFF
            c3 = l3 >> 8
            d3 = l3 & 0xFF
            h0 = H0[a0] ^ H1[b1] ^ H2[c2] ^ H3[d3] ^ rk[k]
            l0 = L0[a0] ^ L1[b1] ^ L2[c2] ^ L3[d3] ^ rk[k + 1]
            h1 = H0[a1] ^ H1[b2] ^ H2[c3] ^ H3[d0] ^ rk[k + 2]
            l1 = L0[a1] ^ L1[b2] ^ L2[c3] ^ L3[d0] ^ rk[k + 3]
            h2 = H0[a2] ^ H1[b3] ^ H2[c0] ^ H3[d1] ^ rk[k + 4]
            l2 = L0[a2] ^ L1[b3] ^ L2[c0] ^ L3[d1] ^ rk[k + 5]
            h3 = H0[a3] ^ H1[b0] ^ H2[c1] ^ H3[d2] ^ rk[k + 6]
            l3 = L0[a3] ^ L1[b0] ^ L2[c1] ^ L3[d2] ^ rk[k + 7]
            k += 8
        sb = _SBOX
        r = rk[k]
        out[0] = sb[h0 >> 8] ^ (r >> 8)
        out[1] = sb[h1 & 0xFF] ^ (r & 0xFF)
        r = rk[k + 1]
        out[2] = sb[l2 >> 8] ^ (r >> 8)
        out[3] = sb[l3 & 0xFF] ^ (r & 0xFF)
        r = rk[k + 2]
        out[4] = sb[h1 >> 8] ^ (r >> 8)
        out[5] = sb[h2 & 0xFF] ^ (r & 0xFF)
        r = rk[k + 3]
        out[6] = sb[l3 >> 8] ^ (r >> 8)
        out[7] = sb[l0 & 0xFF] ^ (r & 0xFF)
        r = rk[k + 4]
        out[8] = sb[h2 >> 8] ^ (r >> 8)
        out[9] = sb[h3 & 0xFF] ^ (r & 0xFF)
        r = rk[k + 5]
        out[10] = sb[l0 >> 8] ^ (r >> 8)
        out[11] = sb[l1 & 0xFF] ^ (r & 0xFF)
        r = rk[k + 6]
        out[12] = sb[h3 >> 8] ^ (r >> 8)
        out[13] = sb[h0 & 0xFF] ^ (r & 0xFF)
        r = rk[k + 7]
        out[14] = sb[l1 >> 8] ^ (r >> 8)
        out[15] = sb[l2 & 0xFF] ^ (r & 0xFF)
