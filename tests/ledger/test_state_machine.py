"""Block execution: atomicity, execute/commit/rollback, determinism, state proofs, fuzzing."""

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor, smt
from ledgerlink.core.errors import InvalidProof
from ledgerlink.ledger.state import LedgerState, Reason, RecordKind as RK, Role, TxKind, state_key
from ledgerlink.ledger.state import encoding as enc
from tests.devnet import DevNet


def h(label):
    return hashlib.sha256(label.encode()).digest()


@pytest.fixture
def net():
    return DevNet()


def test_state_key_is_sha256_of_cbor_kind_and_id(net):
    dev = net["sensor"].id
    assert state_key(RK.DEVICE, dev) == hashlib.sha256(cbor.dumps([1, dev])).digest()
    assert state_key(RK.ANCHOR, (dev, 3)) == hashlib.sha256(cbor.dumps([3, [dev, 3]])).digest()
    assert state_key(RK.ANCHOR, [dev, 3]) != state_key(RK.ANCHOR, [dev, 4])
    assert state_key(RK.CERT, h("c")) != state_key(RK.FIRMWARE, h("c"))


def test_execute_leaves_committed_state_until_commit(net):
    state = net.genesis()
    root0 = state.state_root()
    tx = net.register("admin", "newdev", Role.SENSOR)
    new_root = state.execute(1, net.time_ms, [tx])
    assert new_root != root0
    assert state.state_root() == root0
    assert state.get_record(RK.DEVICE, net["newdev"].id) is None
    key, value, proof = state.prove(RK.DEVICE, net["newdev"].id)
    assert value is None
    smt.verify(root0, key, None, proof)
    assert state.results_of(1) == [(True, 0)]
    assert state.pending_height == 1
    assert state.commit(1) == new_root
    assert state.state_root() == new_root and state.height == 1 and state.pending_height is None
    assert state.get_record(RK.DEVICE, net["newdev"].id)[3] == Role.SENSOR


def test_rollback_and_reexecute(net):
    state = net.genesis()
    root0 = state.state_root()
    a = net.register("admin", "a", Role.SENSOR)
    b = net.register("admin", "b", Role.SENSOR)
    root_ab = state.execute(1, net.time_ms, [a, b])
    state.rollback()
    assert state.state_root() == root0 and state.pending_height is None
    with pytest.raises(KeyError):
        state.results_of(1)
    root_a = state.execute(1, net.time_ms, [a])
    assert root_a not in (root0, root_ab)
    # Executing the same height again replaces the pending block.
    assert state.execute(1, net.time_ms, [a, b]) == root_ab
    state.commit(1)
    assert state.state_root() == root_ab
    assert state.device_status(net["a"].id) and state.device_status(net["b"].id)


def test_check_tx_changes_nothing(net):
    state = net.genesis()
    root0 = state.state_root()
    tx = net.register("admin", "newdev", Role.SENSOR)
    assert state.check_tx(tx, net.time_ms) is None
    assert state.check_tx(tx, net.time_ms) is None
    assert state.state_root() == root0
    detail = state.check_tx_detail(net.register("sensor", "x", Role.SENSOR), net.time_ms)
    assert not detail.ok and detail.code == Reason.NOT_AUTHORIZED and "admin" in detail.text
    assert state.check_tx(b"\x00", net.time_ms) == Reason.MALFORMED


def test_refused_txs_change_nothing_and_mixed_block_applies_only_good_ones(net):
    state, reference = net.genesis(), net.genesis()
    good = [net.register("admin", "a", Role.SENSOR),
            net.tx("gateway", TxKind.ANCHOR, {4: 1, 5: h("r"), 6: 4}),
            net.tx("admin", TxKind.BAN, {4: net["actuator"].id, 5: "x"})]
    bad = [net.register("sensor", "b", Role.SENSOR),
           good[0],                                                       # replay
           net.tx("gateway", TxKind.ANCHOR, {4: 1, 5: h("s"), 6: 4}),     # duplicate batch
           net.tx("actuator", TxKind.ANCHOR, {4: 2, 5: h("s"), 6: 4}),    # banned by good[2] just before
           b"junk"]
    mixed = [bad[0], good[0], bad[1], good[1], bad[2], good[2], bad[3], bad[4]]
    results = net.block(state, mixed)
    assert [r.ok for r in results] == [False, True, False, True, False, True, False, False]
    assert [r.code for r in results if not r.ok] == [Reason.NOT_AUTHORIZED, Reason.REPLAY, Reason.ALREADY_EXISTS,
                                                     Reason.BANNED_DEVICE, Reason.MALFORMED]
    assert all(r.ok for r in net.block(reference, good))
    assert state.state_root() == reference.state_root()
    root = state.state_root()
    assert not any(r.ok for r in net.block(state, bad))
    assert state.state_root() == root


def test_a_refused_warnings_batch_writes_none_of_its_records(net):
    state = net.genesis()
    root = state.state_root()
    entries = [enc.warning_entry(h("f1"), b"x", 1, 5), enc.warning_entry(h("f2"), b"x", 1, 5),
               enc.warning_entry(h("f1"), b"x", 1, 5)]
    assert [r.code for r in net.block(state, [net.tx("gateway", TxKind.WARNINGS, {4: entries})])] == \
        [Reason.ALREADY_EXISTS]
    assert state.state_root() == root
    assert state.get_record(RK.OFFENCES, b"x") is None


def test_empty_block_keeps_the_root(net):
    state = net.genesis()
    root = state.state_root()
    assert state.execute(1, net.time_ms, []) == root
    state.commit(1)
    assert state.state_root() == root


def _script(net):
    return [
        [net.register("admin", "a", Role.SENSOR), net.register("admin", "g3", Role.GATEWAY), b"\x00"],
        [net.tx("g3", TxKind.ANCHOR, {4: 1, 5: h("r1"), 6: 9}), net.rotate("a", "a2")],
        [net.tx("admin2", TxKind.BAN, {4: net["a"].id, 5: "gone"}),
         enc.cert_record_tx(net.chain_id, net["gateway"].priv, h("c"), net["sensor"].id, b"ca", 1, 2, b"s",
                            net.time_ms, nonce=net.nonce(), backend=net.backend)],
    ]


def test_replicas_agree(net):
    blocks = _script(net)
    a, b = net.genesis(), net.genesis()
    assert a.state_root() == b.state_root()
    for height, txs in enumerate(blocks, 1):
        ra = a.execute(height, net.time_ms, txs)
        rb = b.execute(height, net.time_ms, txs)
        assert ra == rb
        a.commit(height)
        b.commit(height)
        assert a.results_of(height) == b.results_of(height)
    assert a.state_root() == b.state_root()
    # A replica built from another DevNet with the same seed makes the same transactions and root.
    net2 = DevNet()
    c = net2.genesis()
    for txs in _script(net2):
        net2.block(c, txs)
    assert c.state_root() == a.state_root()


def test_record_proofs_verify(net):
    state = net.genesis()
    net.block(state, [net.register("admin", "a", Role.SENSOR),
                      net.tx("gateway", TxKind.ANCHOR, {4: 5, 5: h("root"), 6: 2})])
    root = state.state_root()
    for kind, rid in [(RK.DEVICE, net["a"].id), (RK.DEVICE, net["admin"].id), (RK.CHAIN, 0),
                      (RK.ANCHOR, [net["gateway"].id, 5])]:
        key, value, proof = state.prove(kind, rid)
        assert key == state_key(kind, rid) and value == state.get_record_bytes(kind, rid)
        assert cbor.loads(value) == state.get_record(kind, rid)
        smt.verify(root, key, value, proof)
        with pytest.raises(InvalidProof):
            smt.verify(root, key, None, proof)
        with pytest.raises(InvalidProof):
            smt.verify(root, key, value + b"\x00", proof)
    for kind, rid in [(RK.DEVICE, net["nobody"].id), (RK.ANCHOR, [net["gateway"].id, 6]), (RK.CERT, h("x"))]:
        key, value, proof = state.prove(kind, rid)
        assert value is None
        smt.verify(root, key, None, proof)
        with pytest.raises(InvalidProof):
            smt.verify(root, key, b"\xa0", proof)
    # A proof against the old root no longer holds once the record changes.
    key, value, proof = state.prove(RK.DEVICE, net["a"].id)
    net.block(state, [net.tx("admin", TxKind.BAN, {4: net["a"].id, 5: "x"})])
    with pytest.raises(InvalidProof):
        smt.verify(state.state_root(), key, value, proof)
    key, new_value, new_proof = state.prove(RK.DEVICE, net["a"].id)
    smt.verify(state.state_root(), key, new_value, new_proof)


# -- property tests --------------------------------------------------------------------------------

NAMES = ["admin", "admin2", "gateway", "gateway2", "sensor", "maintenance", "controller", "actuator",
         "validator0", "outsider", "n1", "n2", "n3"]
HASHES = [h("h%d" % i) for i in range(3)]


def _cbor_values(net):
    ids = [net[n].id for n in NAMES]
    keys = [net[n].pub for n in NAMES[:4]]
    base = (st.none() | st.booleans() | st.integers(-(2 ** 64), 2 ** 64 - 1) | st.binary(max_size=40)
            | st.text(max_size=12) | st.sampled_from(ids + keys + HASHES + ["x", 1, 2, 3]))
    return st.recursive(base, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.integers(0, 6) | st.text(max_size=4), inner, max_size=3),
                        max_leaves=8)


@st.composite
def _ops(draw, net):
    """One transaction-producing step: a valid-looking tx, a fuzzed body, or a mangled frame."""
    choice = draw(st.integers(0, 9))
    signer = draw(st.sampled_from(NAMES))
    target = draw(st.sampled_from(NAMES))
    dt = draw(st.sampled_from([0, 0, 0, 1, -70_000, 70_000]))
    t = net.time_ms + dt
    if choice == 0:
        return ("tx", net.register(signer, target, draw(st.integers(1, 7)), time_ms=t))
    if choice == 1:
        return ("tx", net.tx(signer, draw(st.sampled_from([TxKind.BAN, TxKind.UNBAN])),
                             {4: net[target].id, 5: "r"}, time_ms=t))
    if choice == 2:
        return ("tx", net.tx(signer, TxKind.ANCHOR, {4: draw(st.integers(0, 2)), 5: draw(st.sampled_from(HASHES)),
                                                     6: draw(st.integers(0, 3))}, time_ms=t))
    if choice == 3:
        return ("tx", enc.cert_record_tx(net.chain_id, net[signer].priv, draw(st.sampled_from(HASHES)), net[target].id,
                                         b"ca", 1, draw(st.integers(0, 3)), b"s", t, nonce=net.nonce(),
                                         backend=net.backend))
    if choice == 4:
        return ("tx", net.rotate(signer, draw(st.sampled_from(NAMES)), time_ms=t))
    if choice == 5:
        kind = draw(st.integers(0, 11))
        fields = draw(st.dictionaries(st.integers(4, 9), _cbor_values(net), max_size=6))
        return ("tx", net.tx(signer, kind, fields, time_ms=t))
    if choice == 6:
        return ("tx", draw(st.binary(max_size=200)))
    if choice == 7:
        return ("flip", draw(st.integers(0, 10_000)), draw(st.integers(0, 7)))
    if choice == 8:
        return ("replay", draw(st.integers(0, 10_000)))
    return ("tx", net.tx(signer, draw(st.sampled_from([TxKind.FIRMWARE, TxKind.WARNINGS, TxKind.PROVENANCE,
                                                       TxKind.COMMUNICATION])),
                         draw(st.dictionaries(st.integers(4, 9), _cbor_values(net), max_size=6)), time_ms=t))


NET = DevNet(seed=b"ll-hypothesis")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.lists(_ops(NET), max_size=6), min_size=1, max_size=4))
def test_random_blocks_never_raise_and_replicas_agree(blocks):
    a, b, c = NET.genesis(), NET.genesis(), NET.genesis()
    history: list[bytes] = []
    for height, ops in enumerate(blocks, 1):
        txs = []
        for op in ops:
            if op[0] == "tx":
                tx = op[1]
            elif not history:
                continue
            elif op[0] == "flip":
                raw = bytearray(history[op[1] % len(history)]) or bytearray(1)
                raw[op[1] % len(raw)] ^= 1 << op[2]
                tx = bytes(raw)
            else:
                tx = history[op[1] % len(history)]
            txs.append(tx)
            history.append(tx)
        before = a.state_root()
        # Replica b first executes a different block, rolls it back, then runs the real one.
        b.execute(height, NET.time_ms, txs[::-1])
        b.rollback()
        ra, rb = a.execute(height, NET.time_ms, txs), b.execute(height, NET.time_ms, txs)
        assert ra == rb
        assert a.state_root() == before
        a.commit(height)
        b.commit(height)
        results = a.results_of(height)
        assert results == b.results_of(height)
        assert all(isinstance(r.code, int) and r.ok == (r.code == 0) for r in results)
        # Replica c gets only the accepted transactions: it accepts all of them and reaches the same root.
        good = [tx for tx, r in zip(txs, results) if r.ok]
        assert c.execute(height, NET.time_ms, good) == ra
        c.commit(height)
        assert all(r.ok for r in c.results_of(height))
        if not good:
            assert ra == before


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_check_tx_on_arbitrary_bytes(data):
    state = _STATE
    code = state.check_tx(data, NET.time_ms)
    assert code in (Reason.MALFORMED, Reason.UNKNOWN_DEVICE, Reason.OVERSIZED)


_STATE = NET.genesis()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(NAMES[:9]), st.integers(1, 10), st.dictionaries(st.integers(4, 9), _cbor_values(NET),
                                                                       max_size=6))
def test_fuzzed_bodies_give_a_reason_code(signer, kind, fields):
    tx = NET.tx(signer, kind, fields)
    result = _STATE.check_tx_detail(tx, NET.time_ms)
    assert result.ok == (result.code == 0)
    assert result.code in set(Reason)
    assert isinstance(result.text, str) and result.text


def test_genesis_config_keys(net):
    cfg = net.config()
    cfg["max_skew_ms"] = 10
    cfg["max_tx_bytes"] = 300
    state = LedgerState.genesis(cfg)
    assert state.max_skew_ms == 10 and state.max_tx_bytes == 300
    assert state.check_tx(net.register("admin", "a", Role.SENSOR, time_ms=net.time_ms + 11), net.time_ms) == \
        Reason.CLOCK_SKEW
    big = net.tx("admin", TxKind.BAN, {4: net["sensor"].id, 5: "x" * 250})
    assert len(big) > 300 and state.check_tx(big, net.time_ms) == Reason.OVERSIZED


def test_precheck_skips_only_the_contract(net):
    state = net.genesis()
    root0 = state.state_root()
    not_admin = net.register("sensor", "x", Role.SENSOR)
    # the contract refuses it (only admins register), the precheck of a forwarded tx does not
    assert state.check_tx(not_admin, net.time_ms) == Reason.NOT_AUTHORIZED
    assert state.precheck_tx(not_admin, net.time_ms) is None
    # everything before the contract is still checked
    assert state.precheck_tx(b"\x00", net.time_ms) == Reason.MALFORMED
    good = net.register("admin", "y", Role.SENSOR)
    assert state.precheck_tx(good, net.time_ms + 10**9) == Reason.CLOCK_SKEW
    forged = bytearray(net.register("admin", "z", Role.SENSOR))
    forged[-1] ^= 1
    assert state.precheck_tx(bytes(forged), net.time_ms) == Reason.BAD_SIGNATURE
    unknown = net.tx("stranger", TxKind.ANCHOR, {4: 1, 5: bytes(32), 6: 1})
    assert state.precheck_tx(unknown, net.time_ms) == Reason.UNKNOWN_DEVICE
    assert state.state_root() == root0
    # a prechecked tx that fails its contract is recorded as failed when its block runs
    state.execute(1, net.time_ms, [not_admin, good])
    assert state.results_of(1) == [(False, Reason.NOT_AUTHORIZED), (True, 0)]
