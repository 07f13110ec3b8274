"""Threshold certificates (FROST, t = 2f+1) made by the PBFT replicas for every committed block."""

import random
from collections import deque

import pytest

from ledgerlink.core import frost
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.consensus.kv_app import KVApp, make_tx
from ledgerlink.ledger.consensus.replica import (
    Broadcast, Config, Dropped, Persist, PersistThreshold, Replica, Send,
)
from ledgerlink.ledger.consensus.simulator import CachingCrypto, Simulation, threshold_keys
from ledgerlink.protocol import spv

CRYPTO = CachingCrypto(get_backend("cpython"))
KEYS = [bytes([0x50 + i]) * 32 for i in range(4)]
PUBS = tuple(CRYPTO.public_key(k) for k in KEYS)
CLIENT = bytes([0x78]) * 32
SHARES, VERIFYING, GROUP_KEY = threshold_keys(4)


class Net:
    """4 replicas with FROST shares; FIFO delivery at once; ``tamper`` rewrites a sender's messages."""

    def __init__(self):
        self.config = Config(chain_id="t", validators=PUBS, batch_timeout_ms=10, view_change_timeout_ms=200,
                             retransmit_ms=50, checkpoint_interval=4, group_key=GROUP_KEY,
                             verifying_shares=VERIFYING)
        self.now = 0
        self.replicas = [self.make(i) for i in range(4)]
        self.queue: deque = deque()
        self.down: set[int] = set()
        self.sent: list[tuple[int, int, bytes]] = []
        self.effects: dict[int, list] = {i: [] for i in range(4)}
        self.persisted: dict[int, list] = {i: [] for i in range(4)}
        self.tcerts: dict[int, dict[int, bytes]] = {i: {} for i in range(4)}
        self.tamper = {}
        self.nonce = 0

    def make(self, i, blocks=None, tcerts=()):
        rng = random.Random("net/%d/%s" % (i, blocks is not None)).randbytes
        if blocks is None:
            return Replica(i, self.config, KEYS[i], KVApp(CRYPTO), CRYPTO, self.now, threshold_share=SHARES[i], rng=rng)
        return Replica.restore(i, self.config, KEYS[i], KVApp(CRYPTO), CRYPTO, self.now, blocks,
                               threshold_certs=tcerts, threshold_share=SHARES[i], rng=rng)

    def apply(self, i, effects):
        self.effects[i].extend(effects)
        for e in effects:
            if isinstance(e, (Broadcast, Send)):
                data = self.tamper[i](e.data) if i in self.tamper else e.data
                for j in ([e.to] if isinstance(e, Send) else [j for j in range(4) if j != i]):
                    self.queue.append((i, j, data))
                    self.sent.append((i, j, data))
            elif isinstance(e, Persist):
                self.persisted[i].append((e.block, e.certificate))
            elif isinstance(e, PersistThreshold):
                self.tcerts[i][e.height] = e.certificate

    def submit(self, i):
        self.nonce += 1
        tx = make_tx(CRYPTO, CLIENT, self.nonce.to_bytes(16, "big"), b"k", b"v%d" % self.nonce)
        self.apply(i, self.replicas[i].submit(tx, self.now))

    def deliver(self):
        while self.queue:
            src, dst, data = self.queue.popleft()
            if dst not in self.down and src not in self.down:
                self.apply(dst, self.replicas[dst].receive(src, data, self.now))

    def run(self, ms, step=10):
        for _ in range(ms // step):
            self.now += step
            for i, r in enumerate(self.replicas):
                if i not in self.down:
                    self.apply(i, r.tick(self.now))
            self.deliver()

    def drops(self, i, reason):
        return [e for e in self.effects[i] if isinstance(e, Dropped) and e.reason == reason]


def certified(replica, height):
    block, _ = replica.block(height)
    return [block.header.to_obj(), replica.threshold_certs[height].to_obj()]


def test_every_block_gets_a_threshold_certificate_a_light_client_accepts():
    net = Net()
    for _ in range(3):
        net.submit(1)
        net.run(100)
    heights = {r.height for r in net.replicas}
    assert heights == {2}
    for i, r in enumerate(net.replicas):
        assert sorted(r.threshold_certs) == [0, 1, 2]
        assert sorted(net.tcerts[i]) == [0, 1, 2]             # persisted beside the blocks
        for h in range(3):
            header = spv.verify_certified_header(certified(r, h), "t", PUBS, group_key=GROUP_KEY)
            assert header.height == h
    forged = certified(net.replicas[0], 1)
    forged[1] = [forged[1][0] + 1, forged[1][1]]               # the signature covers the view
    with pytest.raises(Exception):
        spv.verify_certified_header(forged, "t", PUBS, group_key=GROUP_KEY)


def test_a_bad_share_names_its_sender_and_the_certificate_is_made_without_it():
    net = Net()

    def bad_share(data):
        a = m.loads(data)
        if a[0] != m.SIGNATURE_SHARE:
            return data
        return m.encode_message("t", a[:4] + [bytes(31) + b"\x01"] + a[5:6], KEYS[3], CRYPTO)

    net.tamper[3] = bad_share
    net.submit(1)
    net.run(300)
    primary = net.replicas[0]
    assert 0 in primary.threshold_certs
    culprits = {e.sender for e in net.drops(0, "bad threshold share")}
    assert culprits == {3}
    assert all(0 in r.threshold_certs for r in net.replicas)


def test_certificates_continue_with_one_replica_down_and_after_the_primary_fails():
    net = Net()
    net.down.add(2)
    net.submit(1)
    net.run(200)
    assert all(0 in net.replicas[i].threshold_certs for i in (0, 1, 3))
    net.down = {0}                                              # the primary (aggregator) fails
    net.submit(1)
    net.run(2000)
    live = [net.replicas[i] for i in (1, 2, 3)]
    assert min(r.height for r in live) >= 1
    for r in live:
        assert set(range(r.height + 1)) <= set(r.threshold_certs)


def test_a_replica_signs_only_a_committed_header_and_uses_each_nonce_once():
    net = Net()
    net.submit(1)
    net.run(200)
    requests = [(j, d) for s, j, d in net.sent if s == 0 and m.kind_of(d) == m.SIGN_REQUEST]
    assert requests
    j, request = requests[0]
    rj = net.replicas[j]

    def shares():
        return sum(1 for s, _, d in net.sent if s == j and m.kind_of(d) == m.SIGNATURE_SHARE)

    before = shares()
    assert before == 1
    del rj.threshold_certs[0]                                   # so the replay is not answered with the cert
    net.apply(j, rj.receive(0, request, net.now))               # the same request again: its nonces are gone
    assert shares() == before
    assert net.drops(j, "unknown commitment")
    a = m.loads(request)
    other = m.encode_message("t", [m.SIGN_REQUEST, 0, a[2], a[3], bytes(32), a[5]], KEYS[0], CRYPTO)
    net.apply(j, rj.receive(0, other, net.now))                 # a header it did not commit
    assert net.drops(j, "not committed")
    assert shares() == before


def test_restore_takes_the_certificates_back_and_refuses_a_forged_one():
    net = Net()
    for _ in range(2):
        net.submit(1)
        net.run(100)
    blocks = net.persisted[2]
    tcerts = sorted(net.tcerts[2].items())
    back = net.make(2, blocks, tcerts)
    assert sorted(back.threshold_certs) == [0, 1]
    view, sig = m.loads(tcerts[1][1])
    bad = [tcerts[0], (1, m.dumps([view, sig[:-1] + bytes([sig[-1] ^ 1])]))]
    with pytest.raises(ValueError):
        net.make(2, blocks, bad)


def test_simulator_catches_a_share_for_an_uncommitted_header(monkeypatch):
    """The simulator's safety check fails a run in which an honest replica shares for a header it did
    not commit (here: replicas that skip that check, and a primary that asks before committing)."""
    original = Replica._on_sign_request

    def careless(self, msg):
        view, height, hh, commitments = msg.fields
        if height <= self.height:
            return original(self, msg)
        nonces, c = frost.commit(self._threshold_share, self._rng, self.index + 1)
        z = frost.sign(self.index + 1, self._threshold_share, self.config.group_key, nonces,
                       m.commit_sign_bytes("sim", height, view, hh), [c])
        self._out.append(Send(msg.sender, self._sign([m.SIGNATURE_SHARE, self.index, height, hh,
                                                      frost.scalar_bytes(z), c])))

    def eager(self, height, again=False):
        if self.is_primary() and height == self.height + 1:
            c = self._held_nonces(height, self.index)[1]
            self._broadcast([m.SIGN_REQUEST, self.index, self.view, height, bytes(32), [c]])

    monkeypatch.setattr(Replica, "_on_sign_request", careless)
    monkeypatch.setattr(Replica, "_offer_commitment", eager)
    r = Simulation(3, threshold=True).run()
    assert any("not committed" in v for v in r.violations), r.violations


SEEDS_FAST = (0, 21, 23, 27)      # twin, equivocating and badsig replicas, a slow primary


@pytest.mark.parametrize("seed", SEEDS_FAST)
def test_simulated_schedules_certify_every_block(seed):
    r = Simulation(seed, threshold=True).run()
    assert r.ok, r.violations


@pytest.mark.slow
def test_simulated_schedules_certify_every_block_over_many_seeds():
    """Over 60 seeded schedules (crashes, restarts, partitions, loss, Byzantine replicas): no threshold
    certificate verifies for a header that was not committed, and every live honest replica holds one
    for each of its blocks within the bound after convergence."""
    failed = [s for s in range(100, 160) if not Simulation(s, threshold=True).run().ok]
    assert not failed


def test_block_store_keeps_threshold_certificates_across_reopen(tmp_path):
    from ledgerlink.ledger.storage import BlockStore, StoreError

    net = Net()
    for _ in range(2):
        net.submit(1)
        net.run(100)
    path = tmp_path / "blocks.sqlite"
    store = BlockStore(path, "t", bytes(32))
    for h, (block, cert) in enumerate(net.persisted[1]):
        store.append_block(h, block, cert)
    with pytest.raises(StoreError):
        store.save_threshold(5, net.tcerts[1][0])
    for h, cert in net.tcerts[1].items():
        store.save_threshold(h, cert)
    store.close()
    store = BlockStore(path, "t", bytes(32))
    back = net.make(1, list(store.blocks()), list(store.threshold_certs()))
    assert sorted(back.threshold_certs) == [0, 1]
    store.close()


@pytest.mark.parametrize("n", [4, 7])
def test_scale_model_counts_what_threshold_certificates_add(n):
    """Per block: n-1 commitments to the aggregator, t-1 requests, t-1 shares, n-1 certificates."""
    from ledgerlink.ledger.scale import simulate

    row = simulate(n, "lan", 2, threshold=True)
    t = m.quorum(n)
    assert row.per_block(row.threshold_messages) == 2 * (n - 1) + 2 * (t - 1)
    assert len(row.threshold_latencies_ms) == 2 * n and min(row.threshold_latencies_ms) > 0
    assert row.check_frost_ms and row.check_ecdsa_ms


def test_devnet_records_the_group_key_in_the_chain_record():
    from ledgerlink.protocol.ledger_tx import RECORD_CHAIN
    from tests.devnet import DevNet

    net = DevNet(threshold=True)
    shares, verifying, group_key = net.frost_keys
    chain = net.genesis().get_record(RECORD_CHAIN, 0)
    assert chain[6] == group_key and chain[7] == list(verifying)
    assert all(frost.verifying_share(s) == v for s, v in zip(shares, verifying))
    assert 6 not in DevNet().genesis().get_record(RECORD_CHAIN, 0)


def threshold_samples():
    commitment = [2, b"\x02" + bytes(32), b"\x03" + bytes(32)]
    hh = bytes(range(32))
    return [
        [m.NONCE_COMMITMENT, 1, 7, commitment],
        [m.SIGN_REQUEST, 0, 3, 7, hh, [[1, b"\x02" + bytes(32), b"\x02" + bytes(32)], commitment]],
        [m.SIGNATURE_SHARE, 1, 7, hh, bytes(31) + b"\x05", commitment],
        [m.THRESHOLD_CERT, 2, 7, [3, b"\x02" + bytes(64)]],
        [m.BLOCKS, 3, [[m.Header("t", 0, bytes(32), 0, bytes(32), bytes(32), bytes(32)).to_obj(), [],
                        [0, 0, bytes(32), [[0, bytes(64)]]], [3, b"\x02" + bytes(64)]]]],
    ]


@pytest.mark.parametrize("body", threshold_samples(), ids=lambda b: m.KIND_NAMES[b[0]])
def test_threshold_messages_round_trip_and_refuse_damage(body):
    raw = m.encode_message("t", body, KEYS[body[1]], CRYPTO)
    msg = m.decode_message(raw, "t", PUBS, CRYPTO)
    assert (msg.kind, msg.sender) == (body[0], body[1])
    with pytest.raises(m.MessageError) as e:
        m.decode_message(m.encode_message("t", body, KEYS[(body[1] + 1) % 4], CRYPTO), "t", PUBS, CRYPTO)
    assert e.value.reason == "bad signature"
    for cut in range(0, len(raw), max(1, len(raw) // 25)):
        with pytest.raises(m.MessageError):
            m.decode_message(raw[:cut], "t", PUBS, CRYPTO)
    for pos in range(0, len(raw), max(1, len(raw) // 25)):
        with pytest.raises(m.MessageError):
            m.decode_message(raw[:pos] + bytes([raw[pos] ^ 0x10]) + raw[pos + 1:], "t", PUBS, CRYPTO)


def test_threshold_fields_of_the_wrong_shape_are_malformed():
    hh = bytes(32)
    for body in ([m.NONCE_COMMITMENT, 1, 7, [0, b"\x02" + bytes(32), b"\x02" + bytes(32)]],   # index 0
                 [m.NONCE_COMMITMENT, 1, 7, [2, b"\x02" + bytes(31), b"\x02" + bytes(32)]],   # short point
                 [m.SIGN_REQUEST, 0, 3, 7, hh, []],                                           # no commitment
                 [m.SIGNATURE_SHARE, 1, 7, hh, bytes(31), [2, b"\x02" + bytes(32), b"\x02" + bytes(32)]],
                 [m.THRESHOLD_CERT, 2, 7, [3, bytes(64)]]):
        with pytest.raises(m.MessageError) as e:
            m.decode_message(m.encode_message("t", body, KEYS[body[1]], CRYPTO), "t", PUBS, CRYPTO)
        assert e.value.reason == "malformed"


from hypothesis import given, settings, strategies as st  # noqa: E402

_cbor_values = st.recursive(st.none() | st.booleans() | st.integers(-2, 2 ** 64) | st.binary(max_size=70)
                            | st.text(max_size=4), lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_cbor_values)
def test_threshold_decoders_refuse_any_value_with_message_error(value):
    for decode in (m.ThresholdCertificate.from_obj, m.commitment_from_obj):
        try:
            decode(value)
        except m.MessageError:
            pass
