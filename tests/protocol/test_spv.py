"""SPV checks: certified headers, record proofs and tx inclusion against real ledger state and votes."""

import pytest

from ledgerlink.core import cbor, merkle, smt
from ledgerlink.protocol import spv
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import DecodeError, InvalidMessage, InvalidProof
from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.state.codes import RecordKind, Role
from tests.backends import CountingBackend
from tests.devnet import DevNet

CRYPTO = get_backend("cpython")


def _certified_block(votes: int = 3, view: int = 0):
    net = DevNet()
    state = net.genesis()
    txs = [net.register("admin", "sensor-1", Role.SENSOR), net.register("admin", "sensor-2", Role.SENSOR)]
    root = state.execute(1, net.time_ms + 1000, txs)
    state.commit(1)
    keys = [net[n].pub for n in net.validator_names]
    header = m.Header(net.chain_id, 1, bytes(32), net.time_ms + 1000, merkle.root_of(txs), root,
                      m.validators_hash(keys))
    hh = header.hash()
    msg = m.commit_sign_bytes(net.chain_id, 1, view, hh)
    cert = m.CommitCertificate(1, view, hh, tuple(
        (i, CRYPTO.sign(net[net.validator_names[i]].priv, msg)) for i in range(votes)))
    return net, state, txs, keys, [header.to_obj(), cert.to_obj()]


def test_certified_header_record_and_tx_proofs():
    net, state, txs, keys, certified = _certified_block()
    header = spv.verify_certified_header(cbor.dumps(certified), net.chain_id, keys)
    assert header.height == 1 and header.hash == m.Header.from_obj(certified[0]).hash()
    assert spv.validators_hash(keys) == m.validators_hash(keys)

    key, value, proof = state.prove(RecordKind.DEVICE, net["sensor-1"].id)
    assert key == spv.state_key(RecordKind.DEVICE, net["sensor-1"].id)
    record_proof = cbor.dumps({1: certified, 2: key, 3: value, 4: smt.proof_to_cbor_obj(proof)})
    h, k, v = spv.verify_record_proof(record_proof, net.chain_id, keys)
    assert v == value and v is not None

    absent_key, absent, absent_proof = state.prove(RecordKind.DEVICE, b"\x00" * 16)
    assert absent is None
    spv.verify_record(header, absent_key, None, smt.proof_to_cbor_obj(absent_proof))
    with pytest.raises(InvalidProof):
        spv.verify_record(header, key, None, smt.proof_to_cbor_obj(proof))
    with pytest.raises(InvalidProof):
        spv.verify_record(header, key, value + b"x", smt.proof_to_cbor_obj(proof))

    tree = merkle.MerkleTree(txs)
    spv.verify_tx_inclusion(header, txs[1], 1, 2, tree.inclusion_proof(1))
    with pytest.raises(InvalidProof):
        spv.verify_tx_inclusion(header, txs[0], 1, 2, tree.inclusion_proof(1))


def test_portable_backend_gives_the_same_verdict():
    net, _, _, keys, certified = _certified_block()
    assert spv.verify_certified_header(certified, net.chain_id, keys, backend="portable").height == 1


@pytest.mark.parametrize("mutate, error", [
    (lambda c, k: (c, k[:3]), InvalidProof),                                   # other validator set
    (lambda c, k: ([c[0], c[1][:3] + [c[1][3][:2]]], k), InvalidProof),          # 2 votes < 2f+1
    (lambda c, k: ([c[0], c[1][:3] + [[c[1][3][0]] * 3]], k), InvalidProof),     # duplicate voter
    (lambda c, k: ([c[0], c[1][:3] + [[[9, c[1][3][0][1]]] + c[1][3][1:]]], k), InvalidProof),
    (lambda c, k: ([c[0], [c[1][0], c[1][1] + 1] + c[1][2:]], k), InvalidProof),  # view changed
    (lambda c, k: ([c[0][:5] + [bytes(32)] + c[0][6:], c[1]], k), InvalidProof),  # state root forged
    (lambda c, k: ([["other"] + c[0][1:], c[1]], k), InvalidProof),
    (lambda c, k: ([c[0][:6], c[1]], k), InvalidMessage),
    (lambda c, k: ([c[0], c[1][:3]], k), InvalidMessage),
    (lambda c, k: ([c[0]], k), InvalidMessage),
    (lambda c, k: ([c[0][:1] + [2**64] + c[0][2:], c[1]], k), InvalidMessage),  # height a bignum, not a uint
    (lambda c, k: ([c[0], [c[1][0], 2**64] + c[1][2:]], k), InvalidMessage),     # view a bignum
])
def test_forged_headers_are_refused(mutate, error):
    net, _, _, keys, certified = _certified_block()
    bad_cert, bad_keys = mutate(certified, keys)
    with pytest.raises(error):
        spv.verify_certified_header(bad_cert, net.chain_id, bad_keys)


def test_signature_from_outside_the_set_is_refused():
    net, _, _, keys, certified = _certified_block()
    outsider = net["mallory"]
    votes = certified[1][3]
    votes[0] = [0, CRYPTO.sign(outsider.priv, b"anything")]
    with pytest.raises(InvalidProof):
        spv.verify_certified_header(certified, net.chain_id, keys)


def test_garbage_bytes():
    with pytest.raises(DecodeError):
        spv.verify_certified_header(b"\xff\x00", "c", [b"k"])
    with pytest.raises(InvalidMessage):
        spv.verify_record_proof(cbor.dumps({1: 2}), "c", [b"k"])


def test_a_record_proof_on_a_header_verified_already_checks_its_record_alone():
    net, state, _, keys, certified = _certified_block()
    key, value, proof = state.prove(RecordKind.DEVICE, net["sensor-1"].id)
    record_proof = {1: certified, 2: key, 3: value, 4: smt.proof_to_cbor_obj(proof)}
    counting = CountingBackend()
    header, _, _ = spv.verify_record_proof(record_proof, net.chain_id, keys, counting)
    assert counting.verifies == 3
    again = cbor.loads(cbor.dumps(record_proof))            # decoded apart, as an offer's second proof is
    assert spv.verify_record_proof(again, net.chain_id, keys, counting, verified=(spv.certified_hash(certified), header))[2] == value
    assert counting.verifies == 3
    with pytest.raises(InvalidProof):                       # the record is still checked against the header
        spv.verify_record_proof({**again, 3: value + b"x"}, net.chain_id, keys, counting,
                                verified=(spv.certified_hash(certified), header))


def test_a_record_proof_on_another_header_is_checked_whole():
    net, state, _, keys, certified = _certified_block()
    key, value, proof = state.prove(RecordKind.DEVICE, net["sensor-1"].id)
    header = spv.verify_certified_header(certified, net.chain_id, keys)
    forged = [certified[0], list(certified[1])]
    forged[1][1] = 1                                        # another view: the votes do not sign it
    record_proof = {1: forged, 2: key, 3: value, 4: smt.proof_to_cbor_obj(proof)}
    counting = CountingBackend()
    with pytest.raises(InvalidProof):
        spv.verify_record_proof(record_proof, net.chain_id, keys, counting, verified=(spv.certified_hash(certified), header))
    assert counting.verifies == 1
