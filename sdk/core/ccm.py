"""AES-CCM authenticated encryption (RFC 3610), general parameters.

Nonce 7..13 bytes (length field L = 15 - nonce length), tag 4, 6, ..., 16 bytes, AES-128/192/256.
COSE algorithm 10, AES-CCM-16-64-128 (RFC 9053), is key 16, nonce 13, tag 8 bytes: the defaults.

Protects against: disclosure of the plaintext and undetected changes to ciphertext, tag or associated
data. ``open`` checks the tag in constant time before returning anything and raises InvalidTag on
mismatch, so no unauthenticated plaintext is ever released. Parameters outside RFC 3610 (nonce or tag
sizes, a message too long for L) are refused with InvalidKey rather than encoded ambiguously. The
caller must never reuse a nonce under one key. Tested in tests/core/test_aes_ccm.py: RFC 3610 packet
vector #1, all Wycheproof AES-CCM vectors, and byte equality with pycryptodome and cryptography on
random inputs.
"""

from ledgerlink.core.aes import AES
from ledgerlink.core.errors import InvalidKey, InvalidTag
from ledgerlink.core.kdf import constant_time_equal

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


def _xor(a, b):
    """XOR of two equal-length byte strings."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _cbc_mac(cipher, nonce, aad, message, tag_len, length_size):
    flags = (0x40 if aad else 0) | (((tag_len - 2) // 2) << 3) | (length_size - 1)
    mac = cipher.encrypt_block(bytes((flags,)) + nonce + len(message).to_bytes(length_size, "big"))
    blocks = []
    if aad:
        blocks.append(_encode_aad_length(len(aad)) + aad)
    blocks.append(message)
    for data in blocks:
        rem = len(data) % 16
        if rem:
            data = data + bytes(16 - rem)
        for i in range(0, len(data), 16):
            mac = cipher.encrypt_block(_xor(mac, data[i:i + 16]))
    return mac[:tag_len]


def _ctr(cipher, nonce, data, length_size):
    """XOR ``data`` with the key stream S_1, S_2, ...; also returns S_0 for the tag."""
    prefix = bytes((length_size - 1,)) + nonce
    s0 = cipher.encrypt_block(prefix + bytes(length_size))
    out = bytearray()
    counter = 1
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        stream = cipher.encrypt_block(prefix + counter.to_bytes(length_size, "big"))
        out.extend(_xor(chunk, stream[:len(chunk)]))
        counter += 1
    return bytes(out), s0


def seal(key, nonce, plaintext, aad=b"", tag_len=8):
    """Encrypt and authenticate ``plaintext`` (and ``aad``); returns ciphertext || tag."""
    cipher, nonce, aad, length_size = _check(key, nonce, aad, tag_len)
    plaintext = _as_bytes(plaintext, "plaintext")
    if length_size < 8 and len(plaintext) >= (1 << (8 * length_size)):
        raise InvalidKey("message too long for the CCM nonce length")
    tag = _cbc_mac(cipher, nonce, aad, plaintext, tag_len, length_size)
    ciphertext, s0 = _ctr(cipher, nonce, plaintext, length_size)
    return ciphertext + _xor(tag, s0[:tag_len])


def open(key, nonce, data, aad=b"", tag_len=8):
    """Check and decrypt ciphertext || tag; returns the plaintext or raises InvalidTag."""
    cipher, nonce, aad, length_size = _check(key, nonce, aad, tag_len)
    data = _as_bytes(data, "data")
    if len(data) < tag_len:
        raise InvalidTag("CCM data shorter than the tag")
    ciphertext = data[:len(data) - tag_len]
    received = data[len(data) - tag_len:]
    if length_size < 8 and len(ciphertext) >= (1 << (8 * length_size)):
        raise InvalidTag("CCM data too long for the nonce length")
    plaintext, s0 = _ctr(cipher, nonce, ciphertext, length_size)
    expected = _xor(_cbc_mac(cipher, nonce, aad, plaintext, tag_len, length_size), s0[:tag_len])
    if not constant_time_equal(expected, received):
        raise InvalidTag("CCM authentication tag does not match")
    return plaintext
