"""Targeted PBFT replica scenarios on a lossless in-test network with instant delivery."""

import hashlib
from collections import deque

import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.consensus.kv_app import KVApp, make_tx
from ledgerlink.ledger.consensus.replica import (
    Broadcast, Committed, Config, Dropped, Persist, Replica, SaveVotes, Send,
)
from ledgerlink.ledger.consensus.simulator import CachingCrypto, Scenario, Simulation
from tests.backends import CountingBackend

CRYPTO = CachingCrypto(get_backend("cpython"))
KEYS = [bytes([0x40 + i]) * 32 for i in range(4)]
PUBS = tuple(CRYPTO.public_key(k) for k in KEYS)
CLIENT = bytes([0x77]) * 32


class Net:
    """n replicas; messages are delivered in FIFO order at once; nodes in ``down`` lose them."""

    def __init__(self, **overrides):
        params = dict(chain_id="t", validators=PUBS, batch_timeout_ms=10, view_change_timeout_ms=200,
                      retransmit_ms=50, checkpoint_interval=4)
        params.update(overrides)
        self.config = Config(**params)
        self.now = 0
        self.replicas = [Replica(i, self.config, KEYS[i], KVApp(CRYPTO), CRYPTO, 0) for i in range(4)]
        self.queue: deque = deque()
        self.down: set[int] = set()
        self.persisted: dict[int, list] = {i: [] for i in range(4)}
        self.effects: dict[int, list] = {i: [] for i in range(4)}
        self.nonce = 0

    def apply(self, i, effects):
        self.effects[i].extend(effects)
        for e in effects:
            if isinstance(e, Broadcast):
                self.queue.extend((i, j, e.data) for j in range(4) if j != i)
            elif isinstance(e, Send):
                self.queue.append((i, e.to, e.data))
            elif isinstance(e, Persist):
                self.persisted[i].append((e.block, e.certificate))
        return effects

    def tx(self, key=b"k"):
        self.nonce += 1
        return make_tx(CRYPTO, CLIENT, self.nonce.to_bytes(16, "big"), key, b"v%d" % self.nonce)

    def submit(self, i, tx):
        return self.apply(i, self.replicas[i].submit(tx, self.now))

    def deliver(self):
        while self.queue:
            src, dst, data = self.queue.popleft()
            if dst not in self.down and src not in self.down:
                self.apply(dst, self.replicas[dst].receive(src, data, self.now))

    def run(self, ms, step=10):
        end = self.now + ms
        while self.now < end:
            self.now += step
            for i in range(4):
                if i not in self.down:
                    self.apply(i, self.replicas[i].tick(self.now))
            self.deliver()

    def blocks(self, i):
        r = self.replicas[i]
        return [r.block(h)[0].encode() for h in range(r.height + 1)]

    def committed(self, i):
        return [e for e in self.effects[i] if isinstance(e, Committed)]


def test_normal_case_commits_identical_blocks():
    net = Net()
    txs = [net.tx(b"a"), net.tx(b"b"), net.tx(b"c")]
    for tx in txs:
        net.submit(2, tx)
    net.run(100)
    assert [r.height for r in net.replicas] == [0, 0, 0, 0]
    block = m.Block.decode(net.blocks(0)[0])
    assert set(block.txs) == set(txs)
    assert block.header.prev_hash == bytes(32) and block.header.tx_root == m.tx_root(block.txs)
    assert block.header.validators_hash == m.validators_hash(PUBS)
    for i in range(4):
        assert net.blocks(i) == net.blocks(0)
        kinds = [type(e) for e in net.effects[i] if isinstance(e, (Persist, Committed))]
        assert kinds == [Persist, Committed]
        c = net.committed(i)[0]
        m.verify_certificate(c.certificate, c.header, "t", PUBS, CRYPTO)
        assert net.replicas[i].app.get(b"c") == net.replicas[0].app.get(b"c") is not None
        assert net.replicas[i].app.height == 0


def test_batches_respect_max_batch_and_window_one():
    net = Net(max_batch=2)
    for _ in range(5):
        net.submit(1, net.tx())
    net.run(300)
    sizes = [len(m.Block.decode(b).txs) for b in net.blocks(3)]
    assert sum(sizes) == 5 and max(sizes) == 2 and len(sizes) >= 3
    heights = [[b.height for b in net.committed(i)] for i in range(4)]
    assert all(h == list(range(len(sizes))) for h in heights)


def test_view_change_on_crashed_primary():
    net = Net()
    net.down.add(0)
    tx = net.tx()
    net.submit(1, tx)
    net.run(2000)
    for i in (1, 2, 3):
        r = net.replicas[i]
        assert r.view >= 1 and not r.in_view_change
        assert r.height == 0 and r.block(0)[0].txs == (tx,)
        assert net.committed(i)[0].certificate.view == r.view
    assert net.blocks(1) == net.blocks(2) == net.blocks(3)


def test_equivocating_primary_cannot_split_honest_replicas():
    equivocations = 0
    for seed in range(25):
        sc = Scenario(n=4, faults={0: "equivocate"}, drop=0.0, dup=0.0, delay=(1, 20), partitions=[],
                      down={}, heal_ms=600, txs=[(10 * k, 1 + k % 3) for k in range(4)], replays=[])
        sim = Simulation(seed, scenario=sc)
        result = sim.run()
        assert result.ok, result.violations
        equivocations += len(sim.nodes[0].variants)
        honest = [sim.nodes[i].replicas[0] for i in (1, 2, 3)]
        assert min(r.height for r in honest) >= 0
        for h in range(min(r.height for r in honest) + 1):
            assert len({r.block(h)[0].encode() for r in honest}) == 1
    assert equivocations > 0


def test_state_transfer_after_restart():
    net = Net()
    net.submit(1, net.tx(b"x"))
    net.run(100)
    net.down.add(3)
    for k in range(5):
        net.submit(1, net.tx(b"k%d" % k))
        net.run(100)
    assert net.replicas[0].height == 5 and net.replicas[3].height == 0
    restored = Replica.restore(3, net.config, KEYS[3], KVApp(CRYPTO), CRYPTO, net.now, net.persisted[3])
    assert restored.height == 0 and restored.app.get(b"x") is not None
    net.replicas[3] = restored
    net.down.discard(3)
    net.submit(2, net.tx(b"y"))
    net.run(1000)
    assert net.replicas[3].height == net.replicas[0].height == 6
    assert net.blocks(3) == net.blocks(0)
    assert net.replicas[3].app.committed == net.replicas[0].app.committed
    sent = [m.loads(e.data)[0] for e in net.effects[3] if isinstance(e, Send)]
    assert m.FETCH_BLOCKS in sent
    assert len(net.persisted[3]) == 7


def test_a_replica_that_missed_a_proposal_fetches_the_block_its_peers_certified():
    """Replica 3 loses the request and the pre-prepare of a block but gets the 2f+1 commits for it:
    with no further traffic it fetches the block instead of waiting for the next one."""
    net = Net()
    net.submit(1, net.tx(b"x"))
    net.run(100)
    lost = {m.PRE_PREPARE, m.REQUEST}

    def deliver():
        while net.queue:
            src, dst, data = net.queue.popleft()
            if dst == 3 and m.loads(data)[0] in lost:
                continue
            net.apply(dst, net.replicas[dst].receive(src, data, net.now))

    net.deliver = deliver
    before = len(net.effects[3])
    net.submit(1, net.tx(b"y"))
    net.run(200)
    assert [r.height for r in net.replicas] == [1, 1, 1, 1]
    assert [r.view for r in net.replicas] == [0, 0, 0, 0]
    assert net.blocks(3) == net.blocks(0)
    sent = [m.loads(e.data)[0] for e in net.effects[3][before:] if isinstance(e, Send)]
    assert sent.count(m.FETCH_BLOCKS) == 1


def test_an_idle_replica_that_missed_the_last_block_catches_up_without_new_traffic():
    """Replica 3 loses every message of the last block; nothing is submitted after it, so no vote shows
    it that it is behind: it asks a peer for newer blocks every ``idle_sync_ms`` and gets the block."""
    net = Net()
    assert net.config.idle_sync_ms == 2000
    net.submit(1, net.tx(b"x"))
    net.run(100)
    net.down.add(3)
    net.submit(1, net.tx(b"y"))
    net.run(400)                                  # past the peers' re-sends of their last commit votes
    net.down.discard(3)
    assert [r.height for r in net.replicas] == [1, 1, 1, 0]
    net.run(100)
    assert net.replicas[3].height == 0
    net.run(2000)
    assert [r.height for r in net.replicas] == [1, 1, 1, 1]
    assert net.blocks(3) == net.blocks(0)
    polls = [e for e in net.effects[0] if isinstance(e, Send) and m.loads(e.data)[0] == m.FETCH_BLOCKS]
    assert polls, "replicas with nothing to do ask for newer blocks too"
    before = {i: len(net.effects[i]) for i in range(4)}
    net.run(2000)
    assert [r.height for r in net.replicas] == [1, 1, 1, 1]
    quiet = [e for i in range(4) for e in net.effects[i][before[i]:]]
    assert not any(isinstance(e, (Broadcast, Persist, Dropped)) for e in quiet), "polls of peers as far are no drops"
    assert sum(isinstance(e, Send) for e in quiet) >= 4


def test_restore_rejects_a_corrupt_store():
    net = Net()
    net.submit(1, net.tx())
    net.run(100)
    block, cert = net.persisted[1][0]
    b = m.Block.decode(block)
    forged = m.Block(b.header, b.txs + (net.tx(),)).encode()
    for store in ([(forged, cert)], [(block, cert[:-3])], [(block, cert), (block, cert)]):
        with pytest.raises(ValueError):
            Replica.restore(1, net.config, KEYS[1], KVApp(CRYPTO), CRYPTO, 0, store)


def snapshot(r):
    return (r.view, r.in_view_change, r.height, list(r.pool), repr(r.slots), repr(r.checkpoints),
            repr(r.view_changes), r.stable_checkpoint, r.executed)


def only_drop(effects, reason, sender):
    assert [(e.reason, e.sender) for e in effects if isinstance(e, Dropped)] == [(reason, sender)], effects
    assert len(effects) == 1, effects


def test_bad_messages_are_dropped_with_reason_and_no_state_change():
    net = Net()
    net.submit(1, net.tx())
    net.run(100)
    r = net.replicas[2]
    before = snapshot(r)
    hh = r.last_hash
    good = m.encode_message("t", [m.PREPARE, 1, 0, 1, hh], KEYS[1], CRYPTO)
    cases = [
        (1, m.encode_message("t", [m.PREPARE, 1, 0, 1, hh], KEYS[3], CRYPTO), "bad signature"),
        (1, good[:-1] + bytes([good[-1] ^ 1]), "bad signature"),
        (1, m.dumps([m.PREPARE, 7, 0, 1, hh, bytes(64)]), "unknown sender"),
        (1, bytes(net.config.max_message_size + 1), "oversized"),
        (1, b"\xff\x00garbage", "malformed"),
        (1, m.dumps([m.PREPARE, 1, 0, 1, hh]), "malformed"),
        (3, good, "sender mismatch"),
        (2, m.encode_message("t", [m.PREPARE, 2, 0, 1, hh], KEYS[2], CRYPTO), "own message"),
        (1, m.encode_message("t", [m.REQUEST, 1, [b"not a tx"]], KEYS[1], CRYPTO), "invalid tx 1"),
        (1, m.encode_message("t", [m.PREPARE, 1, 0, 0, hh], KEYS[1], CRYPTO), "stale height"),
        (1, m.encode_message("other-chain", [m.PREPARE, 1, 0, 1, hh], KEYS[1], CRYPTO), "bad signature"),
    ]
    for sender, data, reason in cases:
        only_drop(r.receive(sender, data, net.now), reason, sender)
        assert snapshot(r) == before


def test_stale_duplicate_and_conflicting_votes():
    net = Net()
    r = net.replicas[2]
    net.run(10)
    r.view = 3
    stale = m.encode_message("t", [m.PREPARE, 1, 2, 0, bytes(32)], KEYS[1], CRYPTO)
    only_drop(r.receive(1, stale, net.now), "stale view", 1)
    a = m.encode_message("t", [m.PREPARE, 1, 3, 0, b"a" * 32], KEYS[1], CRYPTO)
    b = m.encode_message("t", [m.PREPARE, 1, 3, 0, b"b" * 32], KEYS[1], CRYPTO)
    assert r.receive(1, a, net.now) == []
    before = snapshot(r)
    only_drop(r.receive(1, a, net.now), "duplicate", 1)
    only_drop(r.receive(1, b, net.now), "conflicting vote", 1)
    assert snapshot(r) == before
    from_primary = m.encode_message("t", [m.PREPARE, 3, 3, 0, b"a" * 32], KEYS[3], CRYPTO)
    only_drop(r.receive(3, from_primary, net.now), "prepare from primary", 3)


def test_replayed_request_is_not_committed_twice():
    net = Net()
    tx = net.tx()
    net.submit(1, tx)
    only_drop(net.replicas[1].submit(tx, net.now), "duplicate tx", None)
    net.run(100)
    assert all(r.height == 0 for r in net.replicas)
    for i in range(4):
        only_drop(net.replicas[i].submit(tx, net.now), "replayed tx", None)
    req = m.encode_message("t", [m.REQUEST, 3, [tx]], KEYS[3], CRYPTO)
    only_drop(net.replicas[2].receive(3, req, net.now), "replayed tx", 3)
    # a primary proposing the committed transaction again is refused by every backup
    r0 = net.replicas[0]
    prev = r0.block(0)[0].header
    header = m.Header("t", 1, r0.last_hash, prev.time_ms + 5, m.tx_root([tx]), prev.state_root,
                      m.validators_hash(PUBS))
    pp = m.encode_message("t", [m.PRE_PREPARE, 0, 0, 1, header.to_obj(), [tx]], KEYS[0], CRYPTO)
    for i in (1, 2, 3):
        effects = net.replicas[i].receive(0, pp, net.now)
        assert effects == [Dropped("rejected proposal: replayed tx in batch", 0)]
    net.run(100)
    assert all(r.height == 0 for r in net.replicas)


def test_invalid_proposal_is_refused_and_primary_replaced():
    net = Net()
    tx = net.tx()
    net.down.add(0)
    for i in (1, 2, 3):
        net.replicas[i].submit(tx, net.now)
    bad_root = m.Header("t", 0, bytes(32), 5, m.tx_root([tx]), b"\x01" * 32, m.validators_hash(PUBS))
    pp = m.encode_message("t", [m.PRE_PREPARE, 0, 0, 0, bad_root.to_obj(), [tx]], KEYS[0], CRYPTO)
    for i in (1, 2, 3):
        assert net.replicas[i].receive(0, pp, net.now) == [
            Dropped("rejected proposal: state root mismatch", 0)]
    net.run(2000)
    assert all(net.replicas[i].height == 0 and net.replicas[i].view >= 1 for i in (1, 2, 3))
    assert net.replicas[1].block(0)[0].header.state_root != b"\x01" * 32


def test_checkpoint_truncates_the_log():
    net = Net(checkpoint_interval=4)
    for k in range(3):
        net.submit(1, net.tx())
        net.run(60)
    r = net.replicas[2]
    assert r.height == 2 and r.stable_checkpoint == -1 and {0, 1, 2} <= set(r.slots)
    for k in range(6):
        net.submit(1, net.tx())
        net.run(60)
    for r in net.replicas:
        assert r.height == 8
        assert r.stable_checkpoint == 7
        assert all(h > 7 for h in r.slots) and all(h > 7 for h in r.checkpoints)
    stale = m.encode_message("t", [m.CHECKPOINT, 1, 3, net.replicas[1].block(3)[1].header_hash],
                             KEYS[1], CRYPTO)
    only_drop(net.replicas[2].receive(1, stale, net.now), "stale checkpoint", 1)


def test_forged_certificate_in_blocks_reply_is_refused():
    net = Net()
    net.down.add(3)
    net.submit(1, net.tx())
    net.run(100)
    block, cert = net.replicas[0].block(0)
    weak = m.CommitCertificate(cert.height, cert.view, cert.header_hash, cert.votes[:2])
    reply = m.encode_message("t", [m.BLOCKS, 0, [[block.header.to_obj(), list(block.txs),
                                                  weak.to_obj()]]], KEYS[0], CRYPTO)
    r3 = net.replicas[3]
    only_drop(r3.receive(0, reply, net.now), "bad certificate", 0)
    assert r3.height == -1
    ok = m.encode_message("t", [m.BLOCKS, 0, [[block.header.to_obj(), list(block.txs),
                                               cert.to_obj()]]], KEYS[0], CRYPTO)
    effects = r3.receive(0, ok, net.now)
    assert r3.height == 0 and any(isinstance(e, Persist) for e in effects)


def test_simulator_replays_a_seed_exactly(capsys):
    from ledgerlink.ledger.consensus import simulator
    assert simulator.main(["--seed", "11"]) == 0
    first = capsys.readouterr().out
    assert simulator.main(["--seed", "11"]) == 0
    assert capsys.readouterr().out == first and "COMMIT height 0" in first
    assert simulator.main(["--seeds", "0:4"]) == 0
    assert "4 seeds, 0 failed" in capsys.readouterr().out


def test_seeded_suite_covers_every_fault_kind():
    import random
    from ledgerlink.ledger.consensus.simulator import FAULT_KINDS, draw_scenario
    kinds, sizes, partitions, lossy, extra_restarts = set(), set(), 0, 0, 0
    for seed in range(1000):
        sc = draw_scenario(random.Random(seed))
        kinds.update(sc.faults.values())
        sizes.add(sc.n)
        partitions += bool(sc.partitions)
        lossy += sc.drop > 0
        # at most f faulty; one more validator may restart (honest, with its durable vote record)
        faulty = len(sc.faults)
        if faulty > sc.f:
            assert faulty == sc.f + 1 and "restart" in sc.faults.values()
            extra_restarts += 1
    assert kinds == set(FAULT_KINDS) and sizes == {4, 7}
    assert partitions > 200 and lossy > 200 and extra_restarts > 100


def _mutations(rnd, value):
    choices = [None, 0, 1, 2 ** 64 - 1, -1, b"", bytes(32), bytes(64), "s", [], [0], [[0, bytes(64)]],
               rnd.randbytes(rnd.randint(0, 70))]
    if isinstance(value, list) and value:
        i = rnd.randrange(len(value))
        return value[:i] + [_mutations(rnd, value[i])] + value[i + 1:]
    return rnd.choice(choices)


def test_re_signed_mutated_messages_never_raise():
    """Every field of real messages (including view-change and new-view) replaced by hostile values,
    validly re-signed by the claimed sender: the replica only ever answers with effects."""
    import random
    net = Net()
    net.down.add(0)
    net.submit(1, net.tx())
    net.run(1500)
    net.down.discard(0)
    net.submit(2, net.tx())
    net.run(500)
    seen = {}
    for i in range(4):
        for e in net.effects[i]:
            if isinstance(e, (Broadcast, Send)):
                seen.setdefault(m.loads(e.data)[0], []).append(e.data)
    assert {m.PRE_PREPARE, m.PREPARE, m.COMMIT, m.VIEW_CHANGE, m.NEW_VIEW, m.REQUEST} <= set(seen)
    rnd = random.Random(5)
    target = net.replicas[2]
    for n in range(1500):
        raw = rnd.choice(seen[rnd.choice(sorted(seen))])
        a = m.loads(raw)
        body = _mutations(rnd, a[:-1])
        sender = body[1] if isinstance(body[1], int) and 0 <= body[1] < 4 else a[1]
        if sender == 2:
            continue
        data = m.dumps(body + [CRYPTO.sign(KEYS[sender], m.dumps([m.PBFT_DOMAIN, "t", body]))])
        for e in target.receive(sender, data, net.now + n):
            assert isinstance(e, (Send, Broadcast, Persist, SaveVotes, Committed, Dropped))
        target.tick(net.now + n)


def test_client_txs_submitted_together_are_forwarded_in_one_signed_request():
    net = Net(max_batch=3)
    txs = [net.tx(b"k%d" % i) for i in range(5)]
    bad = b"not a tx"
    effects = net.apply(1, net.replicas[1].submit_many(txs[:2] + [bad] + txs[2:], net.now))
    drops = [e for e in effects if isinstance(e, Dropped)]
    assert [(d.reason, d.sender, d.tx) for d in drops] == [("invalid tx 1", None, bad)]
    requests = [m.decode_message(e.data, "t", PUBS, CRYPTO, net.config.limits)
                for e in effects if isinstance(e, Broadcast)]
    assert [r.kind for r in requests] == [m.REQUEST, m.REQUEST]
    assert [len(r.fields[0]) for r in requests] == [3, 2]            # at most max_batch per request
    assert sum((list(r.fields[0]) for r in requests), []) == txs
    net.run(200)
    assert all(r.height >= 0 for r in net.replicas)
    committed = [tx for r in net.committed(2) for tx in r.txs]
    assert sorted(committed) == sorted(txs)


def test_request_admits_its_good_txs_and_drops_the_bad_ones():
    net = Net()
    good = net.tx()
    req = m.encode_message("t", [m.REQUEST, 3, [b"junk", good, good]], KEYS[3], CRYPTO)
    effects = net.replicas[2].receive(3, req, net.now)
    assert [(e.reason, e.sender) for e in effects if isinstance(e, Dropped)] == [
        ("invalid tx 1", 3), ("duplicate tx", 3)]
    assert list(net.replicas[2].pool) == [hashlib.sha256(good).digest()]
    for body, reason in (([m.REQUEST, 3, []], "malformed"),
                         ([m.REQUEST, 3, [good] * (net.config.max_batch + 1)], "oversized")):
        raw = m.encode_message("t", body, KEYS[3], CRYPTO)
        only_drop(net.replicas[1].receive(3, raw, net.now), reason, 3)


def _votes_of(effects, kind):
    return [m.loads(e.data) for e in effects if isinstance(e, Broadcast) and m.loads(e.data)[0] == kind]


def _saved(effects):
    return [e.record for e in effects if isinstance(e, SaveVotes)]


def test_a_restarted_replica_never_votes_for_a_second_proposal_of_the_same_view_and_height():
    """An equivocating primary shows proposal X, then (after the backup restarts) proposal Y for the
    same view and height: the backup's durable vote record keeps it from preparing Y."""
    net = Net()
    net.submit(1, net.tx(b"a"))
    net.run(100)
    assert all(r.height == 0 for r in net.replicas)
    net.down.update({0, 1, 2, 3})                 # the test delivers every message by hand now
    twin = Replica.restore(0, net.config, KEYS[0], KVApp(CRYPTO), CRYPTO, net.now, net.persisted[0])
    twin.abstain_height = -1                      # a Byzantine twin ignores its own record

    def proposal(r, tx):
        effects = r.submit(tx, net.now + 20) + r.tick(net.now + 40)
        return [e.data for e in effects if isinstance(e, Broadcast) and m.loads(e.data)[0] == m.PRE_PREPARE][0]

    pp_x = proposal(net.replicas[0], net.tx(b"x"))
    pp_y = proposal(twin, net.tx(b"y"))
    assert m.loads(pp_x)[0] == m.loads(pp_y)[0] == m.PRE_PREPARE and pp_x != pp_y
    r3 = net.replicas[3]
    effects = r3.receive(0, pp_x, net.now + 20)
    prep = _votes_of(effects, m.PREPARE)
    assert len(prep) == 1 and prep[0][2:4] == [0, 1]
    hx = prep[0][4]
    for i in (1, 2):
        effects += r3.receive(i, m.encode_message("t", [m.PREPARE, i, 0, 1, hx], KEYS[i], CRYPTO), net.now + 20)
    assert _votes_of(effects, m.COMMIT)[0][4] == hx
    record = _saved(effects)[-1]                 # saved before the commit vote left
    kinds = [type(e).__name__ for e in effects]
    assert kinds.index("SaveVotes") < max(i for i, e in enumerate(effects)
                                           if isinstance(e, Broadcast) and m.loads(e.data)[0] == m.COMMIT)

    first = _saved(net.effects[3])[0]           # saved before its first vote (a prepare in view 0)
    assert m.loads(first) == [0, False, None]
    for votes in (record, first):                # with its last record, and with the first one
        restored = Replica.restore(3, net.config, KEYS[3], KVApp(CRYPTO), CRYPTO, net.now + 30,
                                   net.persisted[3], votes=votes)
        out = restored.receive(0, pp_y, net.now + 30)
        for i in (1, 2):
            hy = m.loads(pp_y)[4]
            hy = m.Header.from_obj(hy).hash()
            out += restored.receive(i, m.encode_message("t", [m.PREPARE, i, 0, 1, hy], KEYS[i], CRYPTO),
                                    net.now + 30)
        assert not _votes_of(out, m.PREPARE) and not _votes_of(out, m.COMMIT), out
        if votes is record:
            # its prepared proof for X survives the restart and goes into its view-change
            assert restored.prepared_proof[0].hash == hx
            out = restored.tick(net.now + 40) + restored.tick(net.now + 50 + net.config.view_change_timeout_ms)
            vc = _votes_of(out, m.VIEW_CHANGE)
            assert vc and vc[0][2] == 1 and vc[0][4][0] == pp_x


def test_a_restarted_replica_comes_back_in_its_view_change_and_votes_in_later_views():
    net = Net()
    net.submit(1, net.tx(b"a"))
    net.run(100)
    net.down.add(0)                               # the primary stops: the others change view
    net.submit(2, net.tx(b"b"))
    effects3 = len(net.effects[3])
    net.run(400)
    records = [m.loads(r)[:2] for r in _saved(net.effects[3][effects3:])]
    assert records[:2] == [[1, True], [1, False]]            # view change started, new view entered
    record = _saved(net.effects[3][effects3:])[0]             # it stops before the new view arrives
    net.replicas[3] = Replica.restore(3, net.config, KEYS[3], KVApp(CRYPTO), CRYPTO, net.now,
                                      net.persisted[3], votes=record)
    assert net.replicas[3].in_view_change and net.replicas[3].view == 1
    net.run(1500)
    assert [r.view for r in net.replicas[1:]] == [1, 1, 1]
    assert [r.height for r in net.replicas[1:]] == [1, 1, 1]
    assert net.blocks(3) == net.blocks(1)


def test_a_corrupt_vote_record_is_refused():
    net = Net()
    net.submit(1, net.tx())
    net.run(100)
    good = m.dumps([0, False, None])
    Replica.restore(1, net.config, KEYS[1], KVApp(CRYPTO), CRYPTO, 0, net.persisted[1], votes=good)
    for bad in (b"\xff", m.dumps([0, None]), m.dumps([-1, False, None]), m.dumps([0, 1, None]),
                m.dumps([0, False, [b"junk", []]]), m.dumps([0, False, [b"x", [[0, b"s"]]]])):
        with pytest.raises(ValueError):
            Replica.restore(1, net.config, KEYS[1], KVApp(CRYPTO), CRYPTO, 0, net.persisted[1], votes=bad)


def test_a_fresh_replica_saves_a_vote_record_before_its_first_vote():
    """No vote leaves a replica before a vote record is durable, so a store without one is a replica
    that never voted (``restore`` then abstains from nothing)."""
    net = Net()
    net.submit(1, net.tx(b"a"))
    net.run(100)
    for i in range(4):
        kinds = [("save" if isinstance(e, SaveVotes) else m.loads(e.data)[0]) for e in net.effects[i]
                 if isinstance(e, SaveVotes) or (isinstance(e, Broadcast)
                                                  and m.loads(e.data)[0] in (m.PRE_PREPARE, m.PREPARE))]
        assert kinds[0] == "save", (i, kinds)


def test_a_fresh_cluster_restored_from_empty_stores_commits_in_view_0():
    """Nodes start through ``Replica.restore`` with no blocks and no vote record: the primary of
    view 0 proposes at once and no replica changes view."""
    net = Net()
    net.replicas = [Replica.restore(i, net.config, KEYS[i], KVApp(CRYPTO), CRYPTO, 0, [], votes=None)
                    for i in range(4)]
    for k in range(5):
        net.submit(k % 4, net.tx(b"k%d" % k))
        net.run(60)
    assert [r.height for r in net.replicas] == [4] * 4
    assert [r.view for r in net.replicas] == [0] * 4
    assert not any(isinstance(e, Broadcast) and m.loads(e.data)[0] == m.VIEW_CHANGE
                   for i in range(4) for e in net.effects[i])


class SlowPrimaryNet(Net):
    """Replica 0 holds each of its pre-prepares ``hold`` ms before it sends them (a slow primary)."""

    def __init__(self, hold, **overrides):
        super().__init__(**overrides)
        self.hold = hold
        self.held = []

    def apply(self, i, effects):
        if i == 0:
            keep = []
            for e in effects:
                if isinstance(e, Broadcast) and m.loads(e.data)[0] == m.PRE_PREPARE \
                        and m.loads(e.data)[2] == 0:
                    self.held.append((self.now + self.hold, e))
                else:
                    keep.append(e)
            effects = keep
        return super().apply(i, effects)

    def run(self, ms, step=10, every=None):
        end = self.now + ms
        while self.now < end:
            self.now += step
            due = [e for t, e in self.held if t <= self.now]
            self.held = [(t, e) for t, e in self.held if t > self.now]
            for e in due:
                Net.apply(self, 0, [e])
            if every and self.now % every == 0:
                self.submit(1 + self.now // every % 3, self.tx(b"k%d" % self.now))
            for i in range(4):
                if i not in self.down:
                    self.apply(i, self.replicas[i].tick(self.now))
            self.deliver()


def test_a_slow_primary_loses_its_view_and_the_rate_recovers():
    """The primary holds each proposal 800 ms of a 1,000 ms timeout (1.2 blocks/s while backups have
    work): the backups measure its service against what their commits allow and change view."""
    net = SlowPrimaryNet(800, view_change_timeout_ms=1000)
    net.run(2500, every=20)
    assert [r.view for r in net.replicas[1:]] == [1, 1, 1]
    assert sum(r.slow_primary_demands for r in net.replicas[1:]) >= 2
    h0 = net.replicas[1].height
    net.run(1000, every=20)
    assert net.replicas[1].height - h0 >= 10                  # one block per few ticks again
    assert len({tuple(net.blocks(i)) for i in (1, 2, 3)}) == 1


def test_a_primary_just_inside_the_bound_keeps_its_view():
    """A primary that holds each proposal 40 ms (within the grace for batching) is not demoted."""
    net = SlowPrimaryNet(40, view_change_timeout_ms=1000)
    net.run(3000, every=20)
    assert [r.view for r in net.replicas] == [0] * 4
    assert not any(r.slow_primary_demands for r in net.replicas)
    assert net.replicas[1].height >= 30


def test_block_fetches_beyond_a_peers_byte_budget_are_dropped():
    """A peer that asks for blocks 0..10^6 in a loop gets answers worth ``max_message_size / 8``
    bytes per second (at least 1/256 of it per answer), not one per request."""
    net = Net(max_message_size=1 << 16)
    for k in range(6):
        net.submit(1, net.tx(b"k%d" % k))
        net.run(60)
    r = net.replicas[1]
    assert r.height >= 5
    answers = drops = 0
    for t in range(0, 1000, 1):                              # 1,000 fetches a second for one second
        for e in r.receive(3, m.encode_message("t", [m.FETCH_BLOCKS, 3, 0, 10 ** 6], KEYS[3], CRYPTO),
                           net.now + t):
            if isinstance(e, Send) and m.loads(e.data)[0] == m.BLOCKS:
                answers += 1
            elif isinstance(e, Dropped) and e.reason == "fetch rate":
                drops += 1
    assert answers + drops == 1000 and 2 <= answers <= 64, answers
    again = r.receive(2, m.encode_message("t", [m.FETCH_BLOCKS, 2, 0, 3], KEYS[2], CRYPTO), net.now + 1000)
    assert any(isinstance(e, Send) and e.to == 2 for e in again)            # other peers keep their budget


def test_floods_of_useless_votes_and_fetches_are_dropped_before_the_signature_check():
    """A validator that sends a second vote for one view and height, votes for stale heights or
    other views it already claimed, or more than FETCH_REQUESTS_PER_S fetches a second, costs no
    ECDSA verification per message."""
    net = Net()
    for k in range(3):
        net.submit(1, net.tx(b"k%d" % k))
        net.run(60)
    counting = CountingBackend(CRYPTO)
    r = Replica(1, net.config, KEYS[1], KVApp(CRYPTO), counting, net.now)
    for h in range(net.replicas[1].height + 1):
        block, cert = net.replicas[1].block(h)
        r.receive(0, m.encode_message("t", [m.BLOCKS, 0, [[block.header.to_obj(), list(block.txs), cert.to_obj()]]],
                                      KEYS[0], CRYPTO), net.now)
    assert r.height == net.replicas[1].height
    import os as _os
    flood = [m.encode_message("t", [kind, 3, view, r.height + dh, _os.urandom(32)], KEYS[3], CRYPTO)
             for _ in range(20) for kind in (m.PREPARE, m.COMMIT) for view in (0, 1, 2) for dh in (0, 1, 2)]
    flood += [m.encode_message("t", [m.FETCH_BLOCKS, 3, 0, 10 ** 6], KEYS[3], CRYPTO)] * 500
    before = counting.verifies
    reasons = [e.reason for data in flood for e in r.receive(3, data, net.now) if isinstance(e, Dropped)]
    assert counting.verifies - before <= 18 + 2 * 50 + 60, counting.verifies - before   # firsts + fetch burst
    assert reasons.count("fetch rate") >= 400
    assert {"conflicting vote", "future view", "stale height"} <= set(reasons)
    assert r.height == net.replicas[1].height and r.view == 0


def test_a_single_validator_commits_and_idles_without_peers():
    """n = 1 (f = 0): the replica commits alone, and its idle poll, having no peer to ask, asks nobody."""
    config = Config(chain_id="t", validators=PUBS[:1], batch_timeout_ms=10, view_change_timeout_ms=200,
                    retransmit_ms=50, checkpoint_interval=4)
    replica = Replica(0, config, KEYS[0], KVApp(CRYPTO), CRYPTO, 0)
    effects = replica.submit(make_tx(CRYPTO, CLIENT, b"\x01" * 16, b"k", b"v"), 0)
    for now in range(10, 6000, 10):
        effects += replica.tick(now)
    assert sum(isinstance(e, Committed) for e in effects) == 1
    assert not any(isinstance(e, Send) for e in effects)


class EquivocatingNet(Net):
    """Replica 0 signs two proposals for each of its pre-prepares: the one it made goes to every
    backup, then one whose header time is 1 ms later to replica 3 only (so one backup alone holds
    the proof); everything else it sends is unchanged."""

    def apply(self, i, effects):
        if i != 0:
            return super().apply(i, effects)
        keep = []
        for e in effects:
            a = m.loads(e.data) if isinstance(e, (Broadcast, Send)) else None
            if a is not None and a[0] == m.PRE_PREPARE:
                header = list(a[4])
                header[3] += 1
                alt = m.encode_message("t", [a[0], a[1], a[2], a[3], header, a[5]], KEYS[0], CRYPTO)
                dsts = [1, 2, 3] if isinstance(e, Broadcast) else [e.to]
                self.queue.extend((0, j, e.data) for j in dsts)
                self.queue.extend((0, j, alt) for j in dsts if j == 3)
            else:
                keep.append(e)
        return super().apply(i, keep)


def test_an_equivocation_one_backup_sees_moves_every_backup():
    """Only replica 3 receives the second proposal; it forwards the signed pair, so replicas 1 and 2
    (which could go on committing with the equivocator) also leave its view at once."""
    net = EquivocatingNet()
    net.submit(1, net.tx())
    net.run(100)
    for i in (1, 2, 3):
        r = net.replicas[i]
        assert r.view >= 1 and 0 in r.convicted, (i, r.view)
    net.submit(2, net.tx(b"k2"))
    net.run(200)
    assert [net.replicas[i].height for i in (1, 2, 3)] == [1, 1, 1]
    assert net.blocks(1) == net.blocks(2) == net.blocks(3)


def test_a_convicted_primary_gets_no_view_of_its_own():
    """After the proof, honest replicas never ask for a view the equivocator would lead: with the
    primaries of views 1, 2 and 3 silent, they go from view 3 to view 5, not 4."""
    net = SilencingNet()
    net.submit(1, net.tx())
    net.run(100)
    assert all(0 in net.replicas[i].convicted for i in (1, 2, 3))
    net.silent.update({1, 2, 3})
    net.submit(3, net.tx(b"k2"))
    net.run(8000)
    for i in (1, 2, 3):
        views = {m.loads(e.data)[2] for e in net.effects[i]
                 if isinstance(e, Broadcast) and m.loads(e.data)[0] == m.VIEW_CHANGE}
        assert 4 not in views and max(views) >= 5, (i, views)


class SilencingNet(EquivocatingNet):
    """``EquivocatingNet`` where the replicas in ``silent`` send no pre-prepare or new-view."""

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.silent = set()

    def apply(self, i, effects):
        if i in self.silent:
            effects = [e for e in effects if not (isinstance(e, (Broadcast, Send))
                                                  and m.loads(e.data)[0] in (m.PRE_PREPARE, m.NEW_VIEW))]
        return super().apply(i, effects)


class SlowAgainNet(SlowPrimaryNet):
    """``SlowPrimaryNet`` where replica 0 holds its pre-prepares in every view, and the replicas in
    ``silent`` send no pre-prepare or new-view."""

    def __init__(self, hold, **overrides):
        super().__init__(hold, **overrides)
        self.silent = set()

    def apply(self, i, effects):
        if i in self.silent:
            effects = [e for e in effects if not (isinstance(e, (Broadcast, Send))
                                                  and m.loads(e.data)[0] in (m.PRE_PREPARE, m.NEW_VIEW))]
        if i == 0:
            keep = []
            for e in effects:
                if isinstance(e, Broadcast) and m.loads(e.data)[0] == m.PRE_PREPARE:
                    self.held.append((self.now + self.hold, e))
                else:
                    keep.append(e)
            effects = keep
        return Net.apply(self, i, effects)


def test_a_demoted_slow_primary_is_judged_on_its_first_block_next_time():
    """Demoted once for slowness, the primary gets its turn again in view 4 (the primaries of
    views 1-3 fall silent): the backups now demand the view change after its first slow block
    instead of a full window of them."""
    net = SlowAgainNet(160, view_change_timeout_ms=300)
    net.run(1500, every=20)
    assert all(r.view >= 1 for r in net.replicas[1:]) and net.replicas[1].slow_primary_demands == 1
    net.silent.update({1, 2, 3})
    while net.now < 30000 and min(r.view for r in net.replicas[1:]) < 5:
        net.run(100, every=20)
    in_view_4 = [[c.height for c in net.committed(i) if c.certificate.view == 4] for i in (1, 2, 3)]
    assert all(r.view >= 5 for r in net.replicas[1:]), [r.view for r in net.replicas]
    assert all(r.slow_primary_demands == 2 for r in net.replicas[1:])
    assert max(len(h) for h in in_view_4) <= 2, in_view_4      # the new-view's block, then one held


def test_a_primary_holding_proposals_near_the_timeout_loses_its_view_after_one_block():
    """Each proposal held 800 ms of a 1,000 ms timeout: the first such block is evidence enough
    (it alone spans the judging window), so the view costs one slow block, not two."""
    net = SlowPrimaryNet(800, view_change_timeout_ms=1000)
    net.run(2500, every=20)
    assert [r.view for r in net.replicas[1:]] == [1, 1, 1]
    in_view_0 = [[c.height for c in net.committed(i) if c.certificate.view == 0] for i in (1, 2, 3)]
    assert max(len(h) for h in in_view_0) == 1, in_view_0


def test_equivocation_messages_beyond_a_peers_budget_are_dropped_unverified():
    """Each equivocation message costs three signature checks: a peer that sends 100 in a second
    gets n of them checked (one per validator it could convict) and one more a second, the rest
    are dropped before any signature check."""
    net = EquivocatingNet()
    r = net.replicas[1]
    pp = [m.encode_message("t", [m.PRE_PREPARE, 0, 0, 0, m.Header("t", 0, bytes(32), t, bytes(32), bytes(32),
                                                                    r._vhash).to_obj(), []], KEYS[0], CRYPTO)
          for t in (1, 2)]
    bogus = m.encode_message("t", [m.EQUIVOCATION, 3, pp[0], pp[0]], KEYS[3], CRYPTO)
    reasons = [e.reason for t in range(100) for e in r.receive(3, bogus, 20 * t) if isinstance(e, Dropped)]
    checked = reasons.count("bad equivocation proof")
    assert 4 + 1 <= checked <= 4 + 2 and reasons.count("equivocation rate") == 100 - checked, reasons
    real = m.encode_message("t", [m.EQUIVOCATION, 2, pp[0], pp[1]], KEYS[2], CRYPTO)
    assert not [e for e in r.receive(2, real, 1000) if isinstance(e, Dropped)]      # other peers keep theirs
    assert 0 in r.convicted and r.view == 1


def _block_votes(net, h):
    """The signed pre-prepare, prepares and commits the replicas of ``net`` broadcast for height h,
    by (kind, sender)."""
    out = {}
    for i in range(4):
        for e in net.effects[i]:
            if isinstance(e, Broadcast):
                a = m.loads(e.data)
                if a[0] in (m.PRE_PREPARE, m.PREPARE, m.COMMIT) and a[3] == h:
                    out.setdefault((a[0], a[1]), e.data)
    return out


def _restored_counting(net):
    """Replica 3 restored at height 0 from its store, verifying through a counter; the votes of block 1."""
    net.submit(1, net.tx(b"a"))
    net.run(60)
    net.down.add(3)
    net.submit(1, net.tx(b"b"))
    net.run(60)
    assert net.replicas[0].height == 1 and net.replicas[3].height == 0
    counting = CountingBackend(CRYPTO)
    r = Replica.restore(3, net.config, KEYS[3], KVApp(counting), counting, net.now, net.persisted[3])
    return r, counting, _block_votes(net, 1)


def _verifies(r, counting, sender, data, now):
    before = counting.verifies
    effects = r.receive(sender, data, now)
    return counting.verifies - before, [e.reason for e in effects if isinstance(e, Dropped)]


def test_prepares_beyond_the_prepared_certificate_are_dropped_unverified():
    """Once 2f prepares for a (view, height, hash) are logged, another prepare for it cannot change
    anything: it is dropped before its signature check, and the prepared proof still carries 2f
    prepares that a view change accepts."""
    net = Net()
    r, counting, votes = _restored_counting(net)
    now = net.now
    assert _verifies(r, counting, 0, votes[(m.PRE_PREPARE, 0)], now)[0] >= 1
    assert _verifies(r, counting, 1, votes[(m.PREPARE, 1)], now) == (1, [])
    assert r.prepared_proof is not None and len(r.prepared_proof[1]) == 2 * net.config.f
    assert _verifies(r, counting, 2, votes[(m.PREPARE, 2)], now) == (0, ["prepared already"])
    # a prepare for another hash is still verified (and logged: sender 2's first logged prepare)
    other = m.encode_message("t", [m.PREPARE, 2, 0, 1, bytes(32)], KEYS[2], CRYPTO)
    assert _verifies(r, counting, 2, other, now) == (1, [])
    r._start_view_change(1)
    judge = net.replicas[1]
    vc = judge._parse_view_change(judge._decode(r.my_view_change))
    assert vc.prepared is not None and vc.prepared.header.height == 1


def test_late_votes_for_a_committed_height_are_dropped_unverified():
    """A prepare or commit for a height already committed is not verified, also when it is the first
    vote seen from its sender at that height."""
    net = Net()
    r, counting, votes = _restored_counting(net)
    now = net.now
    for (kind, sender) in ((m.PRE_PREPARE, 0), (m.PREPARE, 1), (m.COMMIT, 0), (m.COMMIT, 1)):
        r.receive(sender, votes[(kind, sender)], now)
    assert r.height == 1
    assert _verifies(r, counting, 2, votes[(m.PREPARE, 2)], now) == (0, ["stale height"])
    assert _verifies(r, counting, 2, votes[(m.COMMIT, 2)], now) == (0, ["stale height"])
    # a vote that shows its sender above our height is still verified (the replica fetches from it)
    ahead = m.encode_message("t", [m.PREPARE, 2, 0, 3, bytes(32)], KEYS[2], CRYPTO)
    assert _verifies(r, counting, 2, ahead, now)[0] == 1
    assert r.peer_heights[2] == 2


def test_a_forwarded_transaction_checked_in_the_proposal_is_not_checked_again():
    """The pre-prepare came first, so its transaction was checked in full (check_tx) with the proposal;
    the forwarded request that brings it later costs the request's signature check only."""
    net = Net()
    r, counting, votes = _restored_counting(net)
    pp = m.loads(votes[(m.PRE_PREPARE, 0)])
    requests = [e.data for e in net.effects[1] if isinstance(e, Broadcast) and m.loads(e.data)[0] == m.REQUEST
                and m.loads(e.data)[2] == pp[5]]
    assert len(requests) == 1
    assert _verifies(r, counting, 0, votes[(m.PRE_PREPARE, 0)], net.now)[0] == 1 + len(pp[5])
    assert _verifies(r, counting, 1, requests[0], net.now) == (1, [])
    assert list(r.pool) == [hashlib.sha256(tx).digest() for tx in pp[5]]
    # once the block commits, the set is forgotten: at the next height a forwarded tx is prechecked again
    for key in ((m.PREPARE, 1), (m.COMMIT, 0), (m.COMMIT, 1)):
        r.receive(key[1], votes[key], net.now)
    assert r.height == 1 and not r.proposal_checked and not r.pool
