"""Session chain statements at the gateway: checked against the stored session frames, stored and anchored
like readings, refused (chain-mismatch) when they do not match; receipts say which statement covers a
session reading, so a session frame the gateway sealed itself shows as not covered."""

from __future__ import annotations

from ledgerlink.core import cbor, cose
from ledgerlink.protocol import device_protocol as dp, session_chain as sc
from ledgerlink.core.backend import get_backend
from ledgerlink.device.core import MemoryCounter, SequenceCounter
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.batcher import Batcher
from tests.devnet import DevNet

from tests.gateway.fake_ledger import FakeLedgerAdapter
from tests.gateway.test_checks import NOW, SITE
from tests.gateway.test_delivery import ask_topic, replies
from tests.gateway.test_service import make, run

CRYPTO = get_backend("cpython")


def setup(tmp_path):
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    svc = make(ledger, tmp_path / "gw.db")
    svc.core.limits.burst = 2 * sc.EVERY_FRAMES                     # a statement's frames sent at once
    dev = dp.DeviceProtocol(net["sensor"].priv, SITE, SequenceCounter(MemoryCounter()), net.chain_id, ledger.keys,
                            svc.core.ca_public, backend=CRYPTO)
    req = dev.session_request(NOW)
    [reply] = [o for o in run(svc, ledger, req.topic, req.payload).outgoing if o.topic == dev.down_topic]
    assert isinstance(dev.handle_down(reply.payload, NOW), dp.SessionOpened)
    return ledger, svc, dev


def send(svc, frames) -> list:
    h = svc.handle_many([("frame", o.topic, o.payload) for o in frames], NOW)
    return replies(h, c.KIND_REFUSAL)


def forged_reading(svc, dev, seq: int) -> bytes:
    """What a gateway can do with the session key it holds: seal a reading the device never sent."""
    s = svc.core.sessions[dev.session.keys.session_id]
    body = cbor.dumps({1: dev.device_id, 2: seq, 3: NOW, 4: {"t": -40}})
    return cose.encrypt0(body, s.key, dp.partial_iv(seq), s.base_iv, None, s.session_id, dev.up_topic.encode(), CRYPTO)


def signed_statement(dev, seq: int, sid: bytes, first: int, last: int, head: bytes) -> bytes:
    body = cbor.dumps({1: dev.device_id, 2: seq, 3: NOW, 4: {sc.STATEMENT_KEY: [sid, first, last, head]}})
    return cose.sign1(body, dev._priv, dev.device_id, dev.up_topic.encode(), CRYPTO)


def receipts_by_seq(svc, ledger, dev, seqs) -> dict:
    out = {}
    for i in range(0, len(seqs), 16):
        h = svc.handle_many([("frame", ask_topic(dev.device_id), cbor.dumps({1: seqs[i:i + 16]}))], NOW)
        for r in replies(h, c.KIND_RECEIPT):
            out[r[2]] = r
    return out


def test_device_readings_are_covered_and_a_gateway_forged_one_is_not(tmp_path):
    ledger, svc, dev = setup(tmp_path)
    outs = [dev.reading({"i": i}, NOW, dp.MODE_SESSION) for i in range(sc.EVERY_FRAMES)]
    assert send(svc, outs[:10]) == []
    statement = dev.chain_statement(NOW)
    assert statement is not None
    assert send(svc, outs[10:] + [statement]) == []              # the last frames arrive in the same group
    forged = forged_reading(svc, dev, statement.seq + 1)
    assert len(svc.handle_frame(dev.up_topic, forged, NOW).decided) == 1     # the gateway's own checks pass it
    Batcher(svc.store, ledger, SITE, ledger.chain_id, ledger.keys, ledger.net["gateway"].priv).step(NOW + 1000,
                                                                                                    force=True)
    got = receipts_by_seq(svc, ledger, dev, [o.seq for o in outs] + [statement.seq, statement.seq + 1])
    for o in outs:
        assert got[o.seq][8] == statement.frame_hash
        assert dev.verify_receipt(got[o.seq], o.payload).covered_by == statement.frame_hash
    assert 8 not in got[statement.seq + 1]                         # the forged reading: not covered
    checked = dev.verify_receipt(got[statement.seq + 1], forged)
    assert checked.valid and checked.covered_by is None
    # a verifier with the device's public key and the stored frames tells them apart too
    stmt = sc.verify(svc.store.blob(statement.frame_hash), dev.public_key, dev.up_topic, CRYPTO)
    stored = [(s, svc.store.blob(svc.store.message_by_seq(dev.device_id, s).frame_hash))
              for s in range(1, statement.seq + 2)]
    covered = sc.covered(stmt, stored)
    assert covered == [o.frame_hash for o in outs] and CRYPTO.sha256(forged) not in covered
    assert svc.chains.verified == 1 and svc.chains.refused == 0


def test_a_statement_that_does_not_match_the_stored_frames_is_refused(tmp_path):
    ledger, svc, dev = setup(tmp_path)
    outs = [dev.reading({"i": i}, NOW, dp.MODE_SESSION) for i in range(4)]
    assert send(svc, outs[:2] + outs[3:]) == []                     # frame 3 never reached the gateway
    statement = dev.chain_statement(NOW, close=True)
    [refusal] = send(svc, [statement])
    assert refusal[2] == c.CHAIN_MISMATCH and refusal[1] == statement.frame_hash
    assert svc.store.message_by_hash(statement.frame_hash) is None and svc.chains.refused == 1
    assert svc.store.stats()["warnings"] == {"queued": 1}
    # the missing frame arrives; a statement over the same frames in another order, signed by the device
    # key, is refused too, and the right one is taken
    assert send(svc, [outs[2]]) == []
    sid = dev.session.keys.session_id
    hashes = [o.frame_hash for o in outs]
    swapped = signed_statement(dev, 90, sid, 1, 4, sc.head_of(sid, [hashes[1], hashes[0]] + hashes[2:]))
    [refusal] = replies(svc.handle_frame(dev.up_topic, swapped, NOW), c.KIND_REFUSAL)
    assert refusal[2] == c.CHAIN_MISMATCH
    good = signed_statement(dev, 91, sid, 1, 4, sc.head_of(sid, hashes))
    assert replies(svc.handle_frame(dev.up_topic, good, NOW), c.KIND_REFUSAL) == []
    assert svc.chains.refused == 2 and svc.chains.verified == 1


def test_a_forged_frame_in_a_stated_range_breaks_the_statement(tmp_path):
    """The gateway stores a reading of its own at a seq the device skipped inside the range: the device's
    statement no longer matches, so the gateway cannot get its reading covered."""
    ledger, svc, dev = setup(tmp_path)
    a = dev.reading({"i": 0}, NOW, dp.MODE_SESSION)
    dev.counter.advance(a.seq + 1)                                  # the device skips a seq
    b = dev.reading({"i": 1}, NOW, dp.MODE_SESSION)
    assert send(svc, [a, b]) == []
    assert svc.handle_frame(dev.up_topic, forged_reading(svc, dev, a.seq + 1), NOW).decided
    [refusal] = send(svc, [dev.chain_statement(NOW, close=True)])
    assert refusal[2] == c.CHAIN_MISMATCH


def test_chain_statements_must_be_signed_and_well_formed(tmp_path):
    ledger, svc, dev = setup(tmp_path)
    out = dev.reading({"i": 0}, NOW, dp.MODE_SESSION)
    send(svc, [out])
    sid = dev.session.keys.session_id
    meas = {sc.STATEMENT_KEY: [sid, out.seq, out.seq, sc.head_of(sid, [out.frame_hash])]}
    sealed = dev.reading(meas, NOW, dp.MODE_SESSION)                 # a statement under the session key
    [refusal] = send(svc, [sealed])
    assert refusal[2] == c.MALFORMED
    for body in ([sid, 5, 4, bytes(32)], [sid, 1, 1], "x"):
        frame = cose.sign1(cbor.dumps({1: dev.device_id, 2: 50, 3: NOW, 4: {sc.STATEMENT_KEY: body}}), dev._priv,
                           dev.device_id, dev.up_topic.encode(), CRYPTO)
        [refusal] = replies(svc.handle_frame(dev.up_topic, frame, NOW), c.KIND_REFUSAL)
        assert refusal[2] == c.MALFORMED
    other = cose.sign1(cbor.dumps({1: dev.device_id, 2: 60, 3: NOW, 4: meas}), svc.core.keys.identity, dev.device_id,
                       dev.up_topic.encode(), CRYPTO)                # signed by the gateway, not the device
    [refusal] = replies(svc.handle_frame(dev.up_topic, other, NOW), c.KIND_REFUSAL)
    assert refusal[2] == c.BAD_SIGNATURE


def test_statements_are_checked_against_the_store_after_a_restart(tmp_path):
    ledger, svc, dev = setup(tmp_path)
    outs = [dev.reading({"i": i}, NOW, dp.MODE_SESSION) for i in range(5)]
    assert send(svc, outs) == []
    first = dev.chain_statement(NOW, close=True)
    svc.store.close()
    svc = make(ledger, tmp_path / "gw.db")                          # nothing held in memory: the store is read
    assert svc.chains.recent == {}
    assert replies(run(svc, ledger, first.topic, first.payload), c.KIND_REFUSAL) == [] and svc.chains.verified == 1
    more = [dev.reading({"i": i}, NOW, dp.MODE_SESSION) for i in range(3)]
    assert send(svc, more[:1] + more[2:]) == []
    svc.store.close()
    svc = make(ledger, tmp_path / "gw.db")
    last = dev.chain_statement(NOW, close=True)                      # a frame of its range was never stored
    [refusal] = replies(run(svc, ledger, last.topic, last.payload), c.KIND_REFUSAL)
    assert refusal[2] == c.CHAIN_MISMATCH


def test_a_statement_and_the_frames_it_covers_are_stored_in_one_transaction(tmp_path):
    ledger, svc, dev = setup(tmp_path)
    outs = [dev.reading({"i": i}, NOW, dp.MODE_SESSION) for i in range(3)]
    assert send(svc, outs) == []
    statement = dev.chain_statement(NOW, close=True)
    writes = []
    svc.store.db.set_trace_callback(lambda sql: writes.append(sql) if sql.startswith("BEGIN") else None)
    assert send(svc, [statement]) == []
    svc.store.db.set_trace_callback(None)
    assert len(writes) == 1                                          # one group commit, one fsync
    assert {svc.store.covering(o.frame_hash) for o in outs} == {statement.frame_hash}


def test_a_statement_over_frames_held_in_memory_decodes_no_frame(tmp_path, monkeypatch):
    ledger, svc, dev = setup(tmp_path)
    outs = [dev.reading({"i": i}, NOW, dp.MODE_SESSION) for i in range(sc.EVERY_FRAMES)]
    assert send(svc, outs[:10]) == [] and send(svc, outs[10:]) == []
    statement = dev.chain_statement(NOW)

    def no_decoding(frame):
        raise AssertionError("a frame decoded to check a statement")

    monkeypatch.setattr(sc, "session_frame", no_decoding)
    assert send(svc, [statement]) == [] and svc.chains.verified == 1


def test_the_receipts_of_a_batch_find_their_statements_with_one_query(tmp_path):
    """And a statement anchored in the batch itself is not looked up at all."""
    ledger, svc, dev = setup(tmp_path)
    outs = [dev.reading({"i": i}, NOW, dp.MODE_SESSION) for i in range(20)]
    assert send(svc, outs) == []
    statement = dev.chain_statement(NOW, close=True)
    assert send(svc, [statement]) == []
    batcher = Batcher(svc.store, ledger, SITE, ledger.chain_id, ledger.keys, ledger.net["gateway"].priv)
    reads = []
    svc.store.reader.set_trace_callback(reads.append)
    receipts = [cbor.loads(o.payload) for o in batcher.step(NOW + 1000, force=True) if o.frame_hash is not None]
    svc.store.reader.set_trace_callback(None)
    assert len(receipts) == len(outs) + 1 and len([q for q in reads if "chain_frames" in q]) == 1
    assert not [q for q in reads if "m.frame_hash = " in q]          # the statement is in the batch: no lookup
    assert [r.get(8) for r in receipts] == [statement.frame_hash] * len(outs) + [None]
