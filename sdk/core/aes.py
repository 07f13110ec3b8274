"""AES-128/192/256 block encryption (FIPS 197), the block cipher under AES-CCM.

Only the forward cipher is provided: CCM uses AES in counter and CBC-MAC modes, which never decrypt
a block. ``AES(key)`` uses the port's ``cryptolib.aes(key, 1)`` (ECB) when MicroPython provides it
and accepts the key; otherwise a pure-Python implementation with 32-bit T-tables built on first use.

Security note: the pure-Python fallback indexes its lookup tables with bytes that depend on the key
and the data. On hardware with data caches this is a cache-timing side channel: an attacker who can
run code on the same machine, or time many encryptions precisely, may learn key bits. It is meant for
CPython hosts (where the ``cpython`` backend with OpenSSL is normally used instead) and for MicroPython
boards without ``cryptolib``, most of which have no data cache; boards with ``cryptolib`` use the
port's own implementation. Interpreter overhead also makes the timing of every operation
data-dependent; the fallback makes no constant-time claim.

Tested in tests/core/test_aes_ccm.py: FIPS 197 appendix C vectors for all key sizes, equality with
pycryptodome's AES on random keys and blocks, the ``cryptolib`` path and its fallback.
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
_T0 = _T1 = _T2 = _T3 = None
_RCON = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1B, 0x36)


def _xtime(x):
    x <<= 1
    if x & 0x100:
        x ^= 0x11B
    return x


def _build_tables():
    """Compute the S-box (multiplicative inverse in GF(2^8) plus affine map) and the T-tables."""
    global _SBOX, _T0, _T1, _T2, _T3
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
    t0 = [0] * 256
    t1 = [0] * 256
    t2 = [0] * 256
    t3 = [0] * 256
    for a in range(256):
        s = sbox[a]
        s2 = _xtime(s)
        s3 = s2 ^ s
        t0[a] = (s2 << 24) | (s << 16) | (s << 8) | s3
        t1[a] = (s3 << 24) | (s2 << 16) | (s << 8) | s
        t2[a] = (s << 24) | (s3 << 16) | (s2 << 8) | s
        t3[a] = (s << 24) | (s << 16) | (s3 << 8) | s2
    _SBOX, _T0, _T1, _T2, _T3 = sbox, t0, t1, t2, t3


def _sub_word(w):
    s = _SBOX
    return (s[w >> 24] << 24) | (s[(w >> 16) & 0xFF] << 16) | (s[(w >> 8) & 0xFF] << 8) | s[w & 0xFF]


def _expand_key(key):
    nk = len(key) // 4
    rounds = nk + 6
    w = [int.from_bytes(key[4 * i:4 * i + 4], "big") for i in range(nk)]
    for i in range(nk, 4 * (rounds + 1)):
        t = w[i - 1]
        if i % nk == 0:
            t = _sub_word(((t << 8) & 0xFFFFFFFF) | (t >> 24)) ^ (_RCON[i // nk - 1] << 24)
        elif nk > 6 and i % nk == 4:
            t = _sub_word(t)
        w.append(w[i - nk] ^ t)
    return w, rounds


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
            if _T0 is None:
                _build_tables()
            self._round_keys, self._rounds = _expand_key(key)
            self.implementation = "python"

    def encrypt_block(self, block):
        """Encrypt one 16-byte block; returns 16 bytes."""
        if not isinstance(block, (bytes, bytearray, memoryview)) or len(block) != BLOCK_SIZE:
            raise InvalidKey("AES block must be 16 bytes")
        if self._ecb is not None:
            return bytes(self._ecb.encrypt(bytes(block)))
        return self._encrypt_python(bytes(block))

    def _encrypt_python(self, block):
        t0, t1, t2, t3, sb = _T0, _T1, _T2, _T3, _SBOX
        rk = self._round_keys
        s0 = int.from_bytes(block[0:4], "big") ^ rk[0]
        s1 = int.from_bytes(block[4:8], "big") ^ rk[1]
        s2 = int.from_bytes(block[8:12], "big") ^ rk[2]
        s3 = int.from_bytes(block[12:16], "big") ^ rk[3]
        k = 4
        for _ in range(self._rounds - 1):
            n0 = t0[s0 >> 24] ^ t1[(s1 >> 16) & 0xFF] ^ t2[(s2 >> 8) & 0xFF] ^ t3[s3 & 0xFF] ^ rk[k]
            n1 = t0[s1 >> 24] ^ t1[(s2 >> 16) & 0xFF] ^ t2[(s3 >> 8) & 0xFF] ^ t3[s0 & 0xFF] ^ rk[k + 1]
            n2 = t0[s2 >> 24] ^ t1[(s3 >> 16) & 0xFF] ^ t2[(s0 >> 8) & 0xFF] ^ t3[s1 & 0xFF] ^ rk[k + 2]
            n3 = t0[s3 >> 24] ^ t1[(s0 >> 16) & 0xFF] ^ t2[(s1 >> 8) & 0xFF] ^ t3[s2 & 0xFF] ^ rk[k + 3]
            s0, s1, s2, s3 = n0, n1, n2, n3
            k += 4
        c0 = ((sb[s0 >> 24] << 24) | (sb[(s1 >> 16) & 0xFF] << 16)
              | (sb[(s2 >> 8) & 0xFF] << 8) | sb[s3 & 0xFF]) ^ rk[k]
        c1 = ((sb[s1 >> 24] << 24) | (sb[(s2 >> 16) & 0xFF] << 16)
              | (sb[(s3 >> 8) & 0xFF] << 8) | sb[s0 & 0xFF]) ^ rk[k + 1]
        c2 = ((sb[s2 >> 24] << 24) | (sb[(s3 >> 16) & 0xFF] << 16)
              | (sb[(s0 >> 8) & 0xFF] << 8) | sb[s1 & 0xFF]) ^ rk[k + 2]
        c3 = ((sb[s3 >> 24] << 24) | (sb[(s0 >> 16) & 0xFF] << 16)
              | (sb[(s1 >> 8) & 0xFF] << 8) | sb[s2 & 0xFF]) ^ rk[k + 3]
        return c0.to_bytes(4, "big") + c1.to_bytes(4, "big") + c2.to_bytes(4, "big") + c3.to_bytes(4, "big")
