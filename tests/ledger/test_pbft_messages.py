"""PBFT wire messages, headers and commit certificates: round trips, strict decoding, signatures."""

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core.backend import get_backend
from ledgerlink.core.merkle import MerkleTree, root_of
from ledgerlink.ledger.consensus import messages as m

CRYPTO = get_backend("cpython")
KEYS = [bytes([i + 1]) * 32 for i in range(4)]
PUBS = tuple(CRYPTO.public_key(k) for k in KEYS)
CHAIN = "test-chain"

h32 = st.binary(min_size=32, max_size=32)
uint = st.integers(min_value=0, max_value=m.MAX_UINT64)
headers = st.builds(m.Header, st.text(max_size=20), uint, h32, uint, h32, h32, h32)
txs = st.lists(st.binary(max_size=40), max_size=5).map(tuple)


def sign(body, key_index=None):
    return m.encode_message(CHAIN, body, KEYS[body[1] if key_index is None else key_index], CRYPTO)


def decode(raw):
    return m.decode_message(raw, CHAIN, PUBS, CRYPTO)


@settings(max_examples=60, deadline=None)
@given(headers)
def test_header_round_trip_and_hash(header):
    enc = header.encode()
    assert m.Header.from_obj(m.loads(enc)) == header
    assert header.hash() == hashlib.sha256(enc).digest()
    assert len(m.loads(enc)) == 7


@settings(max_examples=40, deadline=None)
@given(uint, uint, h32, st.lists(st.tuples(st.integers(0, 10), st.binary(min_size=64, max_size=64)),
                                 min_size=1, max_size=5))
def test_certificate_round_trip(height, view, hh, votes):
    cert = m.CommitCertificate(height, view, hh, tuple(votes))
    assert m.CommitCertificate.from_obj(m.loads(cert.encode())) == cert


@settings(max_examples=40, deadline=None)
@given(headers, txs)
def test_block_round_trip(header, block_txs):
    block = m.Block(header, block_txs)
    assert m.Block.decode(block.encode()) == block


def test_tx_root_and_validators_hash_definitions():
    assert m.tx_root([b"a", b"b"]) == root_of([b"a", b"b"])
    assert m.tx_root([]) == hashlib.sha256(b"").digest()
    expect = hashlib.sha256(m.dumps([[0, PUBS[0]], [1, PUBS[1]]])).digest()
    assert m.validators_hash(PUBS[:2]) == expect


def test_commit_signature_is_certificate_vote():
    hh = bytes(range(32))
    raw = sign([m.COMMIT, 2, 5, 9, hh])
    msg = decode(raw)
    assert msg.fields == (5, 9, hh)
    signed = m.dumps(["ledgerlink-commit-v1", CHAIN, 9, 5, hh])
    assert m.commit_sign_bytes(CHAIN, 9, 5, hh) == signed
    assert CRYPTO.verify(PUBS[2], signed, msg.sig)


def sample_messages():
    header = m.Header(CHAIN, 3, bytes(32), 1000, m.tx_root([b"t"]), bytes(32), m.validators_hash(PUBS))
    hh = header.hash()
    pp = sign([m.PRE_PREPARE, 1, 1, 3, header.to_obj(), [b"t"]])
    votes = [[i, CRYPTO.sign(KEYS[i], m.commit_sign_bytes(CHAIN, 2, 0, hh))] for i in range(3)]
    cert = [2, 0, hh, votes]
    return [
        [m.REQUEST, 0, [b"tx"]],
        [m.PRE_PREPARE, 1, 1, 3, header.to_obj(), [b"t"]],
        [m.PREPARE, 2, 1, 3, hh],
        [m.COMMIT, 3, 1, 3, hh],
        [m.CHECKPOINT, 0, 15, hh],
        [m.VIEW_CHANGE, 2, 2, [header.to_obj(), cert], [pp, [[0, bytes(64)], [2, bytes(64)]]]],
        [m.VIEW_CHANGE, 2, 2, None, None],
        [m.NEW_VIEW, 2, 2, [b"vc1", b"vc2"], None],
        [m.FETCH_BLOCKS, 0, 1, 5],
        [m.BLOCKS, 3, [[header.to_obj(), [b"t"], cert]]],
    ]


@pytest.mark.parametrize("body", sample_messages(), ids=lambda b: m.KIND_NAMES[b[0]])
def test_every_kind_round_trips_and_is_signature_checked(body):
    raw = sign(body)
    msg = decode(raw)
    assert (msg.kind, msg.sender, msg.raw) == (body[0], body[1], raw)
    # signed by another validator's key: refused
    with pytest.raises(m.MessageError) as e:
        decode(sign(body, key_index=(body[1] + 1) % 4))
    assert e.value.reason == "bad signature"
    # any truncation is refused, never an IndexError/TypeError
    for cut in range(0, len(raw), max(1, len(raw) // 25)):
        with pytest.raises(m.MessageError):
            decode(raw[:cut])
    # one flipped bit anywhere is refused
    for pos in range(0, len(raw), max(1, len(raw) // 25)):
        bad = raw[:pos] + bytes([raw[pos] ^ 0x10]) + raw[pos + 1:]
        with pytest.raises(m.MessageError):
            decode(bad)


def test_unknown_sender_unknown_kind_and_wrong_arity():
    with pytest.raises(m.MessageError) as e:
        decode(m.dumps([m.PREPARE, 4, 0, 0, bytes(32), bytes(64)]))
    assert e.value.reason == "unknown sender"
    with pytest.raises(m.MessageError) as e:
        decode(m.dumps([42, 0, 0, bytes(64)]))
    assert e.value.reason == "unknown kind"
    with pytest.raises(m.MessageError) as e:
        decode(m.dumps([m.PREPARE, 0, 0, 0, bytes(32), b"x", bytes(64)]))
    assert e.value.reason == "malformed"
    with pytest.raises(m.MessageError) as e:
        decode(m.dumps([m.PREPARE, 0, -1, 0, bytes(32), bytes(64)]))
    assert e.value.reason == "malformed"


def test_oversized_fields_refused():
    limits = m.Limits(max_batch=2, max_tx_size=8, max_blocks=1)
    raw = sign([m.REQUEST, 0, [b"x" * 9]])
    with pytest.raises(m.MessageError) as e:
        m.decode_message(raw, CHAIN, PUBS, CRYPTO, limits)
    assert e.value.reason == "oversized"
    header = m.Header(CHAIN, 0, bytes(32), 0, bytes(32), bytes(32), bytes(32))
    raw = sign([m.PRE_PREPARE, 0, 0, 0, header.to_obj(), [b"a", b"b", b"c"]])
    with pytest.raises(m.MessageError) as e:
        m.decode_message(raw, CHAIN, PUBS, CRYPTO, limits)
    assert e.value.reason == "oversized"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_message_error(data):
    with pytest.raises(m.MessageError):
        decode(data)


def _cert(header, signers, view=0):
    hh = header.hash()
    msg = m.commit_sign_bytes(CHAIN, header.height, view, hh)
    return m.CommitCertificate(header.height, view, hh,
                               tuple((i, CRYPTO.sign(KEYS[i], msg)) for i in signers))


def test_verify_certificate():
    header = m.Header(CHAIN, 7, bytes(32), 5, bytes(32), bytes(32), m.validators_hash(PUBS))
    m.verify_certificate(_cert(header, [0, 1, 3]), header, CHAIN, PUBS, CRYPTO)
    good = _cert(header, [0, 1, 2]).votes
    for votes in (good[:2], good[:2] + good[:1], good[:2] + ((4, good[2][1]),),
                  good[:2] + ((2, bytes(64)),)):
        with pytest.raises(m.MessageError):
            m.verify_certificate(m.CommitCertificate(7, 0, header.hash(), votes), header, CHAIN,
                                 PUBS, CRYPTO)
    other = m.Header(CHAIN, 7, bytes(32), 6, bytes(32), bytes(32), m.validators_hash(PUBS))
    with pytest.raises(m.MessageError):
        m.verify_certificate(_cert(header, [0, 1, 2]), other, CHAIN, PUBS, CRYPTO)
    with pytest.raises(m.MessageError):  # votes from another view
        cert = _cert(header, [0, 1, 2], view=1)
        m.verify_certificate(m.CommitCertificate(7, 0, cert.header_hash, cert.votes), header, CHAIN,
                             PUBS, CRYPTO)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=70))
def test_tx_root_is_the_rfc9162_root(txs):
    assert m.tx_root(txs) == m.tx_root(tuple(txs)) == MerkleTree(txs).root()     # the append-built tree
