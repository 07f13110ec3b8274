"""End-to-end delivery at the gateway: signed stored-acks per commit group, duplicates of stored frames
answered with their ack and receipt, receipts on demand, receipts re-sent after a restart, and replay
windows restored exactly from what the store holds."""

from __future__ import annotations

import pytest

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.core.backend import get_backend
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.batcher import Batcher, verify_receipt
from tests.devnet import DevNet

from tests.gateway.fake_ledger import FakeLedgerAdapter
from tests.gateway.test_checks import NOW, SITE, reading, up
from tests.gateway.test_service import make, run

CRYPTO = get_backend("cpython")


def ask_topic(dev: bytes) -> str:
    return "ll/%s/dev/%s/ask" % (SITE, dev.hex())


def replies(h, kind: int) -> list[dict]:
    return [m for m in (cbor.loads(o.payload) for o in h.outgoing if o.topic.endswith("/down")) if m.get(0) == kind]


def gateway_keys(ledger: FakeLedgerAdapter) -> dict:
    gw = ledger.net["gateway"]
    return {gw.id: CRYPTO.public_key(gw.priv, True)}


def test_restart_restores_exactly_the_stored_seqs(tmp_path):
    """A seq that was never stored (it waited at a stopped gateway) is fresh after the restart."""
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    dev = net["sensor"].id
    svc = make(ledger, tmp_path / "gw.db")
    for seq in (5, 7, 9):
        assert len(run(svc, ledger, up(dev), reading(net, "sensor", seq)).decided) == 1
    svc.store.close()
    svc2 = make(ledger, tmp_path / "gw.db")
    for n, seq in enumerate((6, 8, 4)):
        h = run(svc2, ledger, up(dev), reading(net, "sensor", seq))
        assert replies(h, c.KIND_REFUSAL) == [] and svc2.store.stats()["messages"] == 4 + n, seq
    h = run(svc2, ledger, up(dev), reading(net, "sensor", 7, meas={"other": 1}))    # another frame, taken seq
    assert [r[2] for r in replies(h, c.KIND_REFUSAL)] == [c.REPLAY]


def test_each_stored_frame_gets_an_ack_signed_once_per_group(tmp_path):
    from ledgerlink.protocol import stored_ack

    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    dev = net["sensor"].id
    svc = make(ledger, tmp_path / "gw.db")
    run(svc, ledger, up(dev), reading(net, "sensor", 1))
    group = [reading(net, "sensor", s) for s in (2, 3, 4)] + [reading(net, "sensor", 5, key="actuator")]
    signs = []
    sign = svc.core.crypto.sign
    svc.core.crypto.sign = lambda *a: signs.append(1) or sign(*a)
    h = svc.handle_many([("frame", up(dev), f) for f in group], NOW)
    acks = replies(h, stored_ack.KIND_STORED)
    assert len(signs) == 1 and [a[2] for a in acks] == [2, 3, 4]
    assert {o.qos for o in h.outgoing if o.topic.endswith("/down") and cbor.loads(o.payload)[0] == stored_ack.KIND_STORED} == {0}
    keys = gateway_keys(ledger)
    for frame, ack in zip(group, acks):
        checked = stored_ack.check(ack, dev, SITE, keys, CRYPTO)
        assert checked.frame_hash == CRYPTO.sha256(frame) and checked.gateway_id == net["gateway"].id
    forged = dict(acks[0])
    forged[2] = 9                                                   # another seq than the signed entry
    wrong_key = {net["gateway"].id: CRYPTO.public_key(net["actuator"].priv, True)}
    for bad, dev_id, keys_used in ((forged, dev, keys), (acks[0], dev, wrong_key), (acks[0], net["actuator"].id, keys),
                                   (acks[0], dev, {})):
        with pytest.raises(LedgerlinkError):
            stored_ack.check(bad, dev_id, SITE, keys_used, CRYPTO)
    with pytest.raises(LedgerlinkError):
        stored_ack.check(acks[0], dev, "other-site", keys, CRYPTO)     # a statement signed for another site


def test_one_signature_covers_a_groups_acks_and_its_republished_readings(tmp_path):
    """The stored-acks and the verified readings of a group carry one commit statement; each republished
    reading verifies under it, an ack's entry cannot pass for a reading, and a changed reading fails."""
    from ledgerlink.gateway import republish
    from ledgerlink.protocol import stored_ack

    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    dev = net["sensor"].id
    svc = make(ledger, tmp_path / "gw.db")
    run(svc, ledger, up(dev), reading(net, "sensor", 1))
    group = [reading(net, "sensor", s, meas={"t": s}) for s in (2, 3, 4)]
    signs = []
    sign = svc.core.crypto.sign
    svc.core.crypto.sign = lambda *a: signs.append(1) or sign(*a)
    h = svc.handle_many([("frame", up(dev), f) for f in group] + [("frame", up(dev), group[0])], NOW)
    assert len(signs) == 1
    verified = [o.payload for o in h.outgoing if "/verified/" in o.topic]
    acks = replies(h, stored_ack.KIND_STORED)
    assert len(verified) == 3 and [a[2] for a in acks] == [2, 3, 4, 2]     # the copy: its ack, no reading
    keys = gateway_keys(ledger)
    statements = {cbor.loads(v)[7][2] for v in verified} | {a[5] for a in acks}
    assert len(statements) == 1
    for frame, payload, ack in zip(group, verified, acks):
        got = republish.verify(payload, SITE, keys)
        assert got[5] == CRYPTO.sha256(frame) and got[2] == ack[2] and got[4] == {"t": got[2]}
        assert stored_ack.check(ack, dev, SITE, keys, CRYPTO).frame_hash == got[5]
    for bad in ({k: v for k, v in acks[0].items() if k != 6}, {**acks[0], 6: bytes(32)}):
        with pytest.raises(LedgerlinkError):                        # the reading's hash left out or changed
            stored_ack.check(bad, dev, SITE, keys, CRYPTO)
    one = cbor.loads(verified[0])
    one[4] = {"t": 99}                                              # another value under the same proof
    with pytest.raises(republish.Unverified):
        republish.verify(cbor.dumps(one), SITE, keys)
    copy_ack = acks[3]                                              # an entry without a reading: no reading passes
    forged = {1: dev, 2: 2, 3: NOW, 4: {"t": 2}, 5: copy_ack[1], 6: net["gateway"].id.hex(),
              7: [copy_ack[3], copy_ack[4], copy_ack[5]]}
    with pytest.raises(republish.Unverified):
        republish.verify(cbor.dumps(forged), SITE, keys)


def test_duplicate_of_a_stored_frame_is_answered_with_its_ack_and_receipt(tmp_path):
    from ledgerlink.protocol import stored_ack

    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    dev = net["sensor"].id
    svc = make(ledger, tmp_path / "gw.db")
    frame = reading(net, "sensor", 3)
    run(svc, ledger, up(dev), frame)
    h = run(svc, ledger, up(dev), frame)                          # stored, not yet anchored: the ack alone
    assert replies(h, c.KIND_REFUSAL) == [] and [a[2] for a in replies(h, stored_ack.KIND_STORED)] == [3]
    assert svc.store.stats()["warnings"] == {}
    b = Batcher(svc.store, ledger, SITE, ledger.chain_id, ledger.keys, net["gateway"].priv)
    b.step(NOW + 1000, force=True)
    h = run(svc, ledger, up(dev), frame)                          # anchored: the ack and the receipt
    receipts = replies(h, c.KIND_RECEIPT)
    assert len(replies(h, stored_ack.KIND_STORED)) == 1 and len(receipts) == 1
    verify_receipt(receipts[0], frame, ledger.chain_id, ledger.keys)


def test_receipts_on_demand_by_seq_and_hash_also_after_a_restart(tmp_path):
    from ledgerlink.protocol import stored_ack

    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    dev = net["sensor"].id
    svc = make(ledger, tmp_path / "gw.db")
    frames = [reading(net, "sensor", s) for s in (1, 2, 3)]
    for f in frames:
        run(svc, ledger, up(dev), f)
    b = Batcher(svc.store, ledger, SITE, ledger.chain_id, ledger.keys, net["gateway"].priv)
    b.step(NOW + 1000, force=True)
    run(svc, ledger, up(dev), reading(net, "sensor", 4))            # stored, not anchored
    svc.store.close()
    svc = make(ledger, tmp_path / "gw.db")
    ask = cbor.dumps({1: [1, CRYPTO.sha256(frames[2]), 4, 77, bytes(32)]})
    h = svc.handle_many([("frame", ask_topic(dev), ask)], NOW)
    receipts = replies(h, c.KIND_RECEIPT)
    assert sorted(r[2] for r in receipts) == [1, 3]
    for r in receipts:
        verify_receipt(r, frames[r[2] - 1], ledger.chain_id, ledger.keys)
    assert sorted(a[2] for a in replies(h, stored_ack.KIND_STORED)) == [1, 3, 4]
    assert sorted(m[1] for m in replies(h, stored_ack.KIND_NOT_STORED) if isinstance(m[1], int)) == [77]
    assert [m[1] for m in replies(h, stored_ack.KIND_NOT_STORED) if isinstance(m[1], bytes)] == [bytes(32)]
    # another device's frames are not answered to this one
    other = net["actuator"].id
    h = svc.handle_many([("frame", ask_topic(other), cbor.dumps({1: [1, CRYPTO.sha256(frames[0])]}))], NOW)
    assert replies(h, c.KIND_RECEIPT) == [] and len(replies(h, stored_ack.KIND_NOT_STORED)) == 2
    refused = svc.handle_many([("frame", ask_topic(dev), b"\xff")], NOW)
    assert [r[2] for r in replies(refused, c.KIND_REFUSAL)] == [c.MALFORMED]


def test_receipts_not_published_before_a_crash_are_sent_after_the_restart(tmp_path):
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    dev = net["sensor"].id
    svc = make(ledger, tmp_path / "gw.db")
    frames = [reading(net, "sensor", s) for s in (1, 2, 3)]
    for f in frames:
        run(svc, ledger, up(dev), f)
    b = Batcher(svc.store, ledger, SITE, ledger.chain_id, ledger.keys, net["gateway"].priv)
    assert len([o for o in b.step(NOW + 1000, force=True) if o.topic.endswith("/down")]) == 3   # never published
    svc.store.close()
    svc = make(ledger, tmp_path / "gw.db")
    b = Batcher(svc.store, ledger, SITE, ledger.chain_id, ledger.keys, net["gateway"].priv)
    again = [o for o in b.step(NOW + 2000) if o.topic.endswith("/down")]
    assert sorted(cbor.loads(o.payload)[2] for o in again) == [1, 2, 3]
    assert [o for o in b.step(NOW + 3000) if o.topic.endswith("/down")] == []     # once published, not again


def test_the_site_acl_lets_a_device_ask_and_the_gateways_receive_asks():
    from ledgerlink.tools.broker_access import RECEIVE, SEND, SUBSCRIBE, rules

    dev = "ab" * 16
    assert (SEND, "ll/%s/dev/%s/ask" % (SITE, dev)) in rules(SITE, "ll-" + dev, "device", dev)
    gw = rules(SITE, "ll-gw-%s-1" % SITE, "gateway")
    assert (SUBSCRIBE, "$share/ll-gw-%s/ll/%s/dev/+/ask" % (SITE, SITE)) in gw
    assert (RECEIVE, "ll/%s/dev/+/ask" % SITE) in gw
