"""The ledger state's fast paths give what the plain ones give: direct state-key encoding, the cache
of decoded transactions (state-dependent checks are still made on every run), lazy dry-run journals,
and Merkle tree writes applied at execute and undone by rollback."""

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor, cose, smt
from ledgerlink.ledger.state import Reason, RecordKind as RK, TxKind, state_key
from ledgerlink.ledger.state import encoding as enc
from tests.devnet import DevNet

T = DevNet().time_ms


@pytest.fixture
def net():
    return DevNet()


ints = st.one_of(st.integers(0, 300), st.integers(-(2 ** 65), 2 ** 65), st.just(2 ** 64 - 1), st.just(2 ** 64))
leaves = st.one_of(st.binary(max_size=300), ints, st.text(max_size=5), st.booleans())
ids = st.one_of(leaves, st.lists(leaves, max_size=4), st.tuples(leaves, leaves))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 40), ids)
def test_state_key_matches_cbor(kind, record_id):
    plain = list(record_id) if isinstance(record_id, tuple) else record_id
    assert state_key(kind, record_id) == hashlib.sha256(cbor.dumps([kind, plain])).digest()


def anchor(net, batch, signer="gateway"):
    return net.tx(signer, TxKind.ANCHOR, {4: batch, 5: bytes(32), 6: 1})


def test_cached_tx_sees_a_later_registration_and_ban(net):
    state = net.genesis()
    tx = anchor(net, 1, signer="gateway3")
    assert state.check_tx(tx, T) == Reason.UNKNOWN_DEVICE
    assert net.block(state, [net.register("admin", "gateway3", 3)])[0].ok
    assert state.check_tx(tx, T) is None
    assert net.block(state, [net.tx("admin", TxKind.BAN, {4: net["gateway3"].id, 5: "test"})])[0].ok
    assert state.check_tx(tx, T) == Reason.BANNED_DEVICE
    assert net.block(state, [tx])[0].code == Reason.BANNED_DEVICE


def test_cached_signature_check_follows_key_rotation(net):
    state = net.genesis()
    old = anchor(net, 1)
    assert state.check_tx(old, T) is None
    assert net.block(state, [net.rotate("gateway", "gateway-new")])[0].ok
    assert state.check_tx(old, T) == Reason.BAD_SIGNATURE
    assert net.block(state, [old])[0].code == Reason.BAD_SIGNATURE
    new = net.tx("gateway-new", TxKind.ANCHOR, {4: 2, 5: bytes(32), 6: 1}, kid=net["gateway"].id)
    assert state.check_tx(new, T) is None


def test_cached_tx_replay_and_skew_still_checked(net):
    state = net.genesis()
    tx = anchor(net, 1)
    assert state.check_tx(tx, T) is None
    assert state.check_tx(tx, T + 10 ** 6) == Reason.CLOCK_SKEW
    results = net.block(state, [tx, tx])
    assert [r.code for r in results] == [Reason.OK, Reason.REPLAY]
    assert state.check_tx(tx, T) == Reason.REPLAY


def test_dry_run_reads_back_its_own_unencoded_writes(net):
    state = net.genesis()
    entries = [enc.warning_entry(bytes([i]) * 32, b"offender", T, 3) for i in (1, 2)]
    tx = net.tx("gateway", TxKind.WARNINGS, {4: entries})
    assert state.check_tx(tx, T) is None
    assert net.block(state, [tx])[0].ok
    assert state.get_record(RK.OFFENCES, b"offender")[1] == 2


def test_prove_and_roots_while_a_block_is_pending(net):
    state = net.genesis()
    fresh = net.genesis()
    root0 = state.state_root()
    txs = [anchor(net, i) for i in range(1, 6)]
    pending_root = state.execute(1, T, txs)
    assert pending_root != root0 and state.state_root() == root0
    key, value, proof = state.prove(RK.DEVICE, net["gateway"].id)
    smt.verify(root0, key, value, proof)
    key, value, proof = state.prove(RK.ANCHOR, [net["gateway"].id, 1])
    assert value is None
    smt.verify(root0, key, None, proof)
    state.rollback()
    assert state.state_root() == root0
    assert state.execute(1, T, txs) == pending_root
    assert state.execute(1, T, txs[:2]) != pending_root
    assert state.execute(1, T, txs) == pending_root
    assert state.commit(1) == pending_root
    assert fresh.execute(1, T, txs) == pending_root
    key, value, proof = state.prove(RK.ANCHOR, [net["gateway"].id, 1])
    smt.verify(pending_root, key, value, proof)


def _frame(kid, payload, sig):
    return cbor.dumps(cbor.Tag(18, [cose._PROTECTED_ES256, {4: kid}, payload, sig]))


edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5000), st.integers(0, 255)), max_size=3)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([0, 16, 16, 16, 17]), st.integers(0, 600), st.sampled_from([64, 64, 63]), edits)
def test_split_sign1_agrees_with_the_cose_decoder(kid_len, payload_len, sig_len, changes):
    aad = enc.tx_aad("ll-test")
    frame = bytearray(_frame(bytes(range(kid_len)), bytes(payload_len), b"\x01" * sig_len))
    for op, pos, value in changes:
        pos %= len(frame) + 1
        if op == 0 and pos < len(frame):
            frame[pos] = value
        elif op == 1 and pos < len(frame):
            del frame[pos]
        else:
            frame.insert(pos, value)
    frame = bytes(frame)
    parts = enc.split_sign1(frame)
    if not changes and kid_len == 16 and sig_len == 64:
        assert parts is not None
    if parts is None:
        return
    msg = cose.decode_sign1(frame)
    assert parts == (msg.kid, msg.payload, msg.signature)
    tbs = enc.tx_tbs_prefix("ll-test") + enc.bstr_head(len(parts[1])) + parts[1]
    assert tbs == msg.to_be_signed(aad)
