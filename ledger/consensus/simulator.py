"""Deterministic simulator for the PBFT replicas: seeded adversarial schedules with invariant checks.

One process runs n replicas (``Replica`` with ``KVApp``) on a virtual clock. Everything random comes
from ``random.Random(seed)``, so a seed replays exactly. Each seed draws a scenario:

  network  message loss, delay (reordering), duplication and partitions until the heal time; after
           it every message arrives within the delay bound;
  faults   at most f faulty validators, each one of: crash (and recover with its state), crash for
           good, restart from its persisted blocks and vote record (pool and unsaved state lost),
           equivocating primary (different pre-prepares and commits to two halves of the
           validators), invalid signatures and malformed/oversized frames, votes for unknown
           batches, a twin running the same key, a slow primary (holds each pre-prepare
           ``SLOW_HOLD`` of the view-change timeout), a flooder (resource exhaustion, below); in
           30% of the seeds one more, honest, validator restarts from its persisted blocks and
           vote record (durable votes keep it honest);
  clients  signed key-value transactions submitted to random validators, and replays of them; with
           a slow primary also a stream of ``STREAM_TPS`` transactions a second for
           ``STREAM_MS`` after the heal.

Costs. With a flooder the simulation charges CPU time (``Costs``): every delivered message its
decode (per KB) and, if the replica gets as far, a signature verification; every executed
transaction; every block answer its encoding and signature. A node works through its messages one
at a time, so what a flooder makes it spend delays everything else it does. The flooder sends each
peer, per tick, fetch-blocks 0..10^6 and prepares/commits with random hashes just above its own
view and height at ``FLOOD_PER_S`` (200) a second each, and two max-size non-canonical CBOR frames a
second, from ``FLOOD_BEFORE_MS`` before the heal to ``FLOOD_AFTER_MS`` after it.

Invariants checked on every run:
  safety    no two non-Byzantine replicas commit different blocks (cbor [header, txs]) at one
            height; every commit certificate verifies; no transaction is committed twice; no
            non-Byzantine replica holds an equivocation proof against a non-Byzantine validator;
  liveness  transactions submitted after the heal are committed by every non-Byzantine replica that
            is up, within ``LIVENESS_BOUND_MS`` of virtual time; then, with no new transactions, those
            replicas reach one height within ``CONVERGE_BOUND_MS``;
  slow      after the heal, no live honest replica spends more than ``SLOW_BOUND_MS`` with work
            waiting in a view whose primary is slow (backups demand a view change).

With ``--threshold`` (``Simulation(threshold=True)``) the validators hold FROST shares from an in-process
DKG (``THRESHOLD_BOUND_MS`` after convergence the run ends) and three more checks run:
  threshold safety    an honest replica's signature share is for the header committed at its height,
                      and no threshold certificate on the wire verifies for any other header proposed
                      at its height (junk and equivocating replicas send shares that do not verify);
  threshold validity  every certificate an honest replica holds verifies for its block;
  threshold liveness  with 2f+1 honest replicas up, each of them holds a certificate for every block
                      of its chain within ``THRESHOLD_BOUND_MS`` after convergence.

``python -m ledgerlink.ledger.consensus.simulator --seed N`` prints the trace of one schedule;
``--seeds A:B`` runs seeds A..B-1 and prints a summary with the failing seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ledgerlink.core import frost
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.attacks import noncanonical_frame
from ledgerlink.ledger.cluster import dkg_in_process
from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.consensus.kv_app import KVApp, make_tx
from ledgerlink.ledger.consensus.replica import (
    Broadcast, Committed, Config, Dropped, Persist, PersistThreshold, Replica, SaveVotes, Send,
)

LIVENESS_BOUND_MS = 20000
CONVERGE_BOUND_MS = 5000        # after the liveness commits, every live honest replica reaches one height
TICK_MS = 25
FAULT_KINDS = ("crash", "crash_forever", "restart", "equivocate", "badsig", "junk", "twin", "slow", "flood")
BYZANTINE = ("equivocate", "badsig", "junk", "twin", "slow", "flood")
_FIRST_KINDS = FAULT_KINDS[:7]       # drawn from the seed's stream; the later ones from a second one
LATER_KIND_SHARE = 0.5
SLOW_HOLD = 0.6                      # a slow primary holds each proposal 0.6 of the view-change timeout
SLOW_BOUND_MS = 2500
STREAM_TPS = 25
STREAM_MS = 3000
FLOOD_PER_S = 200                    # fetches, and votes, a flooder sends each peer a second (the rogue process: 1,000)
JUNK_PER_S = 2
FLOOD_BEFORE_MS = 500                # a flooder floods from this long before the heal
FLOOD_AFTER_MS = 1000               # to this long after it (while the liveness transactions commit)
THRESHOLD_BOUND_MS = 5000           # with threshold certificates: after convergence, every block has one by then


@dataclass(frozen=True)
class Costs:
    """CPU time (ms) a node spends, when costs are modelled."""

    message: float = 0.01            # per delivered message
    decode_per_kb: float = 0.1
    verify: float = 0.2              # a signature check (one decode of a signed message)
    execute_per_tx: float = 0.05
    answer: float = 0.2              # signing a block answer
    answer_per_kb: float = 0.2       # encoding it


class _CountingKV(KVApp):
    """``KVApp`` that counts the transactions it executes (for the cost model)."""

    executed = 0

    def execute(self, height: int, time_ms: int, txs: Any) -> bytes:
        self.executed += len(txs)
        return super().execute(height, time_ms, txs)


def partitioned(partitions: Any, now: int, a: int, b: int) -> bool:
    """Whether a partition ``(start, end, group)`` in force at ``now`` separates ``a`` from ``b``."""
    for start, end, group in partitions:
        if start <= now < end and ((a in group) != (b in group)):
            return True
    return False


class CachingCrypto:
    """A backend wrapper that remembers signatures and verification results across replicas.

    Signing is deterministic (RFC 6979), so both caches are exact.
    """

    _verify: dict[tuple[bytes, bytes, bytes], bool] = {}
    _sign: dict[tuple[bytes, bytes], bytes] = {}

    def __init__(self, backend: Any):
        self.backend = backend

    def sign(self, priv: bytes, msg: bytes) -> bytes:
        k = (priv, msg)
        s = self._sign.get(k)
        if s is None:
            if len(self._sign) > 200000:
                self._sign.clear()
            s = self._sign[k] = self.backend.sign(priv, msg)
        return s

    def verify(self, pub: bytes, msg: bytes, sig: bytes) -> bool:
        k = (pub, msg, sig)
        r = self._verify.get(k)
        if r is None:
            if len(self._verify) > 400000:
                self._verify.clear()
            r = self._verify[k] = self.backend.verify(pub, msg, sig)
        return r

    def sha256(self, data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    def public_key(self, priv: bytes, compressed: bool = False) -> bytes:
        return self.backend.public_key(priv, compressed)


_KEYS: dict[int, list[bytes]] = {}
_GROUPS: dict[int, tuple[list[int], tuple[bytes, ...], bytes]] = {}


def threshold_keys(n: int) -> tuple[list[int], tuple[bytes, ...], bytes]:
    """Fixed FROST keys of n validators, t = 2f+1: (signing shares by validator index, verifying
    shares, group key), from the dealerless DKG run among n participants in one process (seeded)."""
    if n not in _GROUPS:
        shares, verifying, group_key = dkg_in_process(n, m.quorum(n), random.Random(2000 + n).randbytes, b"sim")
        _GROUPS[n] = (shares, verifying, group_key)
    return _GROUPS[n]


def validator_keys(backend: Any, n: int) -> list[bytes]:
    """Fixed validator keys for n validators (derived from a constant seed)."""
    if n not in _KEYS:
        rnd = random.Random(1000 + n)
        _KEYS[n] = [backend.generate_private_key(rnd.randbytes) for _ in range(n)]
    return _KEYS[n]


@dataclass
class Scenario:
    n: int
    faults: dict[int, str]
    drop: float
    dup: float
    delay: tuple[int, int]
    partitions: list[tuple[int, int, frozenset[int]]]
    down: dict[int, tuple[int, int | None]]
    heal_ms: int
    txs: list[tuple[int, int]]
    replays: list[int]

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    def describe(self) -> str:
        return ("n=%d faults=%s drop=%.2f dup=%.2f delay=%s partitions=%s down=%s heal=%d txs=%d"
                % (self.n, self.faults, self.drop, self.dup, self.delay,
                   [(a, b, sorted(g)) for a, b, g in self.partitions], self.down, self.heal_ms,
                   len(self.txs)))


def draw_scenario(rnd: random.Random, kinds: tuple[str, ...] = FAULT_KINDS) -> Scenario:
    later = ()
    if kinds == FAULT_KINDS:
        # the seed's own stream draws what it drew before the later kinds existed, so a seed keeps
        # its schedule unless a second stream derived from it turns a Byzantine fault into a later kind
        later = kinds[len(_FIRST_KINDS):]
        kinds = _FIRST_KINDS
        aux = random.Random(hash(rnd.getstate()[1][:16]))
    n = 7 if rnd.random() < 0.15 else 4
    f = (n - 1) // 3
    count = rnd.choice([0] + [f] * 3 + list(range(1, f + 1)))
    idx = list(range(n))
    rnd.shuffle(idx)
    if count and rnd.random() < 0.5 and 0 not in idx[:count]:
        idx.remove(0)
        idx.insert(0, 0)
    faults = {i: rnd.choice(kinds) for i in idx[:count]}
    if later:
        for i in list(faults):                   # Byzantine kinds only: they draw nothing more from rnd
            if faults[i] in BYZANTINE and aux.random() < LATER_KIND_SHARE:
                kind = aux.choice(later)
                if kind == "slow" and 0 not in faults:   # the primary of view 0
                    del faults[i]
                    i = 0
                faults[i] = kind
    if "restart" in kinds and count < n and rnd.random() < 0.3:
        faults[idx[count]] = "restart"           # honest: restarts from its blocks and vote record
    heal = rnd.randint(500, 2500)
    down: dict[int, tuple[int, int | None]] = {}
    for i, kind in faults.items():
        if kind in ("crash", "crash_forever", "restart"):
            start = rnd.randint(0, heal - 100)
            end = None if kind == "crash_forever" else rnd.randint(start + 50, heal)
            down[i] = (start, end)
    partitions = []
    for _ in range(rnd.choice([0, 0, 1, 2])):
        a = rnd.randint(0, heal - 50)
        b = rnd.randint(a + 10, heal)
        group = frozenset(rnd.sample(range(n), rnd.randint(1, n // 2)))
        partitions.append((a, b, group))
    drop = rnd.choice([0.0, 0.0, 0.05, 0.2])
    dup = rnd.choice([0.0, 0.05])
    dmin = rnd.randint(1, 5)
    delay = (dmin, rnd.randint(dmin, 40))
    txs = sorted((rnd.randint(0, heal), rnd.randrange(n)) for _ in range(rnd.randint(2, 8)))
    replays = sorted(rnd.randint(0, heal + 2000) for _ in range(rnd.randint(0, 3)))
    return Scenario(n, faults, drop, dup, delay, partitions, down, heal, txs, replays)


@dataclass
class Node:
    index: int
    kind: str
    replicas: list[Replica]
    up: bool = True
    persisted: list[tuple[bytes, bytes]] = field(default_factory=list)
    votes: bytes | None = None
    variants: dict[bytes, bytes] = field(default_factory=dict)
    cpu_free: float = 0.0            # with costs: virtual time its CPU is free again
    slow_ms: int = 0                 # time spent with work under a slow primary after the heal
    threshold_certs: dict[int, bytes] = field(default_factory=dict)   # persisted threshold certificates
    incarnations: int = 0            # replicas made for it (each draws its own nonce randomness)


@dataclass
class Result:
    seed: int
    scenario: Scenario
    violations: list[str]
    heights: list[int]
    messages: int
    drops: Counter
    end_ms: int
    trace: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


class Simulation:
    """One seeded schedule; ``run()`` returns a ``Result``."""

    def __init__(self, seed: int, trace: bool = False, scenario: Scenario | None = None,
                 config_overrides: dict[str, Any] | None = None, costs: Costs | None = None,
                 stream: tuple[int, int] | None = None, threshold: bool = False):
        """``costs`` (default: modelled when a flooder runs) charges CPU time; ``stream`` = (tx/s,
        ms) offers transactions after the heal (default: ``STREAM_TPS`` for ``STREAM_MS`` with a
        slow primary); ``threshold`` gives the validators FROST shares, so blocks get threshold
        certificates (checked as the module docstring says)."""
        self.seed = seed
        self.rnd = random.Random(seed)
        self.sc = scenario or draw_scenario(self.rnd)
        self.backend = get_backend("cpython")
        self.crypto = CachingCrypto(self.backend)
        self.keys = validator_keys(self.backend, self.sc.n)
        pubs = tuple(self.crypto.public_key(k) for k in self.keys)
        params = dict(chain_id="sim", validators=pubs, max_batch=8, batch_timeout_ms=10,
                      view_change_timeout_ms=300, max_backoff_exp=3, retransmit_ms=100,
                      checkpoint_interval=4, max_message_size=1 << 18, max_blocks_per_reply=8,
                      slow_primary_grace_ms=20)
        self.threshold = threshold
        self.shares: list[int] = []
        if threshold:
            self.shares, verifying, group_key = threshold_keys(self.sc.n)
            params.update(group_key=group_key, verifying_shares=verifying)
        params.update(config_overrides or {})
        self.config = Config(**params)
        self.proposed: dict[int, set[bytes]] = {}      # height -> header hashes proposed (threshold checks)
        self.cert_messages: list[tuple[int, int, bytes]] = []   # (sender, height, threshold-cert message)
        self.share_rnd = random.Random("shares/%d" % seed)
        self.client = random.Random(7).randbytes(31) + b"\x01"
        self.tracing = trace
        self.trace: list[str] = []
        self.queue: list[tuple[int, int, int, Any]] = []
        self.seq = 0
        self.now = 0
        self.messages = 0
        self.drops: Counter = Counter()
        self.violations: list[str] = []
        self.global_blocks: dict[int, bytes] = {}
        self.nonce = 0
        self.submitted: list[bytes] = []
        self.liveness_txs: set[bytes] = set()
        self._decoded: dict[bytes, m.Message | str] = {}
        kinds = set(self.sc.faults.values())
        self.costs = costs if costs is not None else (Costs() if "flood" in kinds else None)
        self.stream = stream if stream is not None else ((STREAM_TPS, STREAM_MS) if "slow" in kinds else None)
        self.stream_end = self.sc.heal_ms + self.stream[1] if self.stream else 0
        self.decodes = 0
        self.junk = noncanonical_frame(self.config.max_message_size)
        self.flood_hashes = [random.Random(seed).randbytes(32) for _ in range(4)]
        self.nodes = []
        for i in range(self.sc.n):
            kind = self.sc.faults.get(i, "honest")
            count = 2 if kind == "twin" else 1
            self.nodes.append(Node(i, kind, []))
            self.nodes[i].replicas = [self._new_replica(i) for _ in range(count)]

    # --- setup ------------------------------------------------------------------------------------

    def _new_replica(self, i: int, persisted: list[tuple[bytes, bytes]] | None = None,
                     votes: bytes | None = None) -> Replica:
        app = _CountingKV(self.crypto)
        share = rng = None
        if self.threshold:
            node = self.nodes[i]
            node.incarnations += 1             # a restarted replica never draws its old nonces again
            share, rng = self.shares[i], random.Random("nonces/%d/%d/%d" % (self.seed, i, node.incarnations)).randbytes
        if persisted is None:
            return Replica(i, self.config, self.keys[i], app, self.crypto, self.now, self._decode,
                           threshold_share=share, rng=rng)
        return Replica.restore(i, self.config, self.keys[i], app, self.crypto, self.now, persisted,
                               self._decode, votes, sorted(self.nodes[i].threshold_certs.items()),
                               threshold_share=share, rng=rng)

    def _decode(self, data: bytes) -> m.Message:
        """decode_message memoized by the wire bytes (decoding is a function of them)."""
        self.decodes += 1
        r = self._decoded.get(data)
        if r is None:
            try:
                r = m.decode_message(data, self.config.chain_id, self.config.validators, self.crypto,
                                     self.config.limits)
            except m.MessageError as exc:
                r = exc.reason
            self._decoded[data] = r
        if isinstance(r, str):
            raise m.MessageError(r)
        return r

    def _log(self, text: str) -> None:
        if self.tracing:
            self.trace.append("%7d %s" % (self.now, text))

    def _push(self, t: int, kind: int, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, data))

    def _new_tx(self) -> bytes:
        self.nonce += 1
        tx = make_tx(self.crypto, self.client, self.nonce.to_bytes(16, "big"),
                     b"k%d" % self.rnd.randrange(6), b"v%d" % self.nonce)
        self.submitted.append(tx)
        return tx

    def honest(self, i: int) -> bool:
        return self.nodes[i].kind not in BYZANTINE

    # --- network ----------------------------------------------------------------------------------

    def _partitioned(self, a: int, b: int) -> bool:
        return partitioned(self.sc.partitions, self.now, a, b)

    def _send(self, src: int, dst: int, data: bytes) -> None:
        if dst == src:
            return
        if self.threshold:
            self._watch_threshold(src, data)
        self.messages += 1
        if self.now < self.sc.heal_ms:
            if self._partitioned(src, dst) or self.rnd.random() < self.sc.drop:
                return
        lo, hi = self.sc.delay
        self._push(self.now + self.rnd.randint(lo, hi), DELIVER, (src, dst, data))
        if self.now < self.sc.heal_ms and self.rnd.random() < self.sc.dup:
            self._push(self.now + self.rnd.randint(lo, hi), DELIVER, (src, dst, data))

    def _out(self, node: Node, dsts: list[int], data: bytes) -> None:
        """Outgoing message of ``node``; Byzantine kinds rewrite it here."""
        kind = node.kind
        if kind in ("junk", "equivocate") and m.kind_of(data) == m.SIGNATURE_SHARE:
            a = m.loads(data)                               # a share that does not verify
            data = self._resign(node, a[:4] + [self.share_rnd.randbytes(32)] + a[5:6])
        if kind == "badsig":
            for d in dsts:
                self._send(node.index, d, self._corrupt(data))
            return
        if kind == "equivocate":
            self._equivocate(node, dsts, data)
            return
        if kind == "slow" and m.kind_of(data) == m.PRE_PREPARE:
            hold = int(SLOW_HOLD * self.config.view_change_timeout_ms)
            self._push(self.now + hold, SEND_LATER, (node.index, dsts, data))
            return
        for d in dsts:
            self._send(node.index, d, data)
        if kind == "junk" and self.rnd.random() < 0.5:
            self._junk(node, dsts, data)

    def _corrupt(self, data: bytes) -> bytes:
        r = self.rnd.random()
        if r < 0.4:
            return data
        if r < 0.75:
            pos = len(data) - 1 - self.rnd.randrange(64)
            return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:]
        if r < 0.85:
            return self.rnd.randbytes(self.rnd.randint(0, 80))
        if r < 0.95:
            return data[: self.rnd.randrange(len(data))]
        return bytes(self.config.max_message_size + 1)

    def _resign(self, node: Node, body: list) -> bytes:
        return m.encode_message(self.config.chain_id, body, self.keys[node.index], self.crypto)

    def _equivocate(self, node: Node, dsts: list[int], data: bytes) -> None:
        a = m.loads(data)
        kind = a[0]
        others = sorted(dsts)
        self.rnd.shuffle(others)
        half = set(others[: len(others) // 2])
        alt = None
        if kind == m.PRE_PREPARE:
            header = list(a[4])
            orig = hashlib.sha256(m.dumps(header)).digest()
            header[3] += 1
            node.variants[orig] = hashlib.sha256(m.dumps(header)).digest()
            alt = self._resign(node, [a[0], a[1], a[2], a[3], header, a[5]])
        elif kind in (m.PREPARE, m.COMMIT) and a[4] in node.variants:
            alt = self._resign(node, [a[0], a[1], a[2], a[3], node.variants[a[4]]])
        for d in dsts:
            self._send(node.index, d, alt if alt is not None and d in half else data)

    def _junk(self, node: Node, dsts: list[int], data: bytes) -> None:
        a = m.loads(data)
        if a[0] not in (m.PRE_PREPARE, m.PREPARE, m.COMMIT):
            return
        view, height = a[2], a[3]
        kind = self.rnd.choice([m.PREPARE, m.COMMIT])
        body = [kind, node.index, view + self.rnd.randint(0, 1), height + self.rnd.randint(0, 1),
                self.rnd.randbytes(32)]
        junk = self._resign(node, body)
        for d in dsts:
            self._send(node.index, d, junk)

    def _flood(self, node: Node) -> None:
        """One tick of a flooder (see the module docstring)."""
        rep = node.replicas[0]
        per_tick = FLOOD_PER_S * TICK_MS // 1000
        fetch = self._resign(node, [m.FETCH_BLOCKS, node.index, 0, 10 ** 6])
        votes = []
        for _ in range(per_tick):
            kind = self.rnd.choice((m.PREPARE, m.COMMIT))
            votes.append(self._resign(node, [kind, node.index, rep.view + self.rnd.randint(0, 2),
                                             rep.height + 1 + self.rnd.randint(0, self.config.lookahead),
                                             self.rnd.choice(self.flood_hashes)]))
        junk = self.now % (1000 // JUNK_PER_S) < TICK_MS
        for d in range(self.sc.n):
            if d == node.index:
                continue
            for raw in [fetch] * per_tick + votes + ([self.junk] if junk else []):
                self._send(node.index, d, raw)

    def _costed(self, node: Node, size: int, call: Any) -> None:
        """Run ``call(replica)`` on ``node`` and charge its CPU for it (costs modelled): a message of
        ``size`` bytes (0 for timers and client submissions), the signature checks and the
        executed transactions; its effects leave when that work is done."""
        c = self.costs
        rep = node.replicas[0]
        self.decodes = 0
        executed = rep.app.executed
        start = max(node.cpu_free, self.now)
        effects = call(rep)
        cost = self.decodes * c.verify + (rep.app.executed - executed) * c.execute_per_tx
        if size:
            cost += c.message + size / 1024 * c.decode_per_kb
        node.cpu_free = start + cost
        now, self.now = self.now, max(self.now, math.ceil(node.cpu_free))
        self._effects(node, rep, effects)
        self.now = now

    # --- effects ----------------------------------------------------------------------------------

    def _effects(self, node: Node, rep: Replica, effects: list) -> None:
        others = [j for j in range(self.sc.n) if j != node.index]
        for e in effects:
            if isinstance(e, Broadcast):
                if self.tracing:
                    self._log("%d broadcast %s" % (node.index, _describe(e.data)))
                self._out(node, others, e.data)
            elif isinstance(e, Send):
                if self.tracing:
                    self._log("%d -> %d %s" % (node.index, e.to, _describe(e.data)))
                if self.costs is not None and m.kind_of(e.data) == m.BLOCKS:
                    node.cpu_free = max(node.cpu_free, self.now) + self.costs.answer \
                        + len(e.data) / 1024 * self.costs.answer_per_kb
                self._out(node, [e.to], e.data)
            elif isinstance(e, Persist):
                if rep is node.replicas[0]:
                    node.persisted.append((e.block, e.certificate))
            elif isinstance(e, SaveVotes):
                if rep is node.replicas[0]:
                    node.votes = e.record
            elif isinstance(e, PersistThreshold):
                if rep is node.replicas[0]:
                    node.threshold_certs[e.height] = e.certificate
            elif isinstance(e, Committed):
                self._on_committed(node, rep, e)
            elif isinstance(e, Dropped):
                self.drops[e.reason] += 1
                if self.tracing:
                    self._log("%d dropped from %s: %s" % (node.index, e.sender, e.reason))

    def _on_committed(self, node: Node, rep: Replica, e: Committed) -> None:
        block = m.Block(e.header, e.txs).encode()
        self._log("%d COMMIT height %d view %d txs %d hash %s" % (
            node.index, e.height, e.certificate.view, len(e.txs), e.certificate.header_hash.hex()[:12]))
        if not self.honest(node.index):
            return
        try:
            m.verify_certificate(e.certificate, e.header, self.config.chain_id,
                                 self.config.validators, self.crypto)
        except m.MessageError as exc:
            self.violations.append("replica %d: invalid certificate at %d: %s"
                                   % (node.index, e.height, exc.reason))
        prev = self.global_blocks.setdefault(e.height, block)
        if prev != block:
            self.violations.append("SAFETY: replica %d committed a different block at height %d"
                                   % (node.index, e.height))

    # --- run --------------------------------------------------------------------------------------

    def run(self, max_ms: int | None = None) -> Result:
        sc = self.sc
        self._log("scenario " + sc.describe())
        for i in range(sc.n):
            self._push(self.rnd.randint(0, TICK_MS), TICK, i)
        for t, i in sc.txs:
            self._push(t, SUBMIT, (i, None))
        for t in sc.replays:
            self._push(t, REPLAY, None)
        for i, (start, end) in sc.down.items():
            self._push(start, CRASH, i)
            if end is not None:
                self._push(end, RECOVER, i)
        self._push(sc.heal_ms, HEAL, None)
        if self.stream:
            self._push(sc.heal_ms, STREAM, None)
        deadline = sc.heal_ms + LIVENESS_BOUND_MS if max_ms is None else max_ms
        done_at = None
        while self.queue:
            t, _, kind, data = heapq.heappop(self.queue)
            if t > deadline:
                break
            self._step(t, kind, data)
            if t >= sc.heal_ms and self.liveness_txs and t >= self.stream_end:
                if done_at is None and self._live_done():
                    done_at = t
                if done_at is not None:
                    heights = {rep.height for rep in self._live_replicas()}
                    if len(heights) == 1:
                        break
                    if t > done_at + CONVERGE_BOUND_MS:
                        self.violations.append("LIVENESS: live honest replicas at heights %s %d ms after the "
                                               "last liveness commit" % (sorted(heights), CONVERGE_BOUND_MS))
                        break
        if self.threshold and not self.violations:
            self._drain_threshold()
        for node in self.nodes:
            if node.slow_ms > SLOW_BOUND_MS:
                self.violations.append("SLOW PRIMARY: replica %d spent %d ms with work under a slow primary "
                                       "after the heal" % (node.index, node.slow_ms))
        if done_at is None and max_ms is None:
            if not self._live_done():
                self.violations.append("LIVENESS: transactions submitted at the heal (%d ms) not "
                                       "committed by all live honest replicas within %d ms"
                                       % (sc.heal_ms, LIVENESS_BOUND_MS))
        self._final_checks()
        heights = [n.replicas[0].height for n in self.nodes]
        self._log("end heights %s violations %d" % (heights, len(self.violations)))
        return Result(self.seed, sc, self.violations, heights, self.messages, self.drops, self.now,
                      self.trace)

    def _step(self, t: int, kind: int, data: Any) -> None:
        """Carry out one scheduled event at virtual time ``t``."""
        sc = self.sc
        self.now = t
        if kind == DELIVER:
            src, dst, raw = data
            node = self.nodes[dst]
            if not node.up:
                return
            if self.costs is not None and self.honest(dst):
                if node.cpu_free > t:                   # busy: the message waits its turn
                    self._push(math.ceil(node.cpu_free), DELIVER, data)
                    return
                self._costed(node, len(raw), lambda r: r.receive(src, raw, t))
                return
            for rep in node.replicas:
                self._effects(node, rep, rep.receive(src, raw, t))
        elif kind == SEND_LATER:
            src, dsts, raw = data
            if self.nodes[src].up:
                for d in dsts:
                    self._send(src, d, raw)
        elif kind == TICK:
            node = self.nodes[data]
            if node.up and self.costs is not None and self.honest(data):
                self._costed(node, 0, lambda r: r.tick(t))
            elif node.up:
                for rep in node.replicas:
                    self._effects(node, rep, rep.tick(t))
            if node.up:
                if node.kind == "flood" and sc.heal_ms - FLOOD_BEFORE_MS <= t < sc.heal_ms + FLOOD_AFTER_MS:
                    self._flood(node)
                elif t >= sc.heal_ms and self.honest(data):
                    self._watch_slow(node)
            self._push(t + TICK_MS, TICK, data)
        elif kind == STREAM:
            if t < self.stream_end:
                live = [i for i in range(sc.n) if self.nodes[i].up and self.honest(i)]
                if live:
                    self._push(t, SUBMIT, (self.rnd.choice(live), None))
                self._push(t + max(1, 1000 // self.stream[0]), STREAM, None)
        elif kind == SUBMIT:
            i, tx = data
            node = self.nodes[i]
            tx = tx or self._new_tx()
            if node.up:
                self._log("client submits %s to %d" % (hashlib.sha256(tx).hexdigest()[:8], i))
                if self.costs is not None and self.honest(i):
                    self._costed(node, 0, lambda r: r.submit(tx, t))
                else:
                    for rep in node.replicas:
                        self._effects(node, rep, rep.submit(tx, t))
        elif kind == REPLAY:
            if self.submitted:
                tx = self.rnd.choice(self.submitted)
                self._push(t, SUBMIT, (self.rnd.randrange(sc.n), tx))
        elif kind == CRASH:
            self.nodes[data].up = False
            self._log("%d crashes" % data)
        elif kind == RECOVER:
            node = self.nodes[data]
            node.up = True
            if node.kind == "restart":
                node.replicas = [self._new_replica(data, list(node.persisted), node.votes)]
                self._log("%d restarts from %d persisted blocks and its vote record"
                          % (data, len(node.persisted)))
            else:
                self._log("%d recovers" % data)
        elif kind == HEAL:
            self._log("network heals")
            for i in range(sc.n):
                if self.nodes[i].up and self.honest(i):
                    tx = self._new_tx()
                    self.liveness_txs.add(hashlib.sha256(tx).digest())
                    self._push(t + 1 + i, SUBMIT, (i, tx))

    # --- threshold certificates ---------------------------------------------------------------------

    def _watch_threshold(self, src: int, data: bytes) -> None:
        """Note proposals and threshold certificates on the wire; an honest replica's share must be for
        the header committed at its height."""
        kind = m.kind_of(data)
        if kind not in (m.PRE_PREPARE, m.SIGNATURE_SHARE, m.THRESHOLD_CERT):
            return
        try:
            a = m.loads(data)
            if kind == m.PRE_PREPARE:
                self.proposed.setdefault(a[3], set()).add(hashlib.sha256(m.dumps(a[4])).digest())
            elif kind == m.THRESHOLD_CERT:
                self.cert_messages.append((src, a[2], m.dumps(a[3])))
            elif self.honest(src):
                block = self.global_blocks.get(a[2])
                if block is None or m.Block.decode(block).header.hash() != a[3]:
                    self.violations.append("SAFETY: replica %d made a threshold share for a header not "
                                           "committed at %d" % (src, a[2]))
        except (m.MessageError, IndexError, TypeError):
            return                               # a Byzantine node's junk

    def _threshold_done(self) -> bool:
        return all(not rep._pending_threshold() for rep in self._live_replicas())

    def _drain_threshold(self) -> None:
        """Run on (no new transactions) until every live honest replica holds a threshold certificate
        for each of its blocks, for up to ``THRESHOLD_BOUND_MS``."""
        end = self.now + THRESHOLD_BOUND_MS
        while self.queue and not self._threshold_done():
            t, _, kind, data = heapq.heappop(self.queue)
            if t > end:
                break
            self._step(t, kind, data)

    def _threshold_checks(self) -> None:
        """No threshold certificate verifies for a header other than the committed one at its height;
        every honest replica's certificates verify; with 2f+1 honest replicas up, each of them holds one
        for every block of its chain."""
        cfg = self.config
        committed = {h: m.Block.decode(b).header.hash() for h, b in self.global_blocks.items()}
        for src, h, raw in set(self.cert_messages):
            try:
                tcert = m.ThresholdCertificate.decode(raw)
            except m.MessageError:
                continue
            for hh in self.proposed.get(h, set()) | {committed.get(h, m.ZERO_HASH)}:
                if hh != committed.get(h) and frost.verify(
                        cfg.group_key, m.commit_sign_bytes(cfg.chain_id, h, tcert.view, hh), tcert.signature):
                    self.violations.append("SAFETY: a threshold certificate (sent by %d) for a header not "
                                           "committed at %d" % (src, h))
        for node in self.nodes:
            if not self.honest(node.index):
                continue
            rep = node.replicas[0]
            for h, tcert in rep.threshold_certs.items():
                if not frost.verify(cfg.group_key, m.commit_sign_bytes(cfg.chain_id, h, tcert.view,
                                                                       rep.block(h)[1].header_hash),
                                    tcert.signature):
                    self.violations.append("replica %d: invalid threshold certificate at %d" % (node.index, h))
        live = self._live_replicas()
        if len(live) < cfg.quorum:
            return
        for rep in live:
            missing = rep._pending_threshold()
            if missing:
                self.violations.append("THRESHOLD LIVENESS: replica %d has no threshold certificate at heights "
                                       "%s %d ms after convergence" % (rep.index, missing, THRESHOLD_BOUND_MS))

    def _watch_slow(self, node: Node) -> None:
        rep = node.replicas[0]
        primary = self.nodes[self.config.primary(rep.view)]
        if primary.kind == "slow" and primary.up and not rep.in_view_change and rep._has_work():
            node.slow_ms += TICK_MS

    def _live_replicas(self) -> list[Replica]:
        return [n.replicas[0] for n in self.nodes if n.up and self.honest(n.index)]

    def _live_done(self) -> bool:
        for rep in self._live_replicas():
            if not self.liveness_txs <= rep.committed_txs:
                return False
        return True

    def _final_checks(self) -> None:
        if self.threshold:
            self._threshold_checks()
        for node in self.nodes:
            if not self.honest(node.index):
                continue
            rep = node.replicas[0]
            for culprit in rep.convicted:
                if self.honest(culprit):
                    self.violations.append("SAFETY: replica %d holds an equivocation proof against honest "
                                           "validator %d" % (node.index, culprit))
            seen: set[bytes] = set()
            prev = m.ZERO_HASH
            for h in range(rep.height + 1):
                block, cert = rep.block(h)
                if block.header.prev_hash != prev or block.header.height != h:
                    self.violations.append("replica %d: broken chain at %d" % (node.index, h))
                prev = cert.header_hash
                if self.global_blocks.get(h) not in (None, block.encode()):
                    self.violations.append("SAFETY: replica %d holds a different block at %d"
                                           % (node.index, h))
                for tx in block.txs:
                    th = hashlib.sha256(tx).digest()
                    if th in seen:
                        self.violations.append("replica %d: transaction committed twice" % node.index)
                    seen.add(th)
            if node.kind == "restart" or not node.persisted:
                continue
            if len(node.persisted) != rep.height + 1:
                self.violations.append("replica %d: %d blocks persisted, height %d"
                                       % (node.index, len(node.persisted), rep.height))


DELIVER, TICK, SUBMIT, REPLAY, CRASH, RECOVER, HEAL, SEND_LATER, STREAM = range(9)


def _describe(data: bytes) -> str:
    try:
        a = m.loads(data)
        name = m.KIND_NAMES.get(a[0], "?")
        if a[0] in (m.PREPARE, m.COMMIT):
            return "%s v%d h%d %s" % (name, a[2], a[3], a[4].hex()[:12])
        if a[0] == m.PRE_PREPARE:
            return "%s v%d h%d %s txs %d" % (name, a[2], a[3],
                                            hashlib.sha256(m.dumps(a[4])).hexdigest()[:12], len(a[5]))
        if a[0] in (m.VIEW_CHANGE, m.NEW_VIEW):
            return "%s v%d" % (name, a[2])
        if a[0] in (m.CHECKPOINT, m.FETCH_BLOCKS):
            return "%s %s" % (name, a[2:-1])
        if a[0] == m.BLOCKS:
            return "%s x%d" % (name, len(a[2]))
        return name
    except Exception:
        return "(undecodable %d bytes)" % len(data)


def run_seed(seed: int, trace: bool = False, threshold: bool = False) -> Result:
    return Simulation(seed, trace=trace, threshold=threshold).run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ledgerlink.ledger.consensus.simulator",
                                 description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--seed", type=int, help="run one seed and print its trace")
    g.add_argument("--seeds", help="A:B runs seeds A..B-1 and prints a summary")
    ap.add_argument("--threshold", action="store_true",
                    help="validators hold FROST shares: check the threshold certificates of every block too")
    args = ap.parse_args(argv)
    if args.seed is not None:
        r = run_seed(args.seed, trace=True, threshold=args.threshold)
        print("\n".join(r.trace))
        for v in r.violations:
            print("VIOLATION", v)
        print("seed %d: %s, heights %s, %d messages, %d ms" % (
            r.seed, "ok" if r.ok else "FAILED", r.heights, r.messages, r.end_ms))
        return 0 if r.ok else 1
    a, _, b = args.seeds.partition(":")
    lo, hi = int(a), int(b)
    failed = []
    kinds: Counter = Counter()
    total_height = 0
    for seed in range(lo, hi):
        r = run_seed(seed, threshold=args.threshold)
        for k in r.scenario.faults.values():
            kinds[k] += 1
        total_height += max(r.heights) + 1
        if not r.ok:
            failed.append(seed)
            print("seed %d FAILED: %s" % (seed, "; ".join(r.violations)), flush=True)
    print("%d seeds, %d failed, %d blocks committed; faults exercised: %s"
          % (hi - lo, len(failed), total_height, dict(sorted(kinds.items()))))
    if failed:
        print("failing seeds:", " ".join(map(str, failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
