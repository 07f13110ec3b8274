"""Benchmark of a local 4-node ledger cluster (real processes on loopback).

``python3 -m ledgerlink.ledger.bench`` starts a fresh cluster in a temporary directory and prints:
committed tx/s at saturation (many concurrent submitters), commit latency p50/p99 at a fixed offered
rate of 100 and 1,000 tx/s (submit to acknowledged commit), the same with one backup killed, and the
time to verify a header certificate and a registry record proof on the client side. Load is
``anchor`` transactions of the genesis gateway, pre-signed before each phase so that the signing cost
of the load generator does not count. At saturation ``--concurrency`` submissions are in flight at
all times (pipelined over one connection per node), one transaction per request and then (as a
gateway submits) ``--submit-batch`` transactions per ``submit_many`` request; the CPU time the node
processes spent per committed transaction is printed as well: on a shared machine it varies much
less than the rates.

``python3 -m ledgerlink.ledger.bench --byzantine`` measures the issue-17 targets instead: for each
attack a fresh 4-node cluster gets ``BYZ_RATE`` (150) tx/s on its honest nodes; the attack runs
from ``--before-s`` to ``--before-s + --attack-s`` and the honest nodes' block rate is measured
before (unattacked), during, and in 1 s windows after it, with their peak RSS and a safety audit
(``audit``: certificates as a device checks them, one chain, no transaction twice, every admitted
transaction committed). Attacks: a rogue validator (``ledgerlink.ledger.rogue``, its real key; the
primary of view 0 for ``slow`` and ``equivocate``, a backup for the floods) and keyless
connections (``ledgerlink.ledger.attacks``) on every node. Targets: during the attack at least 70%
of the unattacked block rate, full rate (90% of it over 1 s) again within 5 s after it, RSS under
200 MB, safety in every run. Each row shows the unattacked and attacked block rates, their ratio,
the recovery time, the peak RSS, safety, and the honest nodes' highest view at the start and end of
the attack (a rogue primary attacks only while it leads a view); ``--attacks slow,equivocate``
runs a subset, ``--repeat N`` runs each N times and prints medians, and the attack ``none`` is a
control run (the same phases, no attack).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import statistics
import tempfile
import threading
import time
from typing import Any

from ledgerlink.core import cbor
from ledgerlink.protocol import spv
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.client import AsyncLedgerClient
from ledgerlink.ledger.cluster import LocalCluster
from ledgerlink.ledger.state import RecordKind, encoding as enc


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux /proc), or None where unavailable."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _cluster_cpu(cluster: LocalCluster, live: list[int]) -> float | None:
    total = 0.0
    for i in live:
        proc = cluster.procs.get(i)
        t = None if proc is None else _cpu_seconds(proc.pid)
        if t is None:
            return None
        total += t
    return total


class Loader:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.gw = cluster.key("gateway")
        self.batch = 0

    def txs(self, n: int) -> list[bytes]:
        now = int(time.time() * 1000)
        out = []
        for _ in range(n):
            self.batch += 1
            out.append(enc.anchor_tx(self.cluster.config.chain_id, self.gw, self.batch, os.urandom(32), 1, now))
        return out


async def _saturate(clients: list[AsyncLedgerClient], txs: list[bytes], concurrency: int) -> tuple[float, int]:
    it = iter(txs)
    ok = 0

    async def worker(c: AsyncLedgerClient) -> None:
        nonlocal ok
        for tx in it:
            r = await c.submit(tx, wait_ms=30000)
            if r.get("status") == "committed":
                ok += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(clients[k % len(clients)]) for k in range(concurrency)))
    return time.perf_counter() - start, ok


async def _saturate_batched(clients: list[AsyncLedgerClient], txs: list[bytes], batch: int,
                            concurrency: int) -> tuple[float, int]:
    """Like ``_saturate`` with ``batch`` transactions per ``submit_many`` request."""
    chunks = iter([txs[i:i + batch] for i in range(0, len(txs), batch)])
    ok = 0

    async def worker(c: AsyncLedgerClient) -> None:
        nonlocal ok
        for chunk in chunks:
            for r in await c.submit_many(chunk, wait_ms=30000):
                if r.get("status") == "committed":
                    ok += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(clients[k % len(clients)]) for k in range(max(1, concurrency // batch))))
    return time.perf_counter() - start, ok


async def _rate(clients: list[AsyncLedgerClient], txs: list[bytes], rate: float) -> tuple[list[float], int]:
    lat: list[float] = []
    failed = 0

    async def one(c: AsyncLedgerClient, tx: bytes) -> None:
        nonlocal failed
        t0 = time.perf_counter()
        r = await c.submit(tx, wait_ms=30000)
        if r.get("status") == "committed":
            lat.append((time.perf_counter() - t0) * 1000)
        else:
            failed += 1

    tasks = []
    start = time.perf_counter()
    for k, tx in enumerate(txs):
        delay = start + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(clients[k % len(clients)], tx)))
    await asyncio.gather(*tasks)
    return lat, failed


async def _settle(client: AsyncLedgerClient, live: list[int], timeout: float = 20.0) -> None:
    """Wait until every live node has an empty pool and the same height (the backlog of the previous
    phase is worked off), so that a fixed-rate phase measures the steady state."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        infos = [await client.request_to(i, "info") for i in live]
        if len({r["height"] for r in infos}) == 1 and not any(r["pool"] for r in infos):
            return
        await asyncio.sleep(0.1)


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def _run(cluster: LocalCluster, loader: Loader, args: argparse.Namespace, live: list[int]) -> dict[str, Any]:
    clients = [AsyncLedgerClient(cluster.config, prefer=i) for i in live]
    out: dict[str, Any] = {}
    try:
        await _saturate(clients, loader.txs(50), 10)                 # warm-up
        txs = loader.txs(args.saturation_txs)
        cpu0 = _cluster_cpu(cluster, live)
        secs, ok = await _saturate(clients, txs, args.concurrency)
        cpu1 = _cluster_cpu(cluster, live)
        out["saturation"] = (ok / secs, ok, secs)
        out["cpu_ms_per_tx"] = (cpu1 - cpu0) * 1000 / ok if cpu0 is not None and cpu1 is not None and ok \
            else float("nan")
        if args.submit_batch > 1:
            await _settle(clients[0], live)
            txs = loader.txs(args.saturation_txs)
            cpu0 = _cluster_cpu(cluster, live)
            secs, ok = await _saturate_batched(clients, txs, args.submit_batch, args.concurrency)
            cpu1 = _cluster_cpu(cluster, live)
            out["batched"] = (ok / secs, ok, secs)
            out["batched_cpu"] = (cpu1 - cpu0) * 1000 / ok if cpu0 is not None and cpu1 is not None and ok \
                else float("nan")
        for rate in (100, 1000):
            await _settle(clients[0], live)
            n = max(50, int(rate * args.rate_seconds))
            lat, failed = await _rate(clients, loader.txs(n), rate)
            out[rate] = (_pct(lat, 50), _pct(lat, 99), len(lat), failed)
    finally:
        for c in clients:
            await c.close()
    return out


async def _verify_times(cluster: LocalCluster) -> tuple[float, float]:
    c = AsyncLedgerClient(cluster.config)
    be = get_backend("cpython")
    try:
        keys = list(cluster.config.validators)
        latest = (await c.latest())["certified_header"]
        gw = enc.device_id(be.public_key(cluster.key("gateway"), True))
        proof = (await c.record(RecordKind.DEVICE, gw))["proof"]
    finally:
        await c.close()
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        spv.verify_certified_header(latest, cluster.config.chain_id, keys, be)
    cert_ms = (time.perf_counter() - t0) * 1000 / reps
    header = spv.verify_certified_header(proof[1], cluster.config.chain_id, keys, be)
    t0 = time.perf_counter()
    for _ in range(reps):
        spv.verify_record(header, proof[2], proof[3], proof[4])
    proof_ms = (time.perf_counter() - t0) * 1000 / reps
    return cert_ms, proof_ms


# --- Byzantine runs -------------------------------------------------------------------------------

BYZ_RATE = 150                 # tx/s offered to the honest nodes during a Byzantine run
BYZ_KEEP = 0.70                # target: share of the unattacked block rate kept under attack
BYZ_RECOVER_S = 5.0            # target: full rate again this soon after the attack
BYZ_FULL = 0.90                # "full rate": this share of the unattacked rate over a 1 s window
BYZ_RSS_MB = 200.0
ROGUE_ATTACKS = {              # attack -> (rogue index, extra rogue arguments)
    "slow": (0, ["--hold-ms", "800"]),
    "equivocate": (0, []),
    "oversized": (3, ["--rate", "2"]),
    "fetch-flood": (3, ["--rate", "1000"]),
    "vote-flood": (3, ["--rate", "1000"]),
}
NO_ATTACK = "none"             # the control row: the same phases with no attack
KEYLESS_ATTACKS = {            # attack -> (port kind, Attack options), on every node
    "junk": ("peer", {"rate": 2.0}),
    "huge": ("peer", {}),
    "partial": ("peer", {"connections": 100}),
    "idle": ("client", {"connections": 100}),
    "hello": ("peer", {"connections": 20}),
}


def rss_mb(pid: int) -> float | None:
    """Resident set size of process ``pid`` in MB (Linux /proc), or None where unavailable."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class RateLoad:
    """A thread that offers ``rate`` anchor transactions a second to ``nodes`` in turn (one
    ``submit_many`` of rate/10 every 0.1 s, not waiting for commits); ``submitted`` holds the hash of
    every transaction a node admitted."""

    def __init__(self, cluster: LocalCluster, nodes: list[int], rate: float = BYZ_RATE) -> None:
        from ledgerlink.ledger.client import LedgerClient
        self.loader = Loader(cluster)
        self.nodes = nodes
        self.rate = rate
        self.clients = {i: LedgerClient(cluster.config_path, prefer=i, timeout=2.0) for i in nodes}
        self.submitted: list[bytes] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        k = 0
        per_tick = max(1, round(self.rate / 10))
        next_t = time.monotonic()
        while not self._stop.is_set():
            node = self.nodes[k % len(self.nodes)]
            k += 1
            txs = self.loader.txs(per_tick)
            try:
                results = self.clients[node].submit_many(txs, wait_ms=0)
                for tx, r in zip(txs, results):
                    if r.get("status") in ("pending", "committed"):
                        self.submitted.append(hashlib.sha256(tx).digest())
            except Exception:
                self.errors += 1
            next_t += 0.1
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def __enter__(self) -> "RateLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)
        for c in self.clients.values():
            c.close()


def heights(client: Any, nodes: list[int]) -> dict[int, int]:
    """Height of each of ``nodes`` (-1 for one that does not answer)."""
    out = {}
    for i in nodes:
        try:
            out[i] = client.request_to(i, "info")["height"]
        except Exception:
            out[i] = -1
    return out


def audit(cluster: LocalCluster, nodes: list[int], submitted: list[bytes] = (), wait_s: float = 20.0) -> list[str]:
    """Safety of the honest ``nodes``, checked as a device would: every block's certified header
    verifies against the validator set (2f+1 commit signatures), each header follows the one before
    and carries the tx root of its transactions, all nodes hold the same blocks, no transaction is
    committed twice; and every transaction in ``submitted`` is committed (within ``wait_s``).
    Returns the violations (empty: all held)."""
    from ledgerlink.ledger.client import LedgerClient
    from ledgerlink.ledger.consensus.messages import tx_root
    be = get_backend("cpython")
    keys = list(cluster.config.validators)
    chain_id = cluster.config.chain_id
    bad: list[str] = []
    with LedgerClient(cluster.config_path, prefer=nodes[0], timeout=10.0) as c:
        deadline = time.monotonic() + wait_s
        missing = list(submitted)
        while missing and time.monotonic() < deadline:
            missing = [h for h in missing
                       if c.request_to(nodes[0], "status", hash=h).get("status") != "committed"]
            if missing:
                time.sleep(0.2)
        if missing:
            bad.append("%d of %d admitted transactions not committed after %.0f s"
                       % (len(missing), len(submitted), wait_s))
        tops = heights(c, nodes)
        top = min(tops.values())
        seen: set[bytes] = set()
        prev = None
        for h in range(top + 1):
            blocks = [c.request_to(i, "block", height=h) for i in nodes]
            if not all(b.get("ok") for b in blocks):
                bad.append("block %d missing on a node" % h)
                break
            if len({cbor.dumps([b["certified_header"][0], b["txs"]]) for b in blocks}) != 1:
                bad.append("FORK: nodes hold different blocks at height %d" % h)
            for i, b in zip(nodes, blocks):
                try:
                    header = spv.verify_certified_header(b["certified_header"], chain_id, keys, be)
                except Exception as exc:
                    bad.append("node %d: certificate of block %d does not verify: %s" % (i, h, exc))
                    continue
                if header.tx_root != tx_root(b["txs"]):
                    bad.append("node %d: tx root of block %d" % (i, h))
                if i == nodes[0]:
                    if prev is not None and (header.prev_hash != prev.hash or header.height != prev.height + 1):
                        bad.append("broken header chain at %d" % h)
                    prev = header
                    for tx in b["txs"]:
                        th = hashlib.sha256(tx).digest()
                        if th in seen:
                            bad.append("transaction committed twice (block %d)" % h)
                        seen.add(th)
        for i in nodes[1:]:
            for h in submitted[:: max(1, len(submitted) // 50)]:
                if c.request_to(i, "status", hash=h).get("status") != "committed":
                    bad.append("node %d lacks a transaction node %d committed" % (i, nodes[0]))
                    break
    return bad


def _sampler(cluster: LocalCluster, honest: list[int], out: list[tuple[float, int, float, int]],
             stop: threading.Event) -> None:
    """Every 0.25 s: (time, lowest honest height, highest honest RSS in MB, highest honest view)
    into ``out``."""
    from ledgerlink.ledger.client import LedgerClient
    with LedgerClient(cluster.config_path, prefer=honest[0], timeout=5.0) as c:
        while not stop.is_set():
            hs, views = [], []
            for i in honest:
                try:
                    info = c.request_to(i, "info")
                    hs.append(info["height"])
                    views.append(info["view"])
                except Exception:
                    hs.append(-1)
            rss = max((rss_mb(cluster.procs[i].pid) or 0.0) for i in honest)
            out.append((time.monotonic(), min(hs), rss, max(views, default=-1)))
            stop.wait(0.25)


def _metric(cluster: LocalCluster, i: int, name: str) -> float:
    """The unlabelled metric ``name`` of node ``i`` (NaN when it cannot be read)."""
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % cluster.metrics_ports[i], timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except (OSError, ValueError, KeyError):
        pass
    return float("nan")


def _blocks_per_s(samples: list[tuple[float, int, float, int]], t0: float, t1: float) -> float:
    """Blocks a second the honest nodes committed between ``t0`` and ``t1`` (from the samples)."""
    inside = [s for s in samples if t0 <= s[0] <= t1 and s[1] >= 0]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return float("nan")
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def byzantine_run(attack: str, args: argparse.Namespace) -> dict[str, Any]:
    """One attack on a fresh cluster (see the module docstring); the measured numbers."""
    rogue = ROGUE_ATTACKS.get(attack)
    with tempfile.TemporaryDirectory() as data:
        rogues = {}
        if rogue is not None:
            rogues[rogue[0]] = ["--attack", attack, "--on-signal"] + rogue[1]
        cluster = LocalCluster(data, 4, rogues=rogues, log_level="WARNING", metrics=True)
        honest = [i for i in range(4) if i not in rogues]
        cluster.start()
        samples: list[tuple[float, int, float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sampler, args=(cluster, honest, samples, stop), daemon=True)
        keyless = None
        try:
            with RateLoad(cluster, honest, args.byz_rate) as load:
                time.sleep(1.0)
                sampler.start()
                time.sleep(args.before_s)
                mono0 = time.monotonic()
                if rogue is not None:
                    cluster.procs[rogue[0]].send_signal(signal.SIGUSR1)
                elif attack != NO_ATTACK:
                    from ledgerlink.ledger import attacks
                    port_kind, options = KEYLESS_ATTACKS[attack]
                    targets = [(a.host, a.peer_port if port_kind == "peer" else a.client_port)
                               for a in cluster.config.nodes]
                    keyless = attacks.Attack(attack, targets, chain_id=cluster.config.chain_id, **options).start()
                time.sleep(args.attack_s)
                if rogue is not None:
                    cluster.procs[rogue[0]].send_signal(signal.SIGUSR2)
                if keyless is not None:
                    keyless.stop()
                    keyless = None
                time.sleep(args.after_s)
            stop.set()
            sampler.join(10)
            demands = sum(_metric(cluster, i, "ledgerlink_node_slow_primary_demands_total") for i in honest)
            violations = audit(cluster, honest, load.submitted)
        finally:
            stop.set()
            if keyless is not None:
                keyless.stop()
            cluster.stop()
    mono1 = mono0 + args.attack_s
    base = _blocks_per_s(samples, mono0 - args.before_s, mono0)
    during = _blocks_per_s(samples, mono0, mono1)
    recovery = None
    t = mono1
    while t + 1.0 <= mono1 + args.after_s:
        if _blocks_per_s(samples, t, t + 1.0) >= BYZ_FULL * base:
            recovery = t - mono1
            break
        t += 0.25
    rss = max((s[2] for s in samples), default=float("nan"))
    views = [s[3] for s in samples if mono0 <= s[0] <= mono1]
    ok = (during >= BYZ_KEEP * base and recovery is not None and recovery <= BYZ_RECOVER_S
          and rss < BYZ_RSS_MB and not violations)
    return {"attack": attack, "rogue": rogue is not None, "base": base, "during": during, "recovery": recovery,
            "rss": rss, "violations": violations, "submitted": len(load.submitted), "ok": ok,
            "views": (views[0], views[-1]) if views else (-1, -1), "demands": demands}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for repeated runs of an attack: the median of each number (recovery: a run that did
    not recover counts as infinitely long), safety only if it held in every run, met only if the
    median row meets every target."""
    kept = [r["during"] / r["base"] if r["base"] else float("nan") for r in runs]
    recs = [r["recovery"] if r["recovery"] is not None else float("inf") for r in runs]
    rec = statistics.median(recs)
    out = dict(runs[0])
    out.update(base=statistics.median(r["base"] for r in runs), during=statistics.median(r["during"] for r in runs),
               kept=statistics.median(kept), recovery=None if rec == float("inf") else rec,
               rss=max(r["rss"] for r in runs), violations=[v for r in runs for v in r["violations"]],
               all_kept=kept)
    out["ok"] = (out["kept"] >= BYZ_KEEP and out["recovery"] is not None and out["recovery"] <= BYZ_RECOVER_S
                 and out["rss"] < BYZ_RSS_MB and not out["violations"])
    return out


def byzantine(args: argparse.Namespace) -> int:
    """Run the attacks of ``--attacks`` and print the table; 0 when every target held."""
    names = args.attacks.split(",") if args.attacks else list(ROGUE_ATTACKS) + list(KEYLESS_ATTACKS)
    for name in names:
        if name not in ROGUE_ATTACKS and name not in KEYLESS_ATTACKS and name != NO_ATTACK:
            raise SystemExit("unknown attack %r (rogue: %s; keyless: %s)"
                             % (name, ", ".join(ROGUE_ATTACKS), ", ".join(KEYLESS_ATTACKS)))
    print("ledger under attack: 4 validator processes on %d CPU(s), loopback, %d tx/s offered to the honest "
          "nodes; attack %.0f s after %.0f s unattacked, then %.0f s" % (os.cpu_count() or 0, args.byz_rate,
                                                                       args.attack_s, args.before_s, args.after_s))
    print("targets: >= %d%% of the unattacked block rate, full rate (%d%% over 1 s) within %.0f s after, "
          "RSS < %.0f MB, safety" % (BYZ_KEEP * 100, BYZ_FULL * 100, BYZ_RECOVER_S, BYZ_RSS_MB))
    if args.repeat > 1:
        print("each row: median of %d runs (kept: median of the runs' ratios, all listed; peak RSS: the "
              "highest; safety: held in every run)" % args.repeat)
    print("%-22s %10s %10s %7s %11s %9s %7s %5s  %s" % ("attack", "blocks/s", "attacked", "kept", "recovery s",
                                                         "RSS MB", "safety", "met",
                                                         "views during attack (slow-primary demands)"))
    failed = 0
    for name in names:
        runs = [byzantine_run(name, args) for _ in range(args.repeat)]
        r = _median_run(runs)
        label = ("rogue " if r["rogue"] else "keyless " if name != NO_ATTACK else "") + name
        rec = "%.2f" % r["recovery"] if r["recovery"] is not None else "> %.0f" % args.after_s
        extra = "  ".join("%d->%d (%.0f)" % (x["views"] + (x["demands"],)) for x in runs)
        if args.repeat > 1:
            extra += "  (kept: %s; recovery s: %s)" % (
                ", ".join("%.0f%%" % (100 * k) for k in r["all_kept"]),
                ", ".join("%.2f" % x["recovery"] if x["recovery"] is not None else "-" for x in runs))
        print("%-22s %10.2f %10.2f %6.0f%% %11s %9.0f %7s %5s  %s" % (
            label, r["base"], r["during"], 100 * r["kept"], rec,
            r["rss"], "held" if not r["violations"] else "BROKEN", "yes" if r["ok"] else "NO", extra), flush=True)
        for v in r["violations"]:
            print("    " + v)
        failed += not r["ok"]
    print("%d of %d attacks within the targets" % (len(names) - failed, len(names)))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python3 -m ledgerlink.ledger.bench", description=__doc__.split("\n")[0])
    p.add_argument("--saturation-txs", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=2000, help="submissions in flight at saturation")
    p.add_argument("--rate-seconds", type=float, default=2.0, help="duration of each fixed-rate phase")
    p.add_argument("--submit-batch", type=int, default=64,
                   help="transactions per submit_many request in the second saturation run (1: skip it)")
    p.add_argument("--max-batch", type=int, default=512, help="replica max_batch (txs per block)")
    p.add_argument("--batch-timeout-ms", type=int, default=0,
                   help="replica batch_timeout_ms (a block is proposed at once while none is in flight)")
    p.add_argument("--data", help="cluster directory (default: a temporary one)")
    p.add_argument("--byzantine", action="store_true",
                   help="measure the honest nodes under each attack instead (see the module docstring)")
    p.add_argument("--attacks", help="with --byzantine: comma-separated attacks (default: all)")
    p.add_argument("--attack-s", type=float, default=10.0, help="with --byzantine: how long each attack lasts")
    p.add_argument("--before-s", type=float, default=5.0, help="with --byzantine: unattacked time before it")
    p.add_argument("--after-s", type=float, default=7.0, help="with --byzantine: time measured after it")
    p.add_argument("--byz-rate", type=int, default=BYZ_RATE, help="with --byzantine: tx/s offered")
    p.add_argument("--repeat", type=int, default=1,
                   help="with --byzantine: runs of each attack, each on a fresh cluster; rows show medians")
    args = p.parse_args(argv)
    if args.byzantine:
        raise SystemExit(byzantine(args))
    tmp = None
    data = args.data
    if data is None:
        tmp = tempfile.TemporaryDirectory()
        data = tmp.name
    cluster = LocalCluster(data, 4, consensus={"max_batch": args.max_batch,
                                               "batch_timeout_ms": args.batch_timeout_ms},
                           log_level="WARNING")
    cluster.start()
    try:
        loader = Loader(cluster)
        full = asyncio.run(_run(cluster, loader, args, [0, 1, 2, 3]))
        cert_ms, proof_ms = asyncio.run(_verify_times(cluster))
        victim = 3                                                   # a backup in view 0
        cluster.kill_node(victim)
        degraded = asyncio.run(_run(cluster, loader, args, [i for i in range(4) if i != victim]))
    finally:
        cluster.stop()
        if tmp is not None:
            tmp.cleanup()
    print("ledger cluster benchmark: 4 validator processes on %d CPU(s), loopback, SQLite synchronous=FULL"
          % (os.cpu_count() or 0))
    print("%-34s %14s %14s" % ("", "4 nodes", "3 nodes (1 killed)"))
    s4, s3 = full["saturation"], degraded["saturation"]
    print("%-34s %14.0f %14.0f" % ("committed tx/s at saturation", s4[0], s3[0]))
    print("%-34s %14.2f %14.2f" % ("node CPU ms per tx at saturation", full["cpu_ms_per_tx"],
                                   degraded["cpu_ms_per_tx"]))
    if "batched" in full:
        print("%-34s %14.0f %14.0f" % ("  same, %d txs per request" % args.submit_batch, full["batched"][0],
                                       degraded["batched"][0]))
        print("%-34s %14.2f %14.2f" % ("  node CPU ms per tx", full["batched_cpu"], degraded["batched_cpu"]))
    for rate in (100, 1000):
        a, b = full[rate], degraded[rate]
        print("%-34s %14.1f %14.1f" % ("latency p50 ms at %d tx/s" % rate, a[0], b[0]))
        print("%-34s %14.1f %14.1f" % ("latency p99 ms at %d tx/s" % rate, a[1], b[1]))
        if a[3] or b[3]:
            print("%-34s %14d %14d" % ("  not committed at %d tx/s" % rate, a[3], b[3]))
    print("%-34s %14.3f" % ("verify header certificate (ms)", cert_ms))
    print("%-34s %14.3f" % ("verify registry record proof (ms)", proof_ms))
    print("(saturation: %d txs, %d in flight; fixed rates: %.0f s each; max_batch %d, batch_timeout_ms %d)"
          % (args.saturation_txs, args.concurrency, args.rate_seconds, args.max_batch, args.batch_timeout_ms))


if __name__ == "__main__":
    main()
