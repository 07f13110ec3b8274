"""Benchmark of one gateway process on a live site: ``python3 -m ledgerlink.gateway.bench``.

Starts a ``Stack`` (mosquitto on loopback, a 4-node PBFT ledger, the gateway) in a temporary directory,
registers ``--devices`` simulated devices (their own keys; admin-signed ``tx-register`` in batches of
``--reg-batch`` submitted concurrently) and prints, with the time each setup step took:

- the ceiling: single-core ES256 verifications per second of the cpython backend, in this process, the
  best of four half-second runs, at the start and again at the end (the targets use the higher);
- first contact: every device sends one signed reading (the gateway fetches and checks one ledger
  record proof per device);
- signed-mode throughput: ``--messages`` pre-made COSE_Sign1 readings, at most ``--window`` in flight
  (published and not yet republished as verified, so the broker never drops queued messages);
- receipt latency: pre-made signed readings published at ``--rate`` msg/s for ``--latency-s`` seconds,
  publish to receipt on the device's down topic, p50/p99;
- session-mode throughput: ``--session-devices`` devices open ECQV sessions with the gateway's fog CA
  (the rest stay in signed mode), then ``--messages`` pre-made COSE_Encrypt0 readings of those devices,
  each device sending its chain statement after every ``--chain-every`` of its readings (default: the
  clients' ``session_chain.EVERY_FRAMES``; devices start at spread-out points of their chains, so a run
  has one statement per that many readings from the first run on). Its CPU is given per reading, the
  statements' cost included.

``--against PATH`` compares this code with another checkout of the project at PATH (e.g. a
``git worktree`` of an earlier commit): ``--rounds`` times, it runs this bench with the other arguments
under PATH's code and under this code, in alternating order, and prints the gateway CPU per message of
both (signed; session per reading) in each round, their medians and the ratio.

``--repeat N`` runs each throughput phase N times and the table gives the medians (the host's speed may
drift within a run; each run's line is printed too). ``--mqtt-client`` picks the gateway's MQTT client (``mqtt.client`` of ``ledgerlink.gateway.main``); the
load generator itself publishes and observes through ``ledgerlink.gateway.mqtt_client`` (QoS 1 out in
batches, QoS 0 in), so it takes less of the shared cores than a per-message client would.
All frames are made before their phase is timed. Targets: signed >= half the verify ceiling per
gateway process, session >= 3x signed, p99 receipt latency < 500 ms at 1,000 msg/s. The machine's
other load counts: broker, ledger nodes, gateway and this load generator share the same cores, so the
table also gives the gateway process's CPU time per accepted message (user + system, from /proc), which
depends less on that load: the signed-mode target in those terms is at most 2 / ceiling seconds per message
(half the ceiling's rate on one full core), session mode a third of signed mode. Each throughput run also
prints the CPU per message of the broker, the ledger nodes and the load generator, and the table gives what
the host's cores leave the gateway per message at the lowest rates that meet the targets (half the ceiling
signed; 1.5 times the ceiling in session mode), if the rest keeps its measured cost per message.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ledgerlink.core import cbor
from ledgerlink.protocol import session_chain
from ledgerlink.core.backend import get_backend
from ledgerlink.device.core import MODE_SESSION, MODE_SIGNED, DeviceCore, MemoryCounter, SequenceCounter, SessionOpened
from ledgerlink.gateway.mqtt_client import MqttClient
from ledgerlink.protocol import ledger_tx as enc
from ledgerlink.tools.stack import Stack

SITE = "bench"
CORES = os.cpu_count() or 1
LIMITS = {"rate_per_s": 100000, "burst": 100000, "registry_ttl_ms": 3_600_000, "registry_timeout_ms": 60_000,
          "max_pending": 100_000, "max_devices": 1_000_000}


def now_ms() -> int:
    return int(time.time() * 1000)


def verify_ceiling(seconds: float = 2.0, parts: int = 4) -> float:
    """ES256 verifications per second on one core with the cpython backend: the best of ``parts`` runs
    of ``seconds / parts`` each (other load on the host only ever lowers a run)."""
    crypto = get_backend("cpython")
    priv = crypto.generate_private_key()
    pub = crypto.public_key(priv, True)
    msgs = [os.urandom(100) for _ in range(16)]
    sigs = [crypto.sign(priv, m) for m in msgs]
    best = 0.0
    for _ in range(parts):
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / parts:
            for m, s in zip(msgs, sigs):
                if not crypto.verify(pub, m, s):
                    raise AssertionError("verify failed")
            n += len(msgs)
        best = max(best, n / (time.perf_counter() - start))
    return best


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` (Linux /proc; zeros elsewhere)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tck, int(fields[12]) / tck
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc; 0 elsewhere)."""
    return sum(cpu_times(pid))


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot (Linux /proc/stat; zeros elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return sum(ticks) - idle, sum(ticks)


class CpuShares:
    """CPU seconds of the gateway, the broker, the ledger nodes and this load generator over a phase."""

    def __init__(self, stack: Stack) -> None:
        self.roles = {"gateway": [stack.gateway.pid], "broker": [stack.broker.pid],
                      "ledger": [p.pid for p in stack.cluster.procs.values()],
                      "load generator": [os.getpid()]}
        self.start()

    def _now(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in self.roles.items()}

    def start(self) -> None:
        self.t0, self.m0 = self._now(), machine_jiffies()

    def per_message(self, n: int) -> tuple[dict[str, float], float]:
        """CPU ms per message of each role since ``start`` and the machine's busy share (0..1)."""
        t1, (busy1, total1) = self._now(), machine_jiffies()
        busy0, total0 = self.m0
        share = (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan")
        return {role: cpu_ms_per(t1[role] - self.t0[role], n) for role in t1}, share


def cpu_ms_per(cpu_s: float, n: int) -> float:
    """CPU milliseconds per message (NaN without messages)."""
    return 1000 * cpu_s / n if n else float("nan")


def cpu_left(rate: float, others_ms: float) -> float:
    """CPU ms per message the host's cores leave the gateway at ``rate`` msg/s when everything else takes
    ``others_ms`` per message (negative: the rest alone needs more than the host has)."""
    return CORES * 1000 / rate - others_ms


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Observer:
    """QoS 0 subscriber of the verified and down topics: arrival times by frame hash.

    The load generator uses the gateway's own MQTT client (one socket, batched reads), so less of the
    two cores goes to it and more to the gateway under test."""

    def __init__(self, port: int, login: dict[str, str]) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.verified: dict[bytes, float] = {}
        self.receipts: dict[bytes, float] = {}
        self.refused: dict[int, int] = {}
        self.sessions: dict[str, Any] = {}
        self.session_handler: Callable[[str, bytes], None] | None = None
        self.client = MqttClient("127.0.0.1", port, login["username"], clean_start=True,
                                 session_expiry=0, on_messages=self._on_messages, **login)
        self.client.subscriptions.update({"ll/%s/verified/+" % SITE: 0, "ll/%s/dev/+/down" % SITE: 0})
        self.client.start()
        if not self.client.wait_connected(10):
            raise RuntimeError("observer did not connect")
        time.sleep(0.2)                                   # the SUBACK follows the CONNACK

    def _on_messages(self, c: Any, u: Any, msgs: list[Any]) -> None:
        t = time.monotonic()
        verified, receipts, others = [], [], []
        for m in msgs:
            payload = m.payload
            if "/verified/" in m.topic:
                # {..., 5: frame hash, 6: gateway name (32 hex digits)} ends the deterministic map: no full decode
                if payload[-70:-67] == b"\x05\x58\x20" and payload[-35:-32] == b"\x06\x78\x20":
                    verified.append(payload[-67:-35])
                else:
                    verified.append(cbor.loads(payload)[5])
            elif payload[:6] == b"\xa8\x00\x01\x01\x58\x20":    # receipt map {0: 1, 1: frame hash, ...}
                receipts.append(payload[6:38])
            else:
                others.append(m)
        with self.cond:
            for h in verified:
                self.verified[h] = t
            for h in receipts:
                self.receipts[h] = t
            if verified:
                self.cond.notify_all()
        for m in others:
            msg = cbor.loads(m.payload)
            if msg.get(0) == 2:
                with self.cond:
                    self.refused[msg[2]] = self.refused.get(msg[2], 0) + 1
                    self.cond.notify_all()
            elif msg.get(0) == 3 and self.session_handler is not None:
                self.session_handler(m.topic, m.payload)

    def close(self) -> None:
        self.client.stop()


class Publisher:
    def __init__(self, port: int, login: dict[str, str]) -> None:
        self.client = MqttClient("127.0.0.1", port, login["username"], clean_start=True, session_expiry=0, **login)
        self.client.start()
        if not self.client.wait_connected(10):
            raise RuntimeError("publisher did not connect")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)

    def publish_many(self, frames: list[tuple[str, bytes]]) -> None:
        self.client.publish_many([(topic, payload, False) for topic, payload in frames])

    def close(self) -> None:
        self.client.stop()


def run_closed_loop(pub: Publisher, obs: Observer, frames: list[tuple[str, bytes]], window: int,
                    stall_s: float = 30.0) -> tuple[int, float]:
    """Publish ``frames`` with at most ``window`` not yet verified or refused; (accepted, seconds).

    Progress is counted from the size of the observer's verified set (every frame of a phase is new),
    so each step costs the same however many frames were sent before it."""
    with obs.lock:
        refused0 = sum(obs.refused.values())
        verified0 = len(obs.verified)
    start = time.monotonic()
    sent = 0
    last_progress = start
    last_done = 0
    while True:
        with obs.cond:
            done = len(obs.verified) - verified0
            refused = sum(obs.refused.values()) - refused0
            if done + refused > last_done:
                last_progress = time.monotonic()
            last_done = done + refused
            if done + refused >= len(frames):
                break
            if sent - done - refused >= window or sent == len(frames):
                obs.cond.wait(0.05)
                if time.monotonic() - last_progress > stall_s:
                    break
                continue
        room = min(len(frames) - sent, window - (sent - last_done))
        if room > 0:
            pub.publish_many(frames[sent:sent + room])
            sent += room
    hashes = [hashlib.sha256(p).digest() for _, p in frames]
    with obs.lock:
        accepted = sum(1 for h in hashes if h in obs.verified)
        ends = [obs.verified[h] for h in hashes if h in obs.verified]
    return accepted, (max(ends) if ends else time.monotonic()) - start


def run_paced(pub: Publisher, obs: Observer, frames: list[tuple[str, bytes]], rate: float,
              wait_s: float = 30.0) -> tuple[list[float], float, int]:
    """Publish at ``rate`` msg/s; (publish-to-receipt latencies in s, achieved rate, frames without receipt)."""
    sent_at: dict[bytes, float] = {}
    start = time.monotonic()
    for i, (topic, payload) in enumerate(frames):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent_at[hashlib.sha256(payload).digest()] = time.monotonic()
        pub.publish(topic, payload)
    achieved = len(frames) / (time.monotonic() - start)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with obs.lock:
            if all(h in obs.receipts for h in sent_at):
                break
        time.sleep(0.1)
    with obs.lock:
        lat = [obs.receipts[h] - t for h, t in sent_at.items() if h in obs.receipts]
    return lat, achieved, len(sent_at) - len(lat)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m ledgerlink.gateway.bench", description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=10000)
    p.add_argument("--messages", type=int, default=20000, help="readings per throughput phase")
    p.add_argument("--rate", type=float, default=1000.0, help="offered msg/s of the latency phase")
    p.add_argument("--latency-s", type=float, default=10.0)
    p.add_argument("--session-devices", type=int, default=1000)
    p.add_argument("--window", type=int, default=2000,
                   help="frames in flight in the throughput phases (twice the gateway's Receive Maximum, so its queue never runs dry)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each throughput phase (new readings each run); the table gives the median of each "
                        "(use an odd count)")
    p.add_argument("--reg-batch", type=int, default=1000)
    p.add_argument("--mqtt-client", choices=("ledgerlink", "paho"),
                   help="the gateway's MQTT client (default: the gateway's default)")
    p.add_argument("--verify-threads", type=int,
                   help="the gateway's signature-checking threads (default: the gateway's default)")
    p.add_argument("--data", help="keep the stack's data here (default: a temporary directory, removed)")
    p.add_argument("--chain-every", type=int, default=session_chain.EVERY_FRAMES,
                   help="session readings per chain statement of each device (default: the clients' cadence)")
    p.add_argument("--against", metavar="PATH",
                   help="compare with the project checkout at PATH: run this bench under both, interleaved")
    p.add_argument("--rounds", type=int, default=3, help="runs under each code with --against")
    args = p.parse_args(argv)
    if args.against:
        return compare(args.against, args.rounds, strip_compare_args(sys.argv[1:] if argv is None else argv))
    crypto = get_backend("cpython")

    def say(line: str) -> None:
        print(line, flush=True)

    if args.mqtt_client:
        os.environ["LEDGERLINK_MQTT_CLIENT"] = args.mqtt_client
    if args.verify_threads:
        os.environ["LEDGERLINK_VERIFY_THREADS"] = str(args.verify_threads)
    ceiling = verify_ceiling()
    say("gateway MQTT client: %s; signature-checking threads: %s"
        % (args.mqtt_client or "default", args.verify_threads or "default"))
    say("verify ceiling: %.0f ES256 verifications/s on one core (cpython backend)" % ceiling)
    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="ll-gw-bench-"))
    stack = Stack(data, site=SITE, limits=LIMITS, batch={"max": 1024, "interval_ms": 100}, progress=say)
    t = time.monotonic()
    stack.start()
    say("stack started in %.1f s" % (time.monotonic() - t))
    obs = pub = None
    rows: list[tuple[str, str, str, str]] = []
    try:
        t = time.monotonic()
        devices = [DeviceCore(crypto.generate_private_key(), SITE, SequenceCounter(MemoryCounter(), 1 << 20),
                              stack.chain_id, stack.validators, ca_public=stack.public_key("gw-ca"), backend="cpython")
                   for _ in range(args.devices)]
        reqs = [enc.registration_request(d._priv, 1, {"name": "bench-%d" % i}, now_ms()) for i, d in enumerate(devices)]
        say("made %d device keys and registration requests in %.1f s" % (len(devices), time.monotonic() - t))
        t = time.monotonic()
        for i in range(0, len(reqs), args.reg_batch):
            stack.register(reqs[i:i + args.reg_batch], accounts=False)      # the load generator publishes for them
        reg_s = time.monotonic() - t
        say("registered %d devices on the ledger in %.1f s (%.0f tx/s), height %d"
            % (len(devices), reg_s, len(devices) / reg_s, stack.height()))
        obs = Observer(stack.broker_port, stack.access.add("ll-bench-observer", "operator"))
        pub = Publisher(stack.broker_port, stack.access.add("ll-bench-pub", "operator"))

        gw_pid = stack.gateway.pid
        first = [(d.up_topic, d.reading({"t": 0}, now_ms()).payload) for d in devices]
        cpu0 = cpu_seconds(gw_pid)
        n, secs = run_closed_loop(pub, obs, first, args.window, stall_s=60)
        first_cpu = cpu_ms_per(cpu_seconds(gw_pid) - cpu0, n)
        say("first contact: %d of %d devices accepted in %.1f s (%.0f/s, one ledger record proof each); "
            "gateway CPU %.3f ms per message" % (n, len(first), secs, n / secs, first_cpu))

        chained: dict[int, int] = {}     # session device (index in its pool) -> readings since its last statement

        def make_frames(count: int, pool: list[DeviceCore], mode: str = MODE_SIGNED) -> list[tuple[str, bytes]]:
            if mode != MODE_SESSION:
                return [(pool[i % len(pool)].up_topic, pool[i % len(pool)].reading({"t": i}, now_ms(), mode).payload)
                        for i in range(count)]
            every = max(1, args.chain_every)
            frames = []
            for i in range(count):
                j = i % len(pool)
                d = pool[j]
                frames.append((d.up_topic, d.reading({"t": i}, now_ms(), mode).payload))
                since = chained.setdefault(j, j * every // len(pool)) + 1       # spread-out starting points
                chained[j] = since
                if since >= every:
                    statement = d.chain_statement(now_ms(), close=True)
                    chained[j] = 0
                    if statement is not None:
                        frames.append((d.up_topic, statement.payload))
            return frames

        def repeated(name: str, count: int, pool: list[DeviceCore], mode: str) -> tuple[float, float, float, float]:
            """Medians over ``args.repeat`` closed-loop runs of: msg/s, gateway CPU ms per message, CPU ms per
            message of everything else on the host (broker, ledger, load generator) and the machine's busy share."""
            runs = []
            for _ in range(max(1, args.repeat)):
                t = time.monotonic()
                frames = make_frames(count, pool, mode)
                say("made %d %s readings in %.1f s" % (len(frames), name, time.monotonic() - t))
                if mode == MODE_SESSION:
                    say("  of them %d chain statements: each device states its chain every %d readings (clients: "
                        "every %d session frames, or %d s after the chain's first frame with no more frames, and at "
                        "close); CPU is per reading, the statements' cost included"
                        % (len(frames) - count, args.chain_every, session_chain.EVERY_FRAMES,
                           session_chain.EVERY_MS // 1000))
                runs.append(closed_loop(name, frames, count))
            return tuple(percentile([r[k] for r in runs], 50) for k in range(4))  # type: ignore[return-value]

        def closed_loop(name: str, frames: list[tuple[str, bytes]], readings: int) -> tuple[float, float, float, float]:
            """One run of ``repeated`` with ``args.window`` frames in flight; CPU per message is per reading (the
            ``readings`` among ``frames``; the rest are chain statements)."""
            user0, sys0 = cpu_times(gw_pid)
            shares.start()
            n, secs = run_closed_loop(pub, obs, frames, args.window)
            all_accepted = n
            n = n * readings // len(frames)
            user1, sys1 = cpu_times(gw_pid)
            per, busy = shares.per_message(n)
            cpu = user1 - user0 + sys1 - sys0
            others = sum(v for role, v in per.items() if role != "gateway")
            say("%s mode: %d of %d accepted in %.2f s; gateway process CPU %.0f%% of one core, %.3f ms per %s "
                "(user %.3f, system %.3f)" % (name, all_accepted, len(frames), secs, 100 * cpu / secs, cpu_ms_per(cpu, n),
                                              "reading" if readings < len(frames) else "message",
                                              cpu_ms_per(user1 - user0, n), cpu_ms_per(sys1 - sys0, n)))
            say("  CPU ms per message: %s; machine %.0f%% busy (%d cores)" % (
                ", ".join("%s %.3f" % kv for kv in per.items()), 100 * busy, CORES))
            return n / secs, cpu_ms_per(cpu, n), others, busy

        shares = CpuShares(stack)
        signed_rate, signed_cpu, signed_others, signed_busy = repeated("signed", args.messages, devices, MODE_SIGNED)

        count = int(args.rate * args.latency_s)
        frames = make_frames(count, devices)
        cpu0 = cpu_seconds(gw_pid)
        lat, achieved, missing = run_paced(pub, obs, frames, args.rate)
        latency_cpu = cpu_ms_per(cpu_seconds(gw_pid) - cpu0, len(lat))
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        say("latency: %d readings at %.0f msg/s offered (%.0f achieved): p50 %.0f ms, p99 %.0f ms, %d without receipt; "
            "gateway CPU %.3f ms per message" % (count, args.rate, achieved, p50, p99, missing, latency_cpu))

        k = min(args.session_devices, len(devices))
        subset = devices[:k]
        by_topic = {d.down_topic: d for d in subset}
        opened: list[Any] = []
        lock = threading.Lock()

        def on_session(topic: str, payload: bytes) -> None:
            d = by_topic.get(topic)
            if d is None:
                return
            res = d.handle_down(payload, now_ms())
            if isinstance(res, SessionOpened):
                with lock:
                    opened.append(d)

        obs.session_handler = on_session
        t = time.monotonic()
        requests = [d.session_request(now_ms()) for d in subset]
        for r in requests:
            pub.publish(r.topic, r.payload)
        deadline = time.monotonic() + 120
        while len(opened) < k and time.monotonic() < deadline:
            time.sleep(0.05)
        sess_s = time.monotonic() - t
        say("sessions: %d of %d devices opened ECQV sessions with the fog CA in %.1f s" % (len(opened), k, sess_s))
        t = time.monotonic()
        db = data / "gateway.db"
        while time.monotonic() - t < 300:
            con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
            pending = con.execute("SELECT count(*) FROM certs WHERE status = 'pending'").fetchone()[0]
            con.close()
            if pending == 0:
                break
            time.sleep(0.5)
        say("certificate records on the ledger: done in %.1f s (%d pending)" % (time.monotonic() - t, pending))
        pool = [d for d in subset if d.session is not None]
        session_rate = session_cpu = session_others = session_busy = float("nan")
        if pool:
            session_rate, session_cpu, session_others, session_busy = repeated("session", args.messages, pool, MODE_SESSION)
        with obs.lock:
            refused = dict(obs.refused)
        if refused:
            say("refusals seen: %s" % refused)

        ceiling_end = verify_ceiling()
        say("verify ceiling again: %.0f /s" % ceiling_end)
        best = max(ceiling, ceiling_end)
        rows = [
            ("verify ceiling (1 core, cpython; start / end)", "%.0f / %.0f /s" % (ceiling, ceiling_end), "-", "-"),
            ("signed mode, accepted", "%.0f msg/s" % signed_rate, ">= %.0f msg/s" % (best / 2),
             "met" if signed_rate >= best / 2 else "NOT met"),
            ("session mode, accepted (%d devices)" % len(pool), "%.0f msg/s" % session_rate,
             ">= %.0f msg/s" % (3 * signed_rate), "met" if session_rate >= 3 * signed_rate else "NOT met"),
            ("receipt latency p50 at %.0f msg/s" % args.rate, "%.0f ms" % p50, "-", "-"),
            ("receipt latency p99 at %.0f msg/s" % args.rate, "%.0f ms" % p99, "< 500 ms",
             "met" if p99 < 500 and missing == 0 else "NOT met"),
            ("gateway CPU per message, first contact", "%.3f ms" % first_cpu, "-", "-"),
            ("gateway CPU per message, signed", "%.3f ms" % signed_cpu, "<= %.3f ms" % (2000 / best),
             "met" if signed_cpu <= 2000 / best else "NOT met"),
            ("gateway CPU per message, session (per reading)", "%.3f ms" % session_cpu, "<= %.3f ms" % (signed_cpu / 3),
             "met" if session_cpu <= signed_cpu / 3 else "NOT met"),
            ("gateway CPU per message, latency phase", "%.3f ms" % latency_cpu, "-", "-"),
            ("signed msg/s at one full core (1000 / CPU ms)", "%.0f msg/s" % (1000 / signed_cpu), "-", "-"),
            ("CPU per message of the rest (broker, ledger, load gen.), signed / session",
             "%.3f / %.3f ms" % (signed_others, session_others), "-", "-"),
            ("machine busy, signed / session (%d cores)" % CORES,
             "%.0f%% / %.0f%%" % (100 * signed_busy, 100 * session_busy), "-", "-"),
            # what the host leaves the gateway per message at the lowest rates that meet the targets, if the
            # rest keeps its measured cost per message
            ("CPU left for the gateway per signed message at %.0f msg/s" % (best / 2),
             "%.3f ms" % cpu_left(best / 2, signed_others), "-", "-"),
            ("CPU left for the gateway per session message at %.0f msg/s" % (1.5 * best),
             "%.3f ms" % cpu_left(1.5 * best, session_others), "-", "-"),
        ]
        w = max(len(r[0]) for r in rows)
        say("")
        say("%-*s  %16s  %16s  %s" % (w, "gateway bench (%d devices)" % len(devices), "measured", "target", ""))
        for r in rows:
            say("%-*s  %16s  %16s  %s" % (w, *r))
    finally:
        for c in (pub, obs):
            if c is not None:
                c.close()
        stack.stop()
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)
    return 0


ATTEMPTS = 3                       # runs of one compared bench before the comparison gives up
AB_ROWS = {"signed": r"gateway CPU per message, signed\s+([\d.]+) ms",
           "session": r"gateway CPU per message, session[^\d]*?([\d.]+) ms"}


def strip_compare_args(argv: list[str]) -> list[str]:
    """``argv`` without ``--against`` and ``--rounds`` (and their values): the arguments of each compared run."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--against", "--rounds"):
            skip = True
        elif not a.startswith(("--against=", "--rounds=")):
            out.append(a)
    return out


def known_args(help_text: str, argv: list[str]) -> list[str]:
    """``argv`` without the options (and their values) that a bench whose ``--help`` is ``help_text`` lacks."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        takes_value = a.startswith("--") and "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        n = 2 if takes_value else 1
        if not a.startswith("--") or a.split("=")[0] in help_text.split():
            out += argv[i:i + n]
        i += n
    return out


def checkout_path(root: Path, into: Path) -> str:
    """A PYTHONPATH entry under which ``import ledgerlink`` (and ledgerlink.gateway, .ledger, .tools) loads the
    project checkout at ``root`` instead of the installed one (setup.cfg's package_dir, as symlinks)."""
    parts = into / "parts"
    (into / "ledgerlink").mkdir(parents=True)
    parts.mkdir()
    for name in ("gateway", "ledger", "tools"):
        (parts / name).symlink_to(root / name)
    init = root / "sdk" / "__init__.py"
    (into / "ledgerlink" / "__init__.py").write_text(
        "__path__ = [%r, %r]\nexec(compile(open(%r).read(), %r, 'exec'))\n"
        % (str(root / "sdk"), str(parts), str(init), str(init)))
    return str(into)


def compare(against: str, rounds: int, bench_args: list[str]) -> int:
    """Run the bench ``rounds`` times under the checkout at ``against`` (A) and under this code (B), alternating
    which goes first; print the gateway CPU per message of each mode in each run, the medians and B / A."""
    root = Path(against).resolve()
    if not (root / "sdk" / "__init__.py").is_file() or not (root / "gateway" / "bench.py").is_file():
        print("%s is not a checkout of this project (no sdk/__init__.py, gateway/bench.py)" % root, file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-ab-"))
    try:
        env_a = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [checkout_path(root, tmp / "a")] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        env_b = dict(os.environ)
        this = Path(__file__).resolve().parents[1]
        print("A: %s (git %s)\nB: %s (git %s)\nbench arguments: %s" % (
            root, _git_head(root), this, _git_head(this), " ".join(bench_args) or "(defaults)"), flush=True)
        help_a = subprocess.run([sys.executable, "-m", "ledgerlink.gateway.bench", "--help"], env=env_a,
                                capture_output=True, text=True).stdout.replace("[", " ").replace("]", " ")
        args_a = known_args(help_a, bench_args)
        if args_a != bench_args:
            print("A's bench lacks some options; its arguments: %s" % " ".join(args_a), flush=True)
        got: dict[str, dict[str, list[float]]] = {"A": {m: [] for m in AB_ROWS}, "B": {m: [] for m in AB_ROWS}}
        for r in range(rounds):
            for label in ("A", "B") if r % 2 == 0 else ("B", "A"):
                for _ in range(ATTEMPTS):        # a setup step may time out on a busy host (ledger registrations)
                    out = subprocess.run([sys.executable, "-m", "ledgerlink.gateway.bench",
                                          *(args_a if label == "A" else bench_args)],
                                         env=env_a if label == "A" else env_b, capture_output=True, text=True)
                    values = {m: re.search(rx, out.stdout) for m, rx in AB_ROWS.items()}
                    if out.returncode == 0 and all(values.values()):
                        break
                    print("round %d, %s: the bench failed (exit %d), again" % (r + 1, label, out.returncode), flush=True)
                else:
                    print("round %d, %s: the bench failed (exit %d)\n%s\n%s" % (r + 1, label, out.returncode,
                          out.stdout[-3000:], out.stderr[-3000:]), file=sys.stderr)
                    return 1
                for m, match in values.items():
                    got[label][m].append(float(match.group(1)))
                cadence = re.search(r"each device states its chain every (\d+) readings", out.stdout)
                print("round %d, %s: gateway CPU signed %.3f ms/message, session %.3f ms/reading%s" % (
                    r + 1, label, got[label]["signed"][-1], got[label]["session"][-1],
                    " (a chain statement every %s readings)" % cadence.group(1) if cadence else
                    " (no chain statements)"), flush=True)
        print("")
        print("%-34s %10s %10s %8s" % ("gateway CPU (median of %d runs)" % rounds, "A", "B", "B / A"))
        for m in AB_ROWS:
            a, b = percentile(got["A"][m], 50), percentile(got["B"][m], 50)
            ratios = [y / x for x, y in zip(got["A"][m], got["B"][m]) if x]
            print("%-34s %7.3f ms %7.3f ms %8.2f   (per round: %s)" % (
                "signed, per message" if m == "signed" else "session, per reading", a, b, b / a if a else
                float("nan"), ", ".join("%.2f" % x for x in ratios)))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _git_head(root: Path) -> str:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() or "?") + (" with local changes" if dirty else "")


if __name__ == "__main__":
    raise SystemExit(main())
