"""Seeded simulation of validator set changes: replicas running the ledger state switch sets at H.

Each seed draws n (4 or 7 validators) and a change: ``replace`` (validator r leaves, a new node with
a new key takes index r), ``add`` (a new node at index n) or ``remove`` (the last validator leaves).
The operator submits a ``validator-set-change`` approved by 2f+1 of the old set, with an effective
height H a few blocks ahead (and submits it again, with a later H, while none is recorded). The new
node starts from genesis and catches up by state transfer, verifying the chain across the change.
Faults, within f of the set in force at each height: message loss, delay, duplication and
partitions until the heal time; a crash (and recovery) of a validator of both sets; a Byzantine
twin (two replicas under one validator key of both sets, each with transactions of its own, so they
equivocate when they lead a view; in half of its seeds the twin leads view 0); the leaving validator
dead for good, or alive and ignoring the change, so that it keeps proposing and voting with the
old set after H.

Invariants checked on every run:
  safety    non-Byzantine replicas never commit two different blocks at one height; each committed
            block's certificate verifies against the set in force at its height (the old set below
            H, the new one from H), and its header names that set; no non-Byzantine replica holds
            an equivocation proof against a non-Byzantine validator;
  change    the change is recorded and every live honest validator of the new set switches;
  liveness  transactions submitted after the heal, once the new set is in force, are committed by
            every live honest validator of the new set (the new node included) within
            ``LIVENESS_BOUND_MS``. Site traffic goes on between the change's record and H.

``python3 -m ledgerlink.ledger.consensus.reconfig_sim --seeds 0:1000`` runs seeds 0..999 and prints
a summary (failing seeds, kinds, messages); ``--seed N --trace`` prints one schedule.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.consensus.replica import Broadcast, Committed, Config, Persist, Replica, SaveVotes, Send
from ledgerlink.ledger.consensus.simulator import CachingCrypto, partitioned
from ledgerlink.ledger.state import LedgerState, Role
from ledgerlink.protocol import ledger_tx

TICK_MS = 25
LIVENESS_BOUND_MS = 20000
RESUBMIT_MS = 1500          # the operator submits the change again (with a later H) while none is recorded
FILLER_MS = 200             # site traffic between the change's record and H
LIVENESS_TXS = 3
CHANGES = ("replace", "add", "remove")
CHAIN_ID = "sim-reconfig"


@dataclass
class Scenario:
    n: int
    change: str
    leaving: str                  # what the leaving validator does: "dead", "stale" (keeps voting) or "-"
    fault: str                    # one more fault: "none", "crash", "twin"
    fault_at: int                 # the validator with that fault (of both sets)
    drop: float
    delay: tuple[int, int]
    partitions: list[tuple[int, int, frozenset[int]]]
    crash: tuple[int, int]
    heal_ms: int
    ahead: int                    # H = height when submitted + ahead

    def describe(self) -> str:
        return ("n=%d change=%s leaving=%s fault=%s@%d drop=%.2f delay=%s partitions=%s heal=%d ahead=%d"
                % (self.n, self.change, self.leaving, self.fault, self.fault_at, self.drop, self.delay,
                   [(a, b, sorted(g)) for a, b, g in self.partitions], self.heal_ms, self.ahead))


def _f(n: int) -> int:
    return (n - 1) // 3


def draw_scenario(rnd: random.Random) -> Scenario:
    n = 7 if rnd.random() < 0.3 else 4
    change = rnd.choice(CHANGES)
    leaving = "-" if change == "add" else rnd.choice(("dead", "stale"))
    n_new = n + 1 if change == "add" else n - 1 if change == "remove" else n
    old_faults = 1 if leaving == "dead" else 0       # a stale leaver is honest until H
    both = list(range(1, n - 1))                     # validators of both sets (not the leaver, which is r or n-1)
    fault = rnd.choice(("none", "crash", "twin"))
    if old_faults + 1 > _f(n) or 1 > _f(n_new):
        fault = "none"
    heal = rnd.randint(800, 3000)
    partitions = []
    for _ in range(rnd.choice([0, 1, 1, 2])):
        a = rnd.randint(0, heal - 100)
        b = rnd.randint(a + 50, heal)
        partitions.append((a, b, frozenset(rnd.sample(range(n + 1), rnd.randint(1, (n + 1) // 2)))))
    start = rnd.randint(0, heal - 200)
    return Scenario(n, change, leaving, fault, rnd.choice(both), rnd.choice([0.0, 0.05, 0.2]),
                    (rnd.randint(1, 5), rnd.randint(5, 40)), partitions,
                    (start, rnd.randint(start + 100, heal)), heal, rnd.randint(2, 6))


class _Stale:
    """A ledger state that hides recorded set changes: its replica keeps the old set after H."""

    def __init__(self, state: LedgerState) -> None:
        self._state = state

    def scheduled_validator_set(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


class _Clocked:
    """A ledger state whose admission checks read the simulation clock."""

    def __init__(self, state: LedgerState, clock: Any) -> None:
        self._state = state
        self._clock = clock

    def check_tx(self, tx: bytes) -> int | None:
        return self._state.check_tx(tx, self._clock())

    def precheck_tx(self, tx: bytes) -> int | None:
        return self._state.precheck_tx(tx, self._clock())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


@dataclass
class Node:
    name: str
    index: int
    replicas: list[Replica]
    kind: str = "honest"          # honest, new, dead, stale, twin
    up: bool = True
    persisted: list[tuple[bytes, bytes]] = field(default_factory=list)
    votes: bytes | None = None


@dataclass
class Result:
    seed: int
    scenario: Scenario
    violations: list[str]
    messages: int
    switched_at: int | None
    heights: dict[str, int]
    trace: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


_KEYS: dict[int, bytes] = {}


def _key(backend: Any, label: int) -> bytes:
    if label not in _KEYS:
        _KEYS[label] = backend.generate_private_key(random.Random(5000 + label).randbytes)
    return _KEYS[label]


class Simulation:
    """One seeded schedule; ``run()`` returns a ``Result``."""

    def __init__(self, seed: int, trace: bool = False, scenario: Scenario | None = None) -> None:
        self.seed = seed
        self.rnd = random.Random(seed)
        self.sc = sc = scenario or draw_scenario(self.rnd)
        self.backend = get_backend("cpython")
        self.crypto = CachingCrypto(self.backend)
        self.tracing = trace
        self.trace: list[str] = []
        self.now = 0
        self.queue: list[tuple[int, int, int, Any]] = []
        self.seq = 0
        self.messages = 0
        self.violations: list[str] = []
        self.admin = _key(self.backend, 900)
        self.old_keys = [_key(self.backend, i) for i in range(sc.n)]
        self.old_pubs = tuple(self.crypto.public_key(k) for k in self.old_keys)
        joining = _key(self.backend, 100 + seed % 50)
        if sc.change == "replace":
            self.leaver, self.new_index = sc.n - 1 if seed % 2 else 0, None
            self.new_index = self.leaver
            new = list(self.old_keys)
            new[self.leaver] = joining
        elif sc.change == "add":
            self.leaver, self.new_index = None, sc.n
            new = self.old_keys + [joining]
        else:
            self.leaver, self.new_index = sc.n - 1, None
            new = self.old_keys[:-1]
        self.new_keys = new
        self.new_pubs = tuple(self.crypto.public_key(k) for k in new)
        self.genesis = {"chain_id": CHAIN_ID, "admins": [self.crypto.public_key(self.admin, True)],
                        "validators": [self.crypto.public_key(k, True) for k in self.old_keys]}
        self.config = Config(chain_id=CHAIN_ID, validators=self.old_pubs, max_batch=8, batch_timeout_ms=10,
                             view_change_timeout_ms=300, max_backoff_exp=3, retransmit_ms=100,
                             checkpoint_interval=4, max_message_size=1 << 18, max_blocks_per_reply=8,
                             idle_sync_ms=500)
        if sc.fault == "twin" and self.leaver != 0 and self.rnd.random() < 0.5:
            sc.fault_at = 0                                # the twin leads view 0: its copies equivocate
        self.nodes: list[Node] = []
        for i in range(sc.n):
            kind = "honest"
            if i == self.leaver and sc.leaving in ("dead", "stale"):
                kind = sc.leaving
            elif sc.fault == "twin" and i == sc.fault_at:
                kind = "twin"
            reps = [self._replica(i, self.old_keys[i], kind) for _ in range(2 if kind == "twin" else 1)]
            self.nodes.append(Node("v%d" % i, i, reps, kind))
        if self.new_index is not None:
            self.nodes.append(Node("new", self.new_index, [self._replica(self.new_index, joining, "new")], "new"))
        self.dead_at = self.rnd.randint(0, sc.heal_ms // 2) if sc.leaving == "dead" else None
        self.change_height: int | None = None          # H of the recorded change, from the first honest commit
        self.submitted_change = -10 ** 9
        self.filled_at = -10 ** 9
        self.tx_count = 0
        self.liveness: set[bytes] = set()
        self.committed: dict[int, tuple[bytes, str]] = {}
        self.live_commits: dict[str, set[bytes]] = {}

    # --- setup ------------------------------------------------------------------------------------

    def _replica(self, index: int, key: bytes, kind: str, persisted: list | None = None,
                 votes: bytes | None = None) -> Replica:
        state = LedgerState.genesis(self.genesis, self.backend)
        app: Any = _Clocked(state, lambda: self.now)
        if kind == "stale":
            app = _Stale(app)
        if persisted is None:
            return Replica(index, self.config, key, app, self.crypto, self.now)
        return Replica.restore(index, self.config, key, app, self.crypto, self.now, persisted, votes=votes)

    def _log(self, text: str) -> None:
        if self.tracing:
            self.trace.append("%7d %s" % (self.now, text))

    def _push(self, t: int, kind: int, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, data))

    # --- honest set membership --------------------------------------------------------------------

    def _honest(self, node: Node) -> bool:
        return node.kind in ("honest", "new")

    def _in_new_set(self, node: Node) -> bool:
        return node.index < len(self.new_keys) and node.kind != "dead" and node.kind != "stale"

    # --- network ----------------------------------------------------------------------------------

    def _node_ids(self) -> range:
        return range(len(self.nodes))

    def _partitioned(self, a: int, b: int) -> bool:
        return partitioned(self.sc.partitions, self.now, a, b)

    def _send(self, src: int, dst: int, data: bytes) -> None:
        if src == dst:
            return
        if self.now < self.sc.heal_ms:
            if self._partitioned(src, dst) or self.rnd.random() < self.sc.drop:
                return
        lo, hi = self.sc.delay
        self.messages += 1
        self._push(self.now + self.rnd.randint(lo, hi), 1, (src, dst, self.nodes[src].index, data))

    def _effects(self, node_id: int, rep: Replica, effects: list) -> None:
        node = self.nodes[node_id]
        for e in effects:
            if isinstance(e, Broadcast):
                for j in self._node_ids():
                    self._send(node_id, j, e.data)
            elif isinstance(e, Send):
                for j in self._node_ids():
                    if self.nodes[j].index == e.to:
                        self._send(node_id, j, e.data)
            elif isinstance(e, Committed):
                self._on_committed(node, rep, e)
            elif isinstance(e, Persist) and rep is node.replicas[0]:
                node.persisted.append((e.block, e.certificate))
            elif isinstance(e, SaveVotes) and rep is node.replicas[0]:
                node.votes = e.record

    def _on_committed(self, node: Node, rep: Replica, e: Committed) -> None:
        if not self._honest(node) and node.kind != "stale":
            return
        if node.kind == "stale" and self.change_height is not None and e.height >= self.change_height:
            return                                   # no longer a validator: its own chain does not count
        block = m.Block(e.header, e.txs).encode()
        prev = self.committed.get(e.height)
        if prev is None:
            self.committed[e.height] = (block, node.name)
            self._check_certificate(e)
        elif prev[0] != block:
            self.violations.append("safety: %s and %s committed different blocks at %d"
                                   % (prev[1], node.name, e.height))
        if self.change_height is None and self._honest(node):
            change = rep.app.scheduled_validator_set()
            if change is not None:
                self.change_height = change[1]
                self._log("change recorded at %d, effective at %d" % (e.height, change[1]))
        seen = self.live_commits.setdefault(node.name, set())
        seen.update(tx for tx in e.txs if tx in self.liveness)

    def _check_certificate(self, e: Committed) -> None:
        new = self.change_height is not None and e.height >= self.change_height
        keys = self.new_pubs if new else self.old_pubs
        try:
            m.verify_certificate(e.certificate, e.header, CHAIN_ID, keys, self.crypto)
            if e.header.validators_hash != m.validators_hash(keys):
                raise m.MessageError("header names another set")
        except m.MessageError as exc:
            self.violations.append("safety: block %d certificate against the %s set: %s"
                                   % (e.height, "new" if new else "old", exc.reason))

    # --- transactions -----------------------------------------------------------------------------

    def _register_tx(self) -> bytes:
        self.tx_count += 1
        dev = _key(self.backend, 10000 + self.tx_count)
        request = ledger_tx.registration_request(dev, Role.SENSOR, {}, self.now, self.backend)
        return ledger_tx.register_tx(CHAIN_ID, self.admin, request, self.now, backend=self.backend,
                                     nonce=self.rnd.randbytes(16))

    def _change_tx(self, height: int) -> bytes:
        quorum = m.quorum(self.sc.n)
        signers = sorted(self.rnd.sample(range(self.sc.n), quorum))
        approvals = [[i, ledger_tx.approve_set_change(CHAIN_ID, self.old_keys[i], 1, self.new_pubs, height,
                                                      self.backend)] for i in signers]
        return ledger_tx.validator_set_change_tx(CHAIN_ID, self.admin, 1, self.new_pubs, height, approvals,
                                                 self.now, backend=self.backend, nonce=self.rnd.randbytes(16))

    def _submit(self, tx: bytes, to: list[int]) -> None:
        for j in to:
            node = self.nodes[j]
            if node.up and node.replicas:
                self._effects(j, node.replicas[0], node.replicas[0].submit(tx, self.now))

    def _top(self) -> int:
        return max(r.height for n in self.nodes if self._honest(n) for r in n.replicas)

    def _in_force(self) -> bool:
        """The new set signs blocks: an honest replica is at or above H."""
        return self.change_height is not None and self._top() >= self.change_height

    def _operator(self) -> None:
        """Submit the change (again) while no honest replica has recorded it; once it is recorded, site
        traffic goes on (a register tx every ``FILLER_MS``) until the new set is in force."""
        honest = [j for j in self._node_ids() if self._honest(self.nodes[j])]
        if self.change_height is None and self.now - self.submitted_change >= RESUBMIT_MS:
            self.submitted_change = self.now
            self._submit(self._change_tx(self._top() + 1 + self.sc.ahead), honest)
        elif self.change_height is not None and self.now - self.filled_at >= FILLER_MS and not self._in_force():
            self.filled_at = self.now
            self._submit(self._register_tx(), [self.rnd.choice(honest)])

    # --- run --------------------------------------------------------------------------------------

    def run(self) -> Result:
        sc = self.sc
        for t in range(0, sc.heal_ms + 500, 150):
            self._push(t, 2, None)                              # register traffic
        live_at = sc.heal_ms + 1000
        for k in range(LIVENESS_TXS):
            self._push(live_at + 200 * k, 3, None)              # liveness transactions, once the new set is in force
        for t in range(0, live_at + LIVENESS_BOUND_MS, TICK_MS):
            self._push(t, 0, None)
        end = live_at + LIVENESS_BOUND_MS
        while self.queue:
            t, _, kind, data = heapq.heappop(self.queue)
            if t > end:
                break
            self.now = t
            if kind == 0:
                self._faults()
                self._operator()
                for j, node in enumerate(self.nodes):
                    if node.up:
                        for rep in node.replicas:
                            self._effects(j, rep, rep.tick(self.now))
                if self.now > live_at and self._live_done():
                    break
            elif kind == 1:
                src, dst, sender, raw = data
                node = self.nodes[dst]
                if node.up:
                    for rep in node.replicas:
                        self._effects(dst, rep, rep.receive(sender, raw, self.now))
            elif kind == 2:
                honest = [j for j in self._node_ids() if self._honest(self.nodes[j])]
                self._submit(self._register_tx(), [self.rnd.choice(honest)])
                for j, node in enumerate(self.nodes):         # a twin's second copy gets work of its own
                    if node.kind == "twin" and node.up:
                        self._effects(j, node.replicas[1], node.replicas[1].submit(self._register_tx(), self.now))
            elif kind == 3:
                if not self._in_force():
                    self._push(self.now + FILLER_MS, 3, None)   # liveness is asked of the new set
                    continue
                tx = self._register_tx()
                self.liveness.add(tx)
                self._submit(tx, [j for j in self._node_ids() if self._in_new_set(self.nodes[j])])
        self._final_checks()
        heights = {n.name: n.replicas[0].height for n in self.nodes if n.replicas}
        return Result(self.seed, sc, self.violations, self.messages, self.change_height, heights, self.trace)

    def _faults(self) -> None:
        sc = self.sc
        for j, node in enumerate(self.nodes):
            if node.kind == "dead" and node.up and self.now >= self.dead_at:
                node.up = False
                node.replicas = []
                self._log("%s dies for good" % node.name)
            if sc.fault == "crash" and node.index == sc.fault_at and node.kind == "honest":
                start, end = sc.crash
                if node.up and start <= self.now < end:
                    node.up = False
                    self._log("%s crashes" % node.name)
                elif not node.up and self.now >= end:
                    node.up = True
                    node.replicas = [self._replica(node.index, self.old_keys[node.index], "honest",
                                                   list(node.persisted), node.votes)]
                    self._log("%s restarts at height %d" % (node.name, node.replicas[0].height))

    def _new_set_nodes(self) -> list[Node]:
        return [n for n in self.nodes if self._honest(n) and self._in_new_set(n) and n.up]

    def _live_done(self) -> bool:
        return len(self.liveness) == LIVENESS_TXS and all(self.liveness <= self.live_commits.get(n.name, set()) for n in self._new_set_nodes())

    def _final_checks(self) -> None:
        twins = {n.index for n in self.nodes if n.kind == "twin"}
        for node in self.nodes:
            for rep in node.replicas if self._honest(node) else ():
                if set(rep.convicted) - twins:
                    self.violations.append("safety: %s holds an equivocation proof against honest %s"
                                           % (node.name, sorted(set(rep.convicted) - twins)))
        if self.change_height is None:
            self.violations.append("change: never recorded")
            return
        for node in self._new_set_nodes():
            rep = node.replicas[0]
            if rep.height + 1 < self.change_height or not rep.member:
                self.violations.append("change: %s did not switch (height %d, H %d)"
                                       % (node.name, rep.height, self.change_height))
            if len(self.liveness) < LIVENESS_TXS or not self.liveness <= self.live_commits.get(node.name, set()):
                self.violations.append("liveness: %s did not commit the transactions after the heal (height %d)"
                                       % (node.name, rep.height))


def run_seed(seed: int, trace: bool = False) -> Result:
    return Simulation(seed, trace).run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, help="run one seed and print its trace")
    p.add_argument("--seeds", default="0:1000", help="range A:B of seeds (default 0:1000)")
    p.add_argument("--trace", action="store_true")
    args = p.parse_args(argv)
    if args.seed is not None:
        r = run_seed(args.seed, trace=args.trace)
        print("\n".join(r.trace))
        print("seed %d: %s; %s; switched at %s; heights %s; %d messages"
              % (r.seed, "ok" if r.ok else "FAIL", r.scenario.describe(), r.switched_at, r.heights, r.messages))
        for v in r.violations:
            print("  " + v)
        return 0 if r.ok else 1
    a, b = (int(x) for x in args.seeds.split(":"))
    started = time.perf_counter()
    failed = []
    kinds: Counter = Counter()
    for seed in range(a, b):
        r = run_seed(seed)
        kinds[(r.scenario.change, r.scenario.leaving, r.scenario.fault)] += 1
        if not r.ok:
            failed.append(r)
            print("seed %d FAIL: %s | %s" % (seed, r.scenario.describe(), "; ".join(r.violations[:3])), flush=True)
    print("reconfiguration seeds %d..%d: %d runs, %d failed, %.1f s" % (a, b - 1, b - a, len(failed),
                                                                         time.perf_counter() - started))
    for (change, leaving, fault), count in sorted(kinds.items()):
        print("  change=%-7s leaving=%-5s fault=%-5s %4d seeds" % (change, leaving, fault, count))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
