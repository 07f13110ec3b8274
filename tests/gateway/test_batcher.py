"""Batcher and store: anchors, receipts checked like a device does, restart, ledger outage, warnings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor, cose, ecqv
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidProof
from ledgerlink.core import merkle
from ledgerlink.gateway.batcher import Batcher, inclusion_proofs, verify_receipt
from ledgerlink.gateway.store import Store
from ledgerlink.ledger.state.codes import RecordKind
from tests.devnet import DevNet

from tests.gateway.fake_ledger import FakeLedgerAdapter

CRYPTO = get_backend("cpython")
NOW = DevNet().time_ms + 1000
SITE = "plant-1"


def frames(net: DevNet, n: int, start: int = 1) -> list[tuple[bytes, int]]:
    dev = net["sensor"].id
    topic = "ll/%s/dev/%s/up" % (SITE, dev.hex())
    return [(cose.sign1(cbor.dumps({1: dev, 2: s, 3: NOW, 4: {"i": s}}), net["sensor"].priv, dev,
                        topic.encode(), CRYPTO), s) for s in range(start, start + n)]


def setup(tmp_path, name: str = "gw.db", ledger: FakeLedgerAdapter | None = None, **kw):
    ledger = ledger or FakeLedgerAdapter(clock=lambda: NOW)
    store = Store(tmp_path / name)
    b = Batcher(store, ledger, SITE, ledger.chain_id, ledger.keys, ledger.net["gateway"].priv, **kw)
    return ledger, store, b


def append(store: Store, net: DevNet, items: list[tuple[bytes, int]], now: int = NOW) -> None:
    dev = net["sensor"].id
    for frame, seq in items:
        store.append_accepted(frame, dev, seq, NOW, "ll/%s/dev/%s/up" % (SITE, dev.hex()), now)


def test_batch_anchored_and_receipts_verify(tmp_path):
    ledger, store, b = setup(tmp_path)
    items = frames(ledger.net, 5)
    append(store, ledger.net, items)
    assert b.step(NOW + 10) == []                             # younger than the interval: no batch yet
    out = b.step(NOW + 200)
    receipts = [o for o in out if o.topic.endswith("/down")]
    assert len(receipts) == 5 and out[-1].retain and out[-1].topic == "ll/plant-1/ledger/header"
    for (frame, seq), o in zip(items, receipts):
        r = cbor.loads(o.payload)
        assert r[2] == seq and r[4] == 5
        header = verify_receipt(o.payload, frame, ledger.chain_id, ledger.keys)
        assert header.height == ledger.height
    with pytest.raises(InvalidProof):
        verify_receipt(receipts[0].payload, items[1][0], ledger.chain_id, ledger.keys)
    renumbered = cbor.loads(receipts[0].payload)
    renumbered[2] = 4
    with pytest.raises(InvalidProof, match="seq"):
        verify_receipt(cbor.dumps(renumbered), items[0][0], ledger.chain_id, ledger.keys)
    batch = store.batches("anchored")[0]
    rec = ledger.state.get_record(RecordKind.ANCHOR, [ledger.net["gateway"].id, batch.id])
    assert rec[3] == batch.root and rec[4] == 5
    assert store.unbatched(10) == [] and b.step(NOW + 400) == []


def test_batches_split_at_max_batch(tmp_path):
    ledger, store, b = setup(tmp_path, max_batch=4)
    append(store, ledger.net, frames(ledger.net, 10))
    out = b.step(NOW + 1, force=True)
    sizes = sorted(len(s.id) and s.count for s in store.batches("anchored"))
    assert sizes == [2, 4, 4] and len([o for o in out if o.topic.endswith("/down")]) == 10


def test_unanchored_messages_are_anchored_after_a_restart(tmp_path):
    ledger, store, b = setup(tmp_path)
    items = frames(ledger.net, 3)
    append(store, ledger.net, items)
    ledger.available = False
    assert b.step(NOW + 200) == []                            # batch cut, anchor not possible
    assert store.stats()["batches"] == {"pending": 1}
    store.close()
    append_more = Store(tmp_path / "gw.db")
    append(append_more, ledger.net, frames(ledger.net, 2, start=4))
    append_more.close()
    ledger.available = True
    _, store2, b2 = setup(tmp_path, ledger=ledger)
    assert store2.highest_seqs() == {ledger.net["sensor"].id: 5}
    out = b2.step(NOW + 400)
    receipts = [o for o in out if o.topic.endswith("/down")]
    assert len(receipts) == 5
    assert len(ledger.submitted) == 2                         # the stored anchor once, the new batch once
    for (frame, _), o in zip(items + frames(ledger.net, 2, start=4), receipts):
        verify_receipt(o.payload, frame, ledger.chain_id, ledger.keys)


def test_anchor_rebuilt_after_clock_skew(tmp_path):
    ledger, store, b = setup(tmp_path)
    append(store, ledger.net, frames(ledger.net, 2))
    late = NOW + 120_000
    ledger.clock = lambda: late
    assert b.step(NOW + 200) == []                            # refused: 2 minutes off the block time
    out = b.step(late)
    assert len([o for o in out if o.topic.endswith("/down")]) == 2


def test_receipts_need_a_certified_anchor(tmp_path):
    ledger, store, b = setup(tmp_path)
    ledger.votes = 2                                          # the ledger serves under-signed headers
    append(store, ledger.net, frames(ledger.net, 2))
    assert b.step(NOW + 200) == []
    assert store.stats()["batches"] == {"pending": 1}


def test_warnings_posted_in_batches_of_at_most_32(tmp_path):
    ledger, store, b = setup(tmp_path)
    gw = ledger.net["gateway"].id
    ids = [bytes([i]) * 32 for i in range(40)]
    for i in ids:
        assert store.add_warning({1: i, 2: b"\x01" * 16, 3: NOW, 4: 5, 5: "x" * 200}, NOW)
    assert not store.add_warning({1: ids[0], 2: b"", 3: NOW, 4: 5}, NOW)     # once per gateway
    b.step(NOW + 1)
    b.step(NOW + 2)
    b.step(NOW + 3)
    assert store.stats()["warnings"] == {"batched": 40}
    assert all(ledger.state.get_record(RecordKind.WARNING, [gw, i]) is not None for i in ids)


def test_session_certificates_recorded(tmp_path):
    ledger, store, b = setup(tmp_path)
    dev = ledger.net["sensor"].id
    cert, _ = ecqv.issue(ecqv.create_request()[1], ledger.net["gw-ca"].priv, b"s1", ledger.net["gateway"].id, dev,
                         NOW // 1000, NOW // 1000 + 3600)
    store.add_cert(dev, cert, NOW)
    b.step(NOW + 1)
    assert store.certificates("recorded") == [(dev, cert)]
    assert ledger.state.get_record(RecordKind.CERT, CRYPTO.sha256(cert))[1] == dev


def test_one_step_submits_anchor_warnings_and_certs_together(tmp_path):
    ledger, store, b = setup(tmp_path)
    net = ledger.net
    gw, dev = net["gateway"].id, net["sensor"].id
    append(store, net, frames(net, 3))
    store.add_warning({1: b"w" * 32, 2: dev, 3: NOW, 4: 5, 5: "x"}, NOW)
    certs = [ecqv.issue(ecqv.create_request()[1], net["gw-ca"].priv, bytes([i]) * 8, gw, dev, NOW // 1000,
                        NOW // 1000 + 3600)[0] for i in range(3)]
    for cert in certs:
        store.add_cert(dev, cert, NOW)
    out = b.step(NOW + 200)
    assert ledger.many == [1 + 1 + 3]
    assert len([o for o in out if o.topic.endswith("/down")]) == 3
    assert store.stats()["warnings"] == {"batched": 1} and store.warning_txs("committed")
    assert sorted(c for _, c in store.certificates("recorded")) == sorted(certs)
    assert ledger.state.get_record(RecordKind.WARNING, [gw, b"w" * 32]) is not None


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 40), st.integers(1, 9))
def test_every_receipt_verifies_for_any_batch_shape(tmp_path_factory, n: int, max_batch: int):
    tmp = tmp_path_factory.mktemp("b")
    ledger, store, b = setup(tmp, max_batch=max_batch)
    items = frames(ledger.net, n)
    append(store, ledger.net, items)
    out = [o for o in b.step(NOW + 1, force=True) if o.topic.endswith("/down")]
    assert len(out) == n
    by_hash = {CRYPTO.sha256(f): f for f, _ in items}
    for o in out:
        receipt = cbor.loads(o.payload)
        assert cbor.dumps(receipt) == o.payload and o.frame_hash == receipt[1] and sorted(receipt) == list(range(8))
        verify_receipt(o.payload, by_hash[receipt[1]], ledger.chain_id, ledger.keys)
    store.close()


def test_gateway_receipts_verify_in_the_device_sdk(tmp_path):
    from ledgerlink.device.core import DeviceCore, MemoryCounter, SequenceCounter

    ledger, store, b = setup(tmp_path)
    items = frames(ledger.net, 3)
    append(store, ledger.net, items)
    receipts = [o for o in b.step(NOW + 200) if o.topic.endswith("/down")]
    device = DeviceCore(ledger.net["sensor"].priv, SITE, SequenceCounter(MemoryCounter()), ledger.chain_id,
                        ledger.keys, backend="cpython")
    for (frame, _), o in zip(items, receipts):
        result = device.verify_receipt(cbor.loads(o.payload), frame)
        assert result.valid, result.reason
    forged = cbor.loads(receipts[0].payload)
    forged[3] = 1
    assert not device.verify_receipt(forged, items[0][0]).valid


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=140))
def test_inclusion_proofs_of_all_entries_match_the_tree(entries: list[bytes]):
    tree = merkle.MerkleTree(entries)
    root, proofs = inclusion_proofs(entries)
    assert root == tree.root() == merkle.root_of(entries) and len(proofs) == len(entries)
    for i, p in enumerate(proofs):
        assert p == list(tree.inclusion_proof(i))
        merkle.verify_inclusion(merkle.leaf_hash(entries[i]), i, len(entries), p, root)


def test_idle_steps_ask_the_store_only_whether_frames_wait(tmp_path):
    """After a step that found nothing to post, steps ask the store again for warnings, certificates and
    receipts not yet sent only when this process wrote a warning or certificate (or after a restart)."""
    ledger, store, b = setup(tmp_path)
    net = ledger.net
    append(store, net, frames(net, 2))
    assert len([o for o in b.step(NOW + 200) if o.topic.endswith("/down")]) == 2
    b.step(NOW + 300)
    asked = []
    query = store._query
    store._query = lambda sql, args=(): asked.append(sql.split(" FROM ")[1].split()[0]) or query(sql, args)
    b.step(NOW + 400)
    assert sorted(set(asked)) == ["batches", "messages"], asked
    store.add_warning({1: b"w" * 32, 2: net["sensor"].id, 3: NOW, 4: 5, 5: "x"}, NOW)
    b.step(NOW + 500)
    assert store.stats()["warnings"] == {"batched": 1}
    dev = net["sensor"].id
    cert, _ = ecqv.issue(ecqv.create_request()[1], net["gw-ca"].priv, b"s1", net["gateway"].id, dev, NOW // 1000,
                         NOW // 1000 + 3600)
    store.add_cert(dev, cert, NOW)
    b.step(NOW + 600)
    assert store.certificates("recorded") == [(dev, cert)]
    append(store, net, frames(net, 1, start=3))
    assert len([o for o in b.step(NOW + 900) if o.topic.endswith("/down")]) == 1


def test_receipts_reuse_the_tree_of_the_cut(tmp_path, monkeypatch):
    """The receipts of a batch this batcher cut take no hash of its tree again (the levels made for its
    root at the cut are used), and equal those made from the stored leaves alone (after a restart)."""
    import hashlib

    from ledgerlink.gateway import batcher as batcher_module

    ledger, store, b = setup(tmp_path)
    items = frames(ledger.net, 64)
    append(store, ledger.net, items)
    made = b.cut(NOW + 1, force=True)
    assert made is not None
    taken = []
    real_sha256 = hashlib.sha256

    def counted(data: bytes = b"", *args):
        taken.append(bytes(data[:1]))
        return real_sha256(data, *args)

    monkeypatch.setattr(hashlib, "sha256", counted)
    out = [o for o in b.step(NOW + 2) if o.topic.endswith("/down")]
    monkeypatch.setattr(hashlib, "sha256", real_sha256)
    assert len(out) == 64
    assert taken.count(b"\x00") + taken.count(b"\x01") < 40        # the tree alone: 64 leaves and 63 nodes
    fresh = batcher_module.batch_receipts(store, SITE, made.id)
    assert [(o.topic, o.payload, o.frame_hash) for o in fresh] == [(o.topic, o.payload, o.frame_hash) for o in out]
    for (frame, _), o in zip(items, out):
        verify_receipt(o.payload, frame, ledger.chain_id, ledger.keys)
