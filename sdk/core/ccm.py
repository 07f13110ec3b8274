"""AES-CCM authenticated encryption (RFC 3610), general parameters.

Nonce 7..13 bytes (length field L = 15 - nonce length), tag 4, 6, ..., 16 bytes, AES-128/192/256.
COSE algorithm 10, AES-CCM-16-64-128 (RFC 9053), is key 16, nonce 13, tag 8 bytes: the defaults.

Protects against: disclosure of the plaintext and undetected changes to ciphertext, tag or associated
data. ``open`` checks the tag in constant time before returning anything and raises InvalidTag on
mismatch, so no unauthenticated plaintext is ever released. Parameters outside RFC 3610 (nonce or tag
sizes, a message too long for L) are refused with InvalidKey rather than encoded ambiguously. The
caller must never reuse a nonce under one key. Tested in tests/core/test_aes_ccm.py: RFC 3610 packet
vector #1, all Wycheproof AES-CCM vectors, byte equality with pycryptodome and cryptography on
random inputs, and the heap use of a 1 KB seal and open inside the MicroPython VM.

CBC-MAC and counter mode share one pass over the data with preallocated 16-byte buffers, so a message
costs its output buffers and a few small objects, not an allocation per block.
"""

from ledgerlink.core.aes import AES
from ledgerlink.core.errors import InvalidKey, InvalidTag

COSE_ALG_AES_CCM_16_64_128 = 10
AES_CCM_16_64_128_KEY_LEN = 16
AES_CCM_16_64_128_NONCE_LEN = 13
AES_CCM_16_64_128_TAG_LEN = 8

TAG_LENGTHS = (4, 6, 8, 10, 12, 14, 16)
MIN_NONCE_LEN = 7
MAX_NONCE_LEN = 13


def _as_bytes(value, what):
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise InvalidKey("%s must be bytes" % what)


def _check(key, nonce, aad, tag_len):
    """Validate the parameters; returns (cipher, nonce, aad, L)."""
    nonce = _as_bytes(nonce, "nonce")
    aad = b"" if aad is None else _as_bytes(aad, "aad")
    if len(nonce) < MIN_NONCE_LEN or len(nonce) > MAX_NONCE_LEN:
        raise InvalidKey("CCM nonce must be 7 to 13 bytes")
    if not isinstance(tag_len, int) or tag_len not in TAG_LENGTHS:
        raise InvalidKey("CCM tag must be 4, 6, 8, 10, 12, 14 or 16 bytes")
    return AES(key), nonce, aad, 15 - len(nonce)


def _encode_aad_length(n):
    if n < 0xFF00:
        return n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\xff\xfe" + n.to_bytes(4, "big")
    return b"\xff\xff" + n.to_bytes(8, "big")


def _copy(dst, offset, src):
    """Copy ``src`` into the bytearray ``dst`` at ``offset`` (no slice assignment on every port)."""
    for i in range(len(src)):
        dst[offset + i] = src[i]


def _mac_absorb(cipher, x, data, pos):
    """XOR ``data`` into the CBC-MAC state ``x`` from byte ``pos`` on, encrypting each full block.

    Returns the new position (0..15) in the current block.
    """
    for i in range(len(data)):
        x[pos] ^= data[i]
        pos += 1
        if pos == 16:
            cipher.encrypt_into(x, x)
            pos = 0
    return pos


def _ctr_block(block, counter, length_size):
    """Write ``counter`` big-endian into the last ``length_size`` bytes of ``block``."""
    for j in range(15, 15 - length_size, -1):
        block[j] = counter & 0xFF
        counter >>= 8


def _ccm(cipher, nonce, aad, data, tag_len, length_size, out, encrypt):
    """Run CCM over ``data`` into ``out``; returns the tag (bytearray of ``tag_len`` bytes).

    ``encrypt`` selects which of input and output is the plaintext that the CBC-MAC covers. The MAC
    and the key stream come from preallocated 16-byte buffers, so the pure-Python cipher allocates
    nothing per block.
    """
    n = len(data)
    x = bytearray(16)
    x[0] = (0x40 if aad else 0) | (((tag_len - 2) // 2) << 3) | (length_size - 1)
    _copy(x, 1, nonce)
    _ctr_block(x, n, length_size)
    cipher.encrypt_into(x, x)
    if aad:
        pos = _mac_absorb(cipher, x, _encode_aad_length(len(aad)), 0)
        if _mac_absorb(cipher, x, aad, pos):
            cipher.encrypt_into(x, x)

    ctr = bytearray(16)
    ctr[0] = length_size - 1
    _copy(ctr, 1, nonce)
    stream = bytearray(16)
    counter = 1
    i = 0
    while i < n:
        _ctr_block(ctr, counter, length_size)
        cipher.encrypt_into(ctr, stream)
        m = n - i
        if m > 16:
            m = 16
        for j in range(m):
            d = data[i + j]
            e = d ^ stream[j]
            out[i + j] = e
            x[j] ^= d if encrypt else e
        cipher.encrypt_into(x, x)
        counter += 1
        i += 16

    _ctr_block(ctr, 0, length_size)
    cipher.encrypt_into(ctr, stream)
    tag = bytearray(tag_len)
    for j in range(tag_len):
        tag[j] = x[j] ^ stream[j]
    return tag


def seal(key, nonce, plaintext, aad=b"", tag_len=8):
    """Encrypt and authenticate ``plaintext`` (and ``aad``); returns ciphertext || tag."""
    cipher, nonce, aad, length_size = _check(key, nonce, aad, tag_len)
    plaintext = _as_bytes(plaintext, "plaintext")
    n = len(plaintext)
    if length_size < 8 and n >= (1 << (8 * length_size)):
        raise InvalidKey("message too long for the CCM nonce length")
    out = bytearray(n + tag_len)
    tag = _ccm(cipher, nonce, aad, plaintext, tag_len, length_size, out, True)
    _copy(out, n, tag)
    return bytes(out)


def open(key, nonce, data, aad=b"", tag_len=8):
    """Check and decrypt ciphertext || tag; returns the plaintext or raises InvalidTag."""
    cipher, nonce, aad, length_size = _check(key, nonce, aad, tag_len)
    data = _as_bytes(data, "data")
    if len(data) < tag_len:
        raise InvalidTag("CCM data shorter than the tag")
    n = len(data) - tag_len
    if length_size < 8 and n >= (1 << (8 * length_size)):
        raise InvalidTag("CCM data too long for the nonce length")
    view = memoryview(data)
    out = bytearray(n)
    expected = _ccm(cipher, nonce, aad, view[:n], tag_len, length_size, out, False)
    from ledgerlink.core.kdf import constant_time_equal   # opening only: sealing (all a board does) never loads it

    if not constant_time_equal(expected, view[n:]):
        raise InvalidTag("CCM authentication tag does not match")
    return bytes(out)
