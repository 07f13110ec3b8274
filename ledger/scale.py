"""PBFT from 4 to 100 validators: commit latency, messages, bytes and CPU per block.

``python3 -m ledgerlink.ledger.scale`` runs the replicas (``consensus.replica.Replica`` with
``KVApp``) of one cluster size after another in a discrete-event simulation and prints one row per
size: commit latency (median and p99), messages and bytes per block, CPU per block per replica, and
latency(N) / latency(4) beside the 5.34 of seed 001 for N = 100. ``--full`` runs N = 4, 7, 10, 16,
31, 64, 100 on both networks; ``--real`` adds rows measured on real node processes on loopback.

Network model. Every pair of validators has its own link with a fixed one-way delay (``lan``
0.5 ms, ``wan`` 20 ms). A sender's uplink carries ``BANDWIDTH_MBIT_S`` (100 Mbit/s): each copy of a
message occupies it for its bytes' serialization time, copies leave one after the other (a
broadcast to n-1 peers is n-1 copies, first to the validator it names first, if any, then to the
next index up), and a copy arrives one delay
after its last byte left. No loss, no reordering on a link, no receive-side queueing.

Node model. Each validator is one CPU that runs its handlers (message, client submission, timer
tick) one at a time in arrival order. Every handler call is timed with ``time.thread_time`` (CPU time
of this thread: other processes on the machine do not count) and runs for that long in virtual
time; what it sends leaves its uplink, and a commit counts, when it is done. The work is the
replica's own: CBOR decoding, real ECDSA P-256 signing and verification with the CPython backend
(no cache shared between replicas), the application's execution. Disk writes (``Persist``,
``SaveVotes``) are not modelled.

Load. For each block ``TXS_PER_BLOCK`` signed key-value transactions go to one validator (drawn
from ``--seed``) at once; it forwards them to all, and the primary (``max_batch`` = that count)
proposes them as one block. The next block's transactions come when every replica has committed
the block before (one block in flight, as the replica orders them). A first block warms up caches
and is not counted. Commit latency is from the submission to a replica's commit, over every replica
and block; messages and bytes count every copy sent (all kinds: request forwarding, the three
phases, checkpoints, retransmissions), per block; CPU is the sum of the replicas' handler times
per block and replica, with the share spent in signature verification.

Threshold certificates (``--threshold``): the validators also hold FROST keys (t = 2f+1; made by the
trusted-dealer key generation of RFC 9591 appendix C for speed, since an in-process DKG of 100 is
slow in pure Python: signing is the same), every block gets its threshold certificate before the next
block's transactions come, and a second table prints per size: the certificate's latency after the
commit (each replica, from its commit to holding the verified certificate, median and p99), the
messages and bytes it adds per block (nonce-commitment, sign-request, signature-share,
threshold-cert), and the gateway's check of one header of that run with the CPython backend:
2f+1 ES256 votes against one FROST verification (median of ``HEADER_CHECK_REPEAT`` runs).

What-ifs, to see what dominates: ``--no-verify-cost`` keeps the measured verification time out of
virtual time, ``--bandwidth-mbit 0`` makes the uplinks unlimited. Real rows (``--real``): a
``LocalCluster`` of each size on this machine's loopback, closed-loop transactions to the nodes in
turn, latency from submission to the committed answer. ``--real --delay-ms 0.5,20`` adds rows with
a delay between the nodes: this kernel has no ``sch_netem`` (``tc netem`` in a network namespace is
refused), so every node-to-node connection goes through a ``delay_relay.DelayRelay`` (one route per
validator; each node's own copy of the cluster config names its peers at the relay's ports and
itself at its real port) that holds each chunk for the delay in each direction, in order, with
``--relay-bandwidth-mbit`` as an optional cap per connection and direction. Unlike netem it delays
the chunks ``recv`` returns in user space, not packets (the TCP connections to and from the relay
see no delay, so handshakes, ACKs and windows are undelayed and its queues are unbounded), its timers
add about 1 ms of scheduling on this shared CPU (the header prints the hold measured through it, so
a 0.5 ms row is really ~1.3 ms), and it has no loss, reordering or jitter. Clients reach the nodes
directly; KB/blk of these rows is what the relay carried (all peer traffic) per block.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledgerlink.core import frost
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.consensus.kv_app import KVApp, make_tx
from ledgerlink.ledger.consensus.messages import (
    COMMIT, KIND_NAMES, NONCE_COMMITMENT, PRE_PREPARE, PREPARE, SIGN_REQUEST, SIGNATURE_SHARE, THRESHOLD_CERT,
    quorum, verify_certificate,
)
from ledgerlink.ledger.consensus.replica import (
    Broadcast, Committed, Config, Dropped, PersistThreshold, Replica, Send,
)
from ledgerlink.protocol import spv
from ledgerlink.ledger.consensus.simulator import TICK_MS, validator_keys

ONE_WAY_MS = {"lan": 0.5, "wan": 20.0}
BANDWIDTH_MBIT_S = 100.0
SIZES_FULL = (4, 7, 10, 16, 31, 64, 100)
SIZES_DEFAULT = (4, 7, 10, 16)
REAL_SIZES_DEFAULT = (4, 7, 10)
TARGET_RATIO = 5.34                  # seed 001: consensus time at N=100 over N=4
TXS_PER_BLOCK = 8
BLOCKS_DEFAULT = 5
BLOCKS_FULL = 5
ROUNDS_FULL = 2                      # rounds over all sizes, so that the machine's load drift hits each size alike
BLOCK_WAIT_MS = 60000.0              # virtual time a block may take before the run is declared stuck
PHASE_KINDS = (PRE_PREPARE, PREPARE, COMMIT)
THRESHOLD_KINDS = (NONCE_COMMITMENT, SIGN_REQUEST, SIGNATURE_SHARE, THRESHOLD_CERT)
HEADER_CHECK_REPEAT = 15
SIM_CONFIG = dict(chain_id="scale", batch_timeout_ms=10, view_change_timeout_ms=1000, retransmit_ms=250,
                  checkpoint_interval=16, idle_sync_ms=600000)
REAL_TXS = 30                        # closed-loop transactions per real cluster size
REAL_CONSENSUS = {"batch_timeout_ms": 0}
REAL_DELAY_SIZES_DEFAULT = (4, 7, 10, 16)


class MeteredCrypto:
    """A backend wrapper that counts one replica's signature verifications and their CPU time."""

    def __init__(self, backend: Any):
        self.backend = backend
        self.verifies = 0
        self.verify_ns = 0

    def verify(self, pub: bytes, msg: bytes, sig: bytes) -> bool:
        t0 = time.thread_time_ns()
        ok = self.backend.verify(pub, msg, sig)
        self.verify_ns += time.thread_time_ns() - t0
        self.verifies += 1
        return ok

    def sign(self, priv: bytes, msg: bytes) -> bytes:
        return self.backend.sign(priv, msg)

    def sha256(self, data: bytes) -> bytes:
        return self.backend.sha256(data)

    def public_key(self, priv: bytes, compressed: bool = False) -> bytes:
        return self.backend.public_key(priv, compressed)


@dataclass
class _Node:
    replica: Replica
    crypto: MeteredCrypto
    inbox: deque = field(default_factory=deque)   # (kind, data) waiting for the CPU
    cpu_free_ms: float = 0.0
    uplink_free_ms: float = 0.0
    wake_pending: bool = False
    cpu_ns: int = 0


@dataclass
class SimRow:
    """One simulated cluster size: the measured numbers and each replica's chain of header hashes."""

    network: str
    n: int
    blocks: int
    latencies_ms: list[float]
    messages: int
    phase_messages: int
    bytes: int
    cpu_ns: int
    verifies: int
    verify_ns: int
    view: int
    drops: Counter
    chains: list[list[bytes]]
    wall_s: float
    verifies_by_kind: Counter = field(default_factory=Counter)   # what was being handled -> verifications
    threshold_latencies_ms: list[float] = field(default_factory=list)   # commit -> certificate, each replica
    threshold_messages: int = 0
    threshold_bytes: int = 0
    check_ecdsa_ms: list[float] = field(default_factory=list)     # gateway check of one header: 2f+1 votes
    check_frost_ms: list[float] = field(default_factory=list)     # and its threshold certificate

    @property
    def latency_p50_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def latency_p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    def per_block(self, total: float) -> float:
        return total / self.blocks

    def per_block_replica(self, total: float) -> float:
        return total / self.blocks / self.n

    @property
    def chains_identical(self) -> bool:
        return all(c == self.chains[0] for c in self.chains)


def combine(runs: list[SimRow]) -> SimRow:
    """Runs of one size and network pooled: latencies joined, counts added, each replica's chains of
    the runs one after the other."""
    first = runs[0]
    return SimRow(first.network, first.n, sum(r.blocks for r in runs), [x for r in runs for x in r.latencies_ms],
                  sum(r.messages for r in runs), sum(r.phase_messages for r in runs), sum(r.bytes for r in runs),
                  sum(r.cpu_ns for r in runs), sum(r.verifies for r in runs), sum(r.verify_ns for r in runs),
                  max(r.view for r in runs), sum((r.drops for r in runs), Counter()),
                  [[h for r in runs for h in r.chains[i]] for i in range(first.n)], sum(r.wall_s for r in runs),
                  sum((r.verifies_by_kind for r in runs), Counter()),
                  [x for r in runs for x in r.threshold_latencies_ms], sum(r.threshold_messages for r in runs),
                  sum(r.threshold_bytes for r in runs), [x for r in runs for x in r.check_ecdsa_ms],
                  [x for r in runs for x in r.check_frost_ms])


def percentile(xs: list[float], p: float) -> float:
    """The nearest-rank p-th percentile of ``xs`` (NaN when empty)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, -(-len(s) * p // 100) - 1))]


_DELIVER, _WAKE, _TICK, _SUBMIT = range(4)


class ScaleSimulation:
    """n honest replicas on the network and node model of the module docstring."""

    def __init__(self, n: int, network: str, seed: int = 0, txs_per_block: int = TXS_PER_BLOCK,
                 bandwidth_mbit_s: float = BANDWIDTH_MBIT_S, charge_verify: bool = True, threshold: bool = False):
        """``bandwidth_mbit_s`` 0 is an unlimited uplink; ``charge_verify`` False leaves the time spent in
        signature verification out of virtual time (what the latency would be if it cost nothing);
        ``threshold`` gives the validators FROST keys (module docstring)."""
        if network not in ONE_WAY_MS:
            raise ValueError("network must be one of %s" % ", ".join(ONE_WAY_MS))
        self.n = n
        self.network = network
        self.one_way_ms = ONE_WAY_MS[network]
        self.ms_per_byte = 8 / (bandwidth_mbit_s * 1000) if bandwidth_mbit_s > 0 else 0.0
        self.charge_verify = charge_verify
        self.rnd = random.Random(seed)
        self.txs_per_block = txs_per_block
        backend = get_backend("cpython")
        keys = validator_keys(backend, n)
        pubs = tuple(backend.public_key(k) for k in keys)
        self.threshold = threshold
        shares: dict[int, int] = {}
        frost_keys: dict[str, Any] = {}
        if threshold:
            shares, verifying, group_key = frost.trusted_dealer_keygen(None, n, quorum(n),
                                                                       random.Random(seed ^ 0xF057).randbytes)
            frost_keys = dict(group_key=group_key, verifying_shares=tuple(verifying[i + 1] for i in range(n)))
        self.config = Config(validators=pubs, max_batch=txs_per_block, **SIM_CONFIG, **frost_keys)
        self.nodes = []
        for i in range(n):
            crypto = MeteredCrypto(backend)
            rng = random.Random("scale/%d/%d" % (seed, i)).randbytes if threshold else None
            self.nodes.append(_Node(Replica(i, self.config, keys[i], KVApp(crypto), crypto, 0,
                                            threshold_share=shares.get(i + 1), rng=rng), crypto))
        self.backend = backend
        self.client_key = random.Random(seed ^ 0x5CA1E).randbytes(31) + b"\x01"
        self.nonce = 0
        self.queue: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.messages = 0
        self.phase_messages = 0
        self.bytes = 0
        self.drops: Counter = Counter()
        self.verifies_by_kind: Counter = Counter()
        self.commit_ms: dict[int, dict[int, float]] = {}      # height -> replica -> virtual commit time
        self.threshold_ms: dict[int, dict[int, float]] = {}   # height -> replica -> it holds the certificate
        self.threshold_messages = 0
        self.threshold_bytes = 0

    def _push(self, t: float, kind: int, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, data))

    def _enqueue(self, i: int, item: tuple[int, Any]) -> None:
        node = self.nodes[i]
        node.inbox.append(item)
        if not node.wake_pending:
            node.wake_pending = True
            self._push(max(self.now, node.cpu_free_ms), _WAKE, i)

    def _run_handler(self, i: int) -> None:
        node = self.nodes[i]
        node.wake_pending = False
        kind, data = node.inbox.popleft()
        rep = node.replica
        now_ms = int(self.now)
        verify_ns, verifies = node.crypto.verify_ns, node.crypto.verifies
        t0 = time.thread_time_ns()
        if kind == _DELIVER:
            effects = rep.receive(data[0], data[1], now_ms)
        elif kind == _TICK:
            effects = rep.tick(now_ms)
        else:
            effects = rep.submit_many(data, now_ms)
        spent = time.thread_time_ns() - t0
        node.cpu_ns += spent
        if kind == _DELIVER:
            what = KIND_NAMES.get(data[1][1], "?") if len(data[1]) > 1 else "?"
        else:
            what = "timer" if kind == _TICK else "client"
        self.verifies_by_kind[what] += node.crypto.verifies - verifies
        if not self.charge_verify:
            spent -= node.crypto.verify_ns - verify_ns
        done = self.now + spent / 1e6
        node.cpu_free_ms = done
        self._effects(i, effects, done)
        if node.inbox:
            node.wake_pending = True
            self._push(done, _WAKE, i)

    def _effects(self, i: int, effects: list, done: float) -> None:
        for e in effects:
            if isinstance(e, Broadcast):
                dsts = [(i + k) % self.n for k in range(1, self.n)]
                if e.first is not None and e.first != i:
                    dsts.remove(e.first)
                    dsts.insert(0, e.first)
                self._send(i, dsts, e.data, done)
            elif isinstance(e, Send):
                self._send(i, [e.to], e.data, done)
            elif isinstance(e, Committed):
                self.commit_ms.setdefault(e.height, {})[i] = done
            elif isinstance(e, PersistThreshold):
                self.threshold_ms.setdefault(e.height, {})[i] = done
            elif isinstance(e, Dropped):
                self.drops[e.reason] += 1

    def _send(self, src: int, dsts: list[int], data: bytes, at: float) -> None:
        node = self.nodes[src]
        size = len(data)
        phase = data[1] in PHASE_KINDS           # cbor: a short array head, then the kind (< 24) in one byte
        threshold = data[1] in THRESHOLD_KINDS
        serialize_ms = size * self.ms_per_byte
        t = max(node.uplink_free_ms, at)
        for d in dsts:
            if d == src:
                continue
            t += serialize_ms
            self.messages += 1
            self.bytes += size
            self.phase_messages += phase
            if threshold:
                self.threshold_messages += 1
                self.threshold_bytes += size
            self._push(t + self.one_way_ms, _DELIVER, (src, d, data))
        node.uplink_free_ms = t

    def _submit_block(self) -> None:
        txs = []
        for _ in range(self.txs_per_block):
            self.nonce += 1
            txs.append(make_tx(self.backend, self.client_key, self.nonce.to_bytes(16, "big"),
                               b"k%d" % self.rnd.randrange(64), b"v%d" % self.nonce))
        self._enqueue(self.rnd.randrange(self.n), (_SUBMIT, txs))

    def _reset_counters(self) -> None:
        self.messages = self.phase_messages = self.bytes = 0
        self.threshold_messages = self.threshold_bytes = 0
        self.drops.clear()
        self.verifies_by_kind.clear()
        for node in self.nodes:
            node.cpu_ns = node.crypto.verifies = node.crypto.verify_ns = 0

    def run(self, blocks: int) -> SimRow:
        """Commit one warm-up block and then ``blocks`` measured ones; the row of this size."""
        wall0 = time.perf_counter()
        for i in range(self.n):
            self._push(self.rnd.uniform(0, TICK_MS), _TICK, i)
        latencies: list[float] = []
        threshold_latencies: list[float] = []
        for height in range(blocks + 1):
            submitted = self.now
            self._submit_block()
            deadline = submitted + BLOCK_WAIT_MS
            while len(self.commit_ms.get(height, ())) < self.n \
                    or (self.threshold and len(self.threshold_ms.get(height, ())) < self.n):
                if not self.queue or self.queue[0][0] > deadline:
                    raise RuntimeError("N=%d %s: block %d not committed by every replica within %.0f ms "
                                       "(virtual)" % (self.n, self.network, height, BLOCK_WAIT_MS))
                t, _, kind, data = heapq.heappop(self.queue)
                self.now = t
                if kind == _WAKE:
                    self._run_handler(data)
                elif kind == _DELIVER:
                    self._enqueue(data[1], (_DELIVER, (data[0], data[2])))
                elif kind == _TICK:
                    self._enqueue(data, (_TICK, None))
                    self._push(t + TICK_MS, _TICK, data)
            if height == 0:
                self._reset_counters()
            else:
                latencies += [t - submitted for t in self.commit_ms[height].values()]
                if self.threshold:
                    threshold_latencies += [self.threshold_ms[height][i] - self.commit_ms[height][i]
                                            for i in range(self.n)]
        chains = [[s.hash for s in node.replica.chain] for node in self.nodes]
        row = SimRow(self.network, self.n, blocks, latencies, self.messages, self.phase_messages, self.bytes,
                     sum(nd.cpu_ns for nd in self.nodes), sum(nd.crypto.verifies for nd in self.nodes),
                     sum(nd.crypto.verify_ns for nd in self.nodes),
                     max(nd.replica.view for nd in self.nodes), Counter(self.drops), chains,
                     time.perf_counter() - wall0, Counter(self.verifies_by_kind), threshold_latencies,
                     self.threshold_messages, self.threshold_bytes)
        if self.threshold:
            row.check_ecdsa_ms, row.check_frost_ms = self.header_check_ms(blocks)
        return row

    def header_check_ms(self, height: int) -> tuple[list[float], list[float]]:
        """A gateway's check of block ``height``'s header (CPython backend, ms per run): by its 2f+1
        votes (``messages.verify_certificate``: spv takes at most 64 validators) and by its threshold
        certificate (``spv.verify_certified_header``)."""
        replica = self.nodes[0].replica
        block, cert = replica.block(height)
        keys = list(self.config.validators)
        by_threshold = [block.header.to_obj(), replica.threshold_certs[height].to_obj()]
        out: tuple[list[float], list[float]] = ([], [])
        for _ in range(HEADER_CHECK_REPEAT):                 # interleaved, so load drift hits both alike
            t0 = time.perf_counter()
            verify_certificate(cert, block.header, self.config.chain_id, keys, self.backend)
            t1 = time.perf_counter()
            spv.verify_certified_header(by_threshold, self.config.chain_id, keys, self.backend,
                                        group_key=self.config.group_key)
            t2 = time.perf_counter()
            out[0].append((t1 - t0) * 1000)
            out[1].append((t2 - t1) * 1000)
        return out


def simulate(n: int, network: str, blocks: int, seed: int = 0, txs_per_block: int = TXS_PER_BLOCK,
             bandwidth_mbit_s: float = BANDWIDTH_MBIT_S, charge_verify: bool = True,
             threshold: bool = False) -> SimRow:
    """The simulated row of one cluster size (see the module docstring and ``ScaleSimulation``)."""
    return ScaleSimulation(n, network, seed, txs_per_block, bandwidth_mbit_s, charge_verify,
                           threshold).run(blocks)


# --- real processes -----------------------------------------------------------------------------

@dataclass
class RealRow:
    """One cluster of real node processes on loopback; ``skipped`` says why it could not run."""

    n: int
    latencies_ms: list[float] = field(default_factory=list)
    blocks: int = 0
    cpu_s: float | None = None
    view: int = 0
    failed: int = 0
    skipped: str | None = None
    delay_ms: float | None = None        # one-way delay of the relay between the nodes; None: no relay
    relay_bytes: int | None = None       # peer bytes the relay carried over the measured transactions
    relay_cpu_s: float | None = None     # the relay thread's CPU over them

    @property
    def latency_p50_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def latency_p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)


def relayed_configs(config_path: Path, relay_ports: list[int]) -> list[Path]:
    """Write one cluster config per node beside ``config_path``: node i's names every other node j at
    the relay's ``relay_ports[j]`` and i itself at its own peer port (where it listens). Only the
    ports differ, so the genesis hash is the same."""
    from ledgerlink.ledger.transport import ClusterConfig
    base = ClusterConfig.load(config_path)
    raw = json.loads(config_path.read_text())
    out = []
    for i in range(base.n):
        nodes = []
        for j, a in enumerate(base.nodes):
            entry = dict(raw["nodes"][j]) if j < len(raw.get("nodes", [])) else {}
            entry.update(host=a.host, peer_port=a.peer_port if j == i else relay_ports[j],
                         client_port=a.client_port)
            nodes.append(entry)
        path = config_path.with_name("%s.node%d%s" % (config_path.stem, i, config_path.suffix))
        path.write_text(json.dumps(dict(raw, nodes=nodes), indent=2) + "\n")
        out.append(path)
    return out


def real_run(n: int, txs: int = REAL_TXS, delay_ms: float | None = None,
             relay_bandwidth_mbit_s: float = 0.0) -> RealRow:
    """Start n node processes on loopback and submit ``txs`` transactions one after the other (each
    waits for its commit); the latency from submission to the committed answer, node CPU over it.
    With ``delay_ms`` every node-to-node connection goes through a ``DelayRelay`` of that one-way delay."""
    from ledgerlink.ledger.bench import Loader, _cpu_seconds
    from ledgerlink.ledger.client import LedgerClient
    from ledgerlink.ledger.cluster import LocalCluster
    from ledgerlink.ledger.delay_relay import DelayRelay
    row = RealRow(n, delay_ms=delay_ms)
    relay: DelayRelay | None = None
    with tempfile.TemporaryDirectory() as data:
        try:
            cluster = LocalCluster(data, n, consensus=REAL_CONSENSUS, log_level="WARNING")
            if delay_ms is not None:
                relay = DelayRelay([(a.host, a.peer_port) for a in cluster.config.nodes], delay_ms,
                                   relay_bandwidth_mbit_s)
                configs = relayed_configs(cluster.config_path, relay.start())
                own_args = cluster.node_args

                def node_args(i: int) -> list[str]:
                    args = own_args(i)
                    args[args.index("--config") + 1] = str(configs[i])
                    return args
                cluster.node_args = node_args             # type: ignore[method-assign]
            cluster.start(wait=60.0)
        except (OSError, RuntimeError, TimeoutError) as exc:
            if relay is not None:
                relay.stop()
            row.skipped = "cluster did not start: %s" % exc
            return row
        try:
            loader = Loader(cluster)
            clients = [LedgerClient(cluster.config_path, prefer=i, timeout=10.0) for i in range(n)]
            try:
                for tx in loader.txs(3):                              # warm-up: connections, caches
                    clients[0].submit(tx, wait_ms=20000)
                h0 = clients[0].request_to(0, "info")["height"]
                cpu0 = [_cpu_seconds(p.pid) for p in cluster.procs.values()]
                bytes0 = relay.bytes if relay is not None else 0
                relay_cpu0 = relay.cpu_seconds() if relay is not None else 0.0
                for k, tx in enumerate(loader.txs(txs)):
                    t0 = time.perf_counter()
                    r = clients[k % n].submit(tx, wait_ms=20000)
                    if r.get("status") == "committed":
                        row.latencies_ms.append((time.perf_counter() - t0) * 1000)
                    else:
                        row.failed += 1
                cpu1 = [_cpu_seconds(p.pid) for p in cluster.procs.values()]
                if relay is not None:
                    row.relay_bytes = relay.bytes - bytes0
                    row.relay_cpu_s = relay.cpu_seconds() - relay_cpu0
                info = clients[0].request_to(0, "info")
                row.blocks = info["height"] - h0
                row.view = info["view"]
                if None not in cpu0 and None not in cpu1:
                    row.cpu_s = sum(cpu1) - sum(cpu0)
            finally:
                for c in clients:
                    c.close()
        finally:
            cluster.stop()
            if relay is not None:
                relay.stop()
    return row


def netem_unavailable() -> str | None:
    """Why a LAN or WAN delay cannot be put on real processes' loopback here (``tc netem`` on the loopback
    of a throwaway network namespace, never the machine's own), or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "no ip/tc command"
    name = "llscale%d" % os.getpid()
    try:
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=10)
        if r.returncode:
            return "ip netns add: " + r.stderr.strip()
        r = subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                            "delay", "1ms"], capture_output=True, text=True, timeout=10)
        if r.returncode:
            return "tc netem in a namespace: %s (this kernel has no netem qdisc)" % r.stderr.strip()
        return None
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


# --- table --------------------------------------------------------------------------------------

COLUMNS = ("rows", "N", "f", "lat_p50_ms", "lat_p99_ms", "ratio_vs_4", "target", "msgs/blk", "3phase/blk",
           "KB/blk", "cpu_ms/blk/rep", "verif/blk/rep", "verif_ms/blk/rep", "view")


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or x != x else "%.*f" % (digits, x)


def sim_line(row: SimRow, base_p50: float | None) -> str:
    ratio = row.latency_p50_ms / base_p50 if base_p50 else None
    cells = ["sim-" + row.network, str(row.n), str((row.n - 1) // 3), _fmt(row.latency_p50_ms, 2),
             _fmt(row.latency_p99_ms, 2), _fmt(ratio, 2), _fmt(TARGET_RATIO, 2),
             _fmt(row.per_block(row.messages), 0), _fmt(row.per_block(row.phase_messages), 0),
             _fmt(row.per_block(row.bytes) / 1024, 1), _fmt(row.per_block_replica(row.cpu_ns) / 1e6, 2),
             _fmt(row.per_block_replica(row.verifies), 1), _fmt(row.per_block_replica(row.verify_ns) / 1e6, 2),
             str(row.view)]
    return _line(cells)


def real_label(delay_ms: float | None) -> str:
    """``real-lo`` without a relay, else ``real-<delay>ms``."""
    return "real-lo" if delay_ms is None else "real-%gms" % delay_ms


def real_line(row: RealRow, base_p50: float | None) -> str:
    label = real_label(row.delay_ms)
    if row.skipped:
        return _line([label, str(row.n), str((row.n - 1) // 3)]) + "  not run: " + row.skipped
    ratio = row.latency_p50_ms / base_p50 if base_p50 else None
    cpu = row.cpu_s * 1000 / row.blocks / row.n if row.cpu_s is not None and row.blocks else None
    kb = row.relay_bytes / 1024 / row.blocks if row.relay_bytes is not None and row.blocks else None
    cells = [label, str(row.n), str((row.n - 1) // 3), _fmt(row.latency_p50_ms, 2), _fmt(row.latency_p99_ms, 2),
             _fmt(ratio, 2), _fmt(TARGET_RATIO, 2), "-", "-", _fmt(kb, 1), _fmt(cpu, 2), "-", "-", str(row.view)]
    line = _line(cells)
    if row.relay_cpu_s is not None and row.blocks:
        line += "  relay cpu %.2f ms/blk" % (row.relay_cpu_s * 1000 / row.blocks)
    if row.failed:
        line += "  (%d of %d not committed)" % (row.failed, row.failed + len(row.latencies_ms))
    return line


_WIDTHS = (10, 4, 3, 11, 11, 10, 7, 9, 10, 8, 15, 14, 17, 5)


def _line(cells: list[str]) -> str:
    return " ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(cells, _WIDTHS)))


THRESHOLD_COLUMNS = ("rows", "N", "t", "tcert_p50_ms", "tcert_p99_ms", "+msgs/blk", "+KB/blk",
                     "gw_votes_ms", "gw_frost_ms", "votes/frost")
_THRESHOLD_WIDTHS = (8, 4, 3, 13, 13, 10, 8, 12, 12, 12)


def threshold_line(row: SimRow) -> str:
    votes = statistics.median(row.check_ecdsa_ms) if row.check_ecdsa_ms else None
    one = statistics.median(row.check_frost_ms) if row.check_frost_ms else None
    cells = ["sim-" + row.network, str(row.n), str(quorum(row.n)),
             _fmt(statistics.median(row.threshold_latencies_ms) if row.threshold_latencies_ms else None, 2),
             _fmt(percentile(row.threshold_latencies_ms, 99), 2), _fmt(row.per_block(row.threshold_messages), 0),
             _fmt(row.per_block(row.threshold_bytes) / 1024, 1), _fmt(votes, 3), _fmt(one, 3),
             _fmt(votes / one if votes and one else None, 1)]
    return " ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(cells, _THRESHOLD_WIDTHS)))


def header_lines(network_names: list[str], blocks: int, rounds: int, txs_per_block: int, seed: int,
                 bandwidth_mbit_s: float = BANDWIDTH_MBIT_S, charge_verify: bool = True) -> list[str]:
    nets = ", ".join("%s %.1f ms one-way" % (k, ONE_WAY_MS[k]) for k in network_names)
    link = ("%.0f Mbit/s uplink per validator, each copy serialized on the sender's link" % bandwidth_mbit_s
            if bandwidth_mbit_s > 0 else "unlimited bandwidth (what-if)")
    verify = ("" if charge_verify else
              "; WHAT-IF: time in signature verification is measured but not charged to virtual time")
    return [
        "PBFT scale: simulated replicas (%s; %s); each handler runs for its measured CPU time (time.thread_time, "
        "real ECDSA P-256 via the CPython backend, no cache shared between replicas)%s" % (nets, link, verify),
        "load: %d round(s) over the sizes (seeds %d..%d), each size %d blocks a round after a warm-up block, %d "
        "signed txs per block, one block in flight; latency: submission to a replica's commit, over every replica "
        "and block; ratio: median(N) / median(4) of the same rows; messages and bytes: every copy sent, per block"
        % (rounds, seed, seed + rounds - 1, blocks, txs_per_block),
        _line(list(COLUMNS)),
    ]


def _ratio_verdict(rows: list[SimRow | RealRow], label: str) -> str | None:
    by_n = {r.n: r for r in rows if not getattr(r, "skipped", None)}
    if 4 not in by_n or len(by_n) < 2:
        return None
    top = max(by_n)
    ratio = by_n[top].latency_p50_ms / by_n[4].latency_p50_ms
    if top == 100:
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        return "%s: latency(100)/latency(4) = %.2f, %s the target <= %.2f" % (label, ratio, verdict, TARGET_RATIO)
    return "%s: latency(%d)/latency(4) = %.2f (the target is stated for N=100: <= %.2f)" % (
        label, top, ratio, TARGET_RATIO)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m ledgerlink.ledger.scale", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", help="comma-separated validator counts (default %s; with --full %s)"
                   % (",".join(map(str, SIZES_DEFAULT)), ",".join(map(str, SIZES_FULL))))
    p.add_argument("--blocks", type=int, help="measured blocks per size and round (default %d; with --full %d)"
                   % (BLOCKS_DEFAULT, BLOCKS_FULL))
    p.add_argument("--rounds", type=int, help="rounds over all sizes, pooled (default 1; with --full %d)"
                   % ROUNDS_FULL)
    p.add_argument("--network", choices=sorted(ONE_WAY_MS), help="one network (default lan; with --full both)")
    p.add_argument("--seed", type=int, default=0, help="draws the validator each block's transactions go to")
    p.add_argument("--txs", type=int, default=TXS_PER_BLOCK, help="transactions per block")
    p.add_argument("--full", action="store_true", help="the whole table: every size on both networks")
    p.add_argument("--bandwidth-mbit", type=float, default=BANDWIDTH_MBIT_S,
                   help="uplink per validator in Mbit/s (default %(default)s; 0: unlimited, a what-if)")
    p.add_argument("--no-verify-cost", action="store_true",
                   help="what-if: leave signature verification time out of virtual time (CPU columns stay measured)")
    p.add_argument("--by-kind", action="store_true",
                   help="under each row: signature verifications per block and replica by what was handled")
    p.add_argument("--threshold", action="store_true",
                   help="validators hold FROST keys: a second table with the threshold certificates' latency "
                        "after commit, the messages and bytes they add, and the gateway's header check (votes vs FROST)")
    p.add_argument("--real", action="store_true", help="also rows from real node processes on loopback")
    p.add_argument("--real-sizes", help="validator counts of the real rows (default %s; with --delay-ms %s)"
                   % (",".join(map(str, REAL_SIZES_DEFAULT)), ",".join(map(str, REAL_DELAY_SIZES_DEFAULT))))
    p.add_argument("--real-txs", type=int, default=REAL_TXS, help="closed-loop transactions per real size")
    p.add_argument("--delay-ms", help="with --real: comma-separated one-way delays (e.g. 0.5,20) between the nodes, "
                                      "each a set of rows through a delay relay (sizes default %s)"
                   % ",".join(map(str, REAL_DELAY_SIZES_DEFAULT)))
    p.add_argument("--relay-bandwidth-mbit", type=float, default=0.0,
                   help="with --delay-ms: the relay's cap per connection and direction (default 0: none)")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else list(SIZES_FULL if args.full else SIZES_DEFAULT)
    if any(s < 1 for s in sizes):
        p.error("sizes must be positive")
    blocks = args.blocks or (BLOCKS_FULL if args.full else BLOCKS_DEFAULT)
    rounds = args.rounds or (ROUNDS_FULL if args.full else 1)
    networks = [args.network] if args.network else (["lan", "wan"] if args.full else ["lan"])
    real_sizes = [int(x) for x in args.real_sizes.split(",")] if args.real_sizes else []
    delays: list[float] = []
    if args.delay_ms:
        try:
            delays = [float(x) for x in args.delay_ms.split(",")]
        except ValueError:
            p.error("--delay-ms takes comma-separated numbers")
        if not args.real or any(d < 0 for d in delays):
            p.error("--delay-ms needs --real and delays >= 0")
    wall0 = time.perf_counter()
    for line in header_lines(networks, blocks, rounds, args.txs, args.seed, args.bandwidth_mbit,
                             not args.no_verify_cost):
        print(line)
    verdicts = []
    status = 0
    for network in networks:
        runs: dict[int, list[SimRow]] = {n: [] for n in sizes}
        for r in range(rounds):
            for n in sizes:
                runs[n].append(simulate(n, network, blocks, args.seed + r, args.txs, args.bandwidth_mbit,
                                        not args.no_verify_cost, args.threshold))
                if rounds > 1:
                    print("  (%s round %d N=%d done)" % (network, r + 1, n), file=sys.stderr, flush=True)
        rows = [combine(runs[n]) for n in sizes]
        base = next((row.latency_p50_ms for row in rows if row.n == 4), None)
        for row in rows:
            line = sim_line(row, base)
            if not row.chains_identical:
                line += "  CHAINS DIFFER"
                status = 1
            print(line, flush=True)
            if args.by_kind:
                print("  verifications per block per replica, by what was handled: " + ", ".join(
                    "%s %.1f" % (k, row.per_block_replica(v)) for k, v in sorted(row.verifies_by_kind.items()) if v))
        verdicts.append(_ratio_verdict(rows, "sim-" + network))
        if args.threshold:
            print("threshold certificates (t = 2f+1, FROST(P-256, SHA-256)): tcert = a replica's commit to its "
                  "verified certificate; +msgs, +KB: what they add per block; gw: one header check by a gateway "
                  "(CPython backend), 2f+1 ES256 votes vs one FROST verification")
            print(" ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(THRESHOLD_COLUMNS,
                                                                                            _THRESHOLD_WIDTHS))))
            for row in rows:
                print(threshold_line(row), flush=True)
    if args.real and delays:
        from ledgerlink.ledger.delay_relay import measure_one_way_ms
        sizes_real = real_sizes or list(REAL_DELAY_SIZES_DEFAULT)
        print("real, delayed: node processes on loopback, every node-to-node connection through a delay relay "
              "(userspace, per chunk, in order, no loss or jitter; not netem: see the module docstring; "
              "relay cap %s); %d CPU(s), consensus %s; %d closed-loop txs per size; KB/blk: peer bytes the "
              "relay carried per block; the relay's own CPU per block follows each row (same CPUs)"
              % ("%.0f Mbit/s" % args.relay_bandwidth_mbit if args.relay_bandwidth_mbit else "none",
                 os.cpu_count() or 0, REAL_CONSENSUS, args.real_txs))
        for d in delays:
            held = measure_one_way_ms(d)
            print("  relay %g ms: one-way hold measured through it median %.2f ms, p99 %.2f ms (%d probes)"
                  % (d, statistics.median(held), percentile(held, 99), len(held)), flush=True)
        for d in delays:
            delayed_rows: list[RealRow] = []
            for n in sizes_real:
                row = real_run(n, args.real_txs, d, args.relay_bandwidth_mbit)
                base = next((r.latency_p50_ms for r in delayed_rows if r.n == 4 and not r.skipped),
                            row.latency_p50_ms if n == 4 and not row.skipped else None)
                delayed_rows.append(row)
                print(real_line(row, base), flush=True)
                if row.skipped:
                    status = 1
            verdicts.append(_ratio_verdict(delayed_rows, real_label(d)))
    elif args.real:
        real_rows: list[RealRow] = []
        print("real: node processes on loopback (no netem delay), %d CPU(s), SQLite synchronous=FULL, consensus %s; "
              "%d closed-loop txs per size, each to the next node; latency: submit to the node's committed "
              "answer; CPU: all node processes over the run, per block and node"
              % (os.cpu_count() or 0, REAL_CONSENSUS, args.real_txs))
        for n in real_sizes or list(REAL_SIZES_DEFAULT):
            row = real_run(n, args.real_txs)
            base = next((r.latency_p50_ms for r in real_rows if r.n == 4 and not r.skipped),
                        row.latency_p50_ms if n == 4 and not row.skipped else None)
            real_rows.append(row)
            print(real_line(row, base), flush=True)
        verdicts.append(_ratio_verdict(real_rows, "real-lo"))
        print("(rows with a delay between the nodes: --delay-ms 0.5,20, through a userspace delay relay; "
              "netem here: %s)" % (netem_unavailable() or "available"))
    for v in verdicts:
        if v:
            print(v)
    print("(took %.0f s wall)" % (time.perf_counter() - wall0))
    return status


if __name__ == "__main__":
    sys.exit(main())
