"""COSE_Sign1 / COSE_Encrypt0: interoperability with pycose both ways, tampering and bad structure."""

import os

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycose.algorithms import AESCCM1664128, Es256
from pycose.headers import IV, KID, Algorithm, PartialIV
from pycose.keys import EC2Key, SymmetricKey
from pycose.keys.curves import P256
from pycose.messages import Enc0Message, Sign1Message

from ledgerlink.core import cbor, cose, ecdsa
from ledgerlink.core.errors import DecodeError, InvalidKey, InvalidMessage, InvalidSignature, InvalidTag

BACKENDS = ["portable", "cpython"]


def _pycose_decode(cls, frame: bytes):
    """pycose's own decoding, entered below the outer tag (pycose 1.1 expects lists where cbor2 >= 6
    returns tuples for tagged arrays)."""
    outer = cbor2.loads(frame)
    assert outer.tag == cls.cbor_tag
    return cls.from_cose_obj([dict(v) if isinstance(v, dict) or hasattr(v, "items") else v
                              for v in outer.value], True)


def _pycose_ec_key(priv: bytes | None, pub: bytes) -> EC2Key:
    if priv is None:
        return EC2Key(crv=P256, x=pub[1:33], y=pub[33:])
    return EC2Key(crv=P256, x=pub[1:33], y=pub[33:], d=priv)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=4, deadline=None)
@given(payload=st.binary(max_size=200), aad=st.binary(max_size=40))
def test_sign1_verifies_in_pycose_and_back(backend, payload, aad):
    priv = ecdsa.generate_private_key()
    pub = ecdsa.public_key(priv)
    frame = cose.sign1(payload, priv, kid=b"dev-1", external_aad=aad, backend=backend)
    theirs = _pycose_decode(Sign1Message, frame)
    theirs.key = _pycose_ec_key(None, pub)
    theirs.external_aad = aad
    assert theirs.verify_signature()
    assert theirs.payload == payload

    made = Sign1Message(phdr={Algorithm: Es256}, uhdr={KID: b"dev-2"}, payload=payload, external_aad=aad)
    made.key = _pycose_ec_key(priv, pub)
    frame2 = made.encode()
    assert cose.verify_sign1(frame2, pub, external_aad=aad, backend=backend) == payload
    assert cose.sign1_kid(frame2) == b"dev-2"


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=6, deadline=None)
@given(plaintext=st.binary(max_size=300), aad=st.binary(max_size=40), seq=st.integers(1, 2**40))
def test_encrypt0_decrypts_in_pycose_and_back(backend, plaintext, aad, seq):
    key = os.urandom(16)
    base_iv = b"\x80" + os.urandom(12)  # pycose drops leading zero bytes of the derived nonce
    partial_iv = seq.to_bytes((seq.bit_length() + 7) // 8, "big")
    frame = cose.encrypt0(plaintext, key, partial_iv=partial_iv, base_iv=base_iv, kid=b"s1",
                          external_aad=aad, backend=backend)
    theirs = _pycose_decode(Enc0Message, frame)
    theirs.key = SymmetricKey(k=key)
    theirs.key.base_iv = base_iv
    theirs.external_aad = aad
    assert theirs.decrypt() == plaintext

    nonce = os.urandom(13)
    made = Enc0Message(phdr={Algorithm: AESCCM1664128}, uhdr={KID: b"s2", IV: nonce}, payload=plaintext,
                       external_aad=aad)
    made.key = SymmetricKey(k=key)
    assert cose.decrypt0(made.encode(), key, external_aad=aad, backend=backend) == plaintext

    made = Enc0Message(phdr={Algorithm: AESCCM1664128}, uhdr={PartialIV: partial_iv}, payload=plaintext,
                       external_aad=aad)
    made.key = SymmetricKey(k=key)
    made.key.base_iv = base_iv
    assert cose.decrypt0(made.encode(), key, base_iv=base_iv, external_aad=aad, backend=backend) == plaintext


def test_non_deterministic_encoding_is_refused():
    key = os.urandom(16)
    made = Enc0Message(phdr={Algorithm: AESCCM1664128}, uhdr={IV: os.urandom(13), KID: b"s2"}, payload=b"x")
    made.key = SymmetricKey(k=key)
    with pytest.raises(DecodeError):
        cose.decrypt0(made.encode(), key)


def test_backends_give_identical_frames():
    priv = ecdsa.generate_private_key()
    frames = {cose.sign1(b"reading", priv, b"k", b"topic", backend=b) for b in BACKENDS}
    assert len(frames) == 1
    key, base_iv = os.urandom(16), os.urandom(13)
    frames = {cose.encrypt0(b"x" * 64, key, partial_iv=b"\x07", base_iv=base_iv, kid=b"s", backend=b)
              for b in BACKENDS}
    assert len(frames) == 1


def test_tampering_is_refused():
    priv = ecdsa.generate_private_key()
    pub = ecdsa.public_key(priv)
    frame = cose.sign1(b"temperature=21.5", priv, b"dev", external_aad=b"ll/s/dev/x/up")
    with pytest.raises(InvalidSignature):
        cose.verify_sign1(frame, pub, external_aad=b"ll/s/dev/y/up")
    kid_at = frame.index(b"dev")
    for i in range(len(frame)):
        if kid_at <= i < kid_at + 3:
            continue  # the kid is unprotected by design: it only selects the key to verify with
        bad = bytearray(frame)
        bad[i] ^= 0x01
        with pytest.raises((DecodeError, InvalidMessage, InvalidSignature)):
            cose.verify_sign1(bytes(bad), pub, external_aad=b"ll/s/dev/x/up")
    with pytest.raises(InvalidSignature):
        cose.verify_sign1(frame, ecdsa.public_key(ecdsa.generate_private_key()), external_aad=b"ll/s/dev/x/up")

    key, base_iv = os.urandom(16), os.urandom(13)
    sealed = cose.encrypt0(b"valve=open", key, partial_iv=b"\x01", base_iv=base_iv)
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x01
        with pytest.raises((DecodeError, InvalidMessage, InvalidTag, InvalidKey)):
            cose.decrypt0(bytes(bad), key, base_iv=base_iv)
    with pytest.raises(InvalidTag):
        cose.decrypt0(sealed, key, base_iv=base_iv, external_aad=b"other topic")


@pytest.mark.parametrize("frame, error", [
    (b"", DecodeError),
    (b"\xd2", DecodeError),
    (cbor.dumps(cbor.Tag(17, [b"", {}, b"", b""])), InvalidMessage),
    (cbor.dumps(cbor.Tag(18, [b"", {}, b""])), InvalidMessage),
    (cbor.dumps(cbor.Tag(18, [cbor.dumps({1: -35}), {}, b"p", bytes(64)])), InvalidMessage),
    (cbor.dumps(cbor.Tag(18, [cbor.dumps({1: -7}), {4: "text"}, b"p", bytes(64)])), InvalidMessage),
    (cbor.dumps(cbor.Tag(18, [cbor.dumps({1: -7}), {99: 1}, b"p", bytes(64)])), InvalidMessage),
    (cbor.dumps(cbor.Tag(18, [cbor.dumps({1: -7}), {}, None, bytes(64)])), InvalidMessage),
    (cbor.dumps(cbor.Tag(18, [cbor.dumps({1: -7}), {}, b"p", bytes(63)])), InvalidMessage),
    (cbor.dumps(cbor.Tag(18, [cbor.dumps({1: -7}), {}, b"p" * 5000, bytes(64)])), InvalidMessage),
    (cbor.dumps(cbor.Tag(18, [b"\xff", {}, b"p", bytes(64)])), InvalidMessage),
])
def test_malformed_sign1(frame, error):
    with pytest.raises(error):
        cose.verify_sign1(frame, ecdsa.public_key(b"\x01" * 32))


def test_malformed_encrypt0():
    key, base_iv = os.urandom(16), os.urandom(13)
    p = cbor.dumps({1: 10})
    for arr in ([p, {}, bytes(20)], [p, {5: bytes(13), 6: b"\x01"}, bytes(20)], [p, {5: bytes(12)}, bytes(20)],
                [p, {6: b""}, bytes(20)], [p, {6: b"\x01"}, bytes(7)], [cbor.dumps({1: 11}), {6: b"\x01"}, bytes(20)]):
        with pytest.raises(InvalidMessage):
            cose.decrypt0(cbor.dumps(cbor.Tag(16, arr)), key, base_iv=base_iv)
    with pytest.raises(InvalidKey):
        cose.encrypt0(b"x", bytes(15), partial_iv=b"\x01", base_iv=base_iv)
    with pytest.raises(InvalidKey):
        cose.decrypt0(cose.encrypt0(b"x", key, partial_iv=b"\x01", base_iv=base_iv), key)
