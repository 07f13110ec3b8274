"""Attacks on a ledger node's ports, for tests and measurements: strangers without a key, and a
validator key flooding ``fetch-blocks`` while it never reads.

``Attack(kind, targets, **options)`` runs one attack from a background thread until ``stop()``,
which returns its counts (``AttackStats``); targets are ``(host, port)`` pairs (peer or client
ports); a connection the node closes is reopened ``reconnect_s`` later. Kinds without a key:

  junk      a v1 hello, then 4 MB frames of valid but non-canonical CBOR, ``rate`` a second per target;
  huge      a hello-sized frame, then a length prefix of 4 GiB and bytes after it, reconnecting;
  partial   ``connections`` connections per target, each sending all but the last byte of a
            ``frame_size`` frame and holding it;
  idle      ``connections`` connections per target that send nothing;
  hello     connections that send a v2 hello claiming a validator, then a random signature;
  connect   ``rate`` new connections a second per target, each from the next of many source addresses
            (127.x.0.y) and dropped at once (RST): a connect flood from many hosts, which per-address
            limits do not see; the nodes can only refuse cheaply (and a firewall meter limit it).

``FetchFlood(config, index, key, targets, rate)`` (needs validator ``index``'s key, the node of that
index stopped) listens on ``index``'s peer port, proves the key in every handshake and never reads;
it dials ``targets`` (validator indices) and sends each ``rate`` signed ``fetch-blocks 0..10^6`` a second.

``python3 -m ledgerlink.ledger.attacks --attack partial --port client`` starts a 4-node cluster,
submits transactions at ``--tps`` and prints, without the attack, under it and after it: each
node's block rate, the nodes' CPU per block and per second (/proc), the attacker's CPU per second,
and RSS (``--attack fetch-flood`` runs ``FetchFlood`` as validator 3). The attacker is a process of
its own (``AttackerProcess``); on a real site it runs on another host, so for a fair measurement
on one machine ``--attacker-nice 19`` and/or ``--attacker-cpu 0.25`` (a cgroup CPU cap) lower its
share, and the output says which applied. ``--config C`` runs just the attack on a running cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Sequence

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.transport import (HELLO, MAX_HELLO_FRAME, ClusterConfig, frame, handshake_accept,
                                         handshake_dial, read_frame)

KINDS = ("junk", "huge", "partial", "idle", "hello", "connect")
JUNK_FRAME = 4 << 20


def noncanonical_frame(size: int) -> bytes:
    """``size`` bytes (at least 10) of valid CBOR that is not deterministic: an array of the uint 1
    written in two bytes (0x19 0x00 0x01), padded with a byte string."""
    count = (size - 10) // 3
    pad = size - 10 - 3 * count
    return b"\x9a" + (count + 1).to_bytes(4, "big") + b"\x19\x00\x01" * count + b"\x5a" + pad.to_bytes(4, "big") \
        + bytes(pad)


@dataclass
class AttackStats:
    """What an attack did: connections opened, closed by the node, bytes sent."""

    opened: int = 0
    closed_by_node: int = 0
    bytes_sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"opened": self.opened, "closed_by_node": self.closed_by_node, "bytes_sent": self.bytes_sent,
                "errors": dict(self.errors)}


class _Runner:
    """An event loop on a daemon thread running one coroutine until ``stop``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="ll-attack")
        self.task: asyncio.Future | None = None

    def start(self, coro: Any) -> None:
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        async def cancel_all() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self.task is not None:
            self.task.cancel()
            try:
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=10)
            except BaseException:   # noqa: BLE001 - the attack is over either way
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class Attack:
    """One keyless attack of the module docstring on ``targets`` until ``stop()``."""

    def __init__(self, kind: str, targets: Sequence[tuple[str, int]], *, rate: float = 2.0,
                 connections: int = 100, frame_size: int = 4 << 20, source: str | None = None,
                 chain_id: str = "ll-local", reconnect_s: float = 1.0) -> None:
        if kind not in KINDS:
            raise ValueError("unknown attack %r" % kind)
        self.kind = kind
        self.targets = list(targets)
        self.rate = rate
        self.connections = connections
        self.frame_size = frame_size
        self.source = source
        self.chain_id = chain_id
        self.reconnect_s = reconnect_s
        self.stats = AttackStats()
        self._runner = _Runner()
        self._junk_frame = noncanonical_frame(JUNK_FRAME) if kind == "junk" else b""

    def start(self) -> "Attack":
        self._runner.start(self._run())
        return self

    def stop(self) -> AttackStats:
        self._runner.stop()
        return self.stats

    def __enter__(self) -> "Attack":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        local = (self.source, 0) if self.source else None
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=local), 5)
        self.stats.opened += 1
        return r, w

    def _error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.stats.errors[name] = self.stats.errors.get(name, 0) + 1

    async def _run(self) -> None:
        if self.kind == "connect":
            await asyncio.gather(*(self._connect_flood(h, p, k) for k, (h, p) in enumerate(self.targets)))
            return
        per_target = self.connections if self.kind in ("partial", "idle") else 1
        tasks = [asyncio.create_task(self._connection(h, p, k)) for h, p in self.targets for k in range(per_target)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection(self, host: str, port: int, k: int) -> None:
        """One attacking connection, reopened ``reconnect_s`` after the node closes it."""
        await asyncio.sleep(k * 0.002)
        while True:
            w = None
            try:
                r, w = await self._open(host, port)
                await getattr(self, "_" + self.kind)(r, w)
            except Exception as exc:  # noqa: BLE001 - refused, reset or timed out: count it, try again
                self._error(exc)
            finally:
                if w is not None:
                    w.transport.abort()
            await asyncio.sleep(self.reconnect_s)

    async def _connect_flood(self, host: str, port: int, k: int) -> None:
        """``rate`` connections a second to one target, from source addresses in turn, each reset at once."""
        loop = asyncio.get_running_loop()
        n = k * 7919
        owed = 0.0
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            owed = min(owed + (now - last) * self.rate, self.rate)
            last = now
            while owed >= 1:
                owed -= 1
                n += 1
                src = "127.%d.0.%d" % (1 + n // 250 % 250, 1 + n % 250)   # 127.1.0.1 .. 127.250.0.250 in turn
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close sends RST
                try:
                    sock.bind((src, 0))
                    await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 1.0)
                    self.stats.opened += 1
                except Exception as exc:  # noqa: BLE001 - refused or timed out: count it, go on
                    self._error(exc)
                finally:
                    sock.close()

    async def _send(self, w: asyncio.StreamWriter, data: bytes) -> None:
        w.write(data)
        await w.drain()
        self.stats.bytes_sent += len(data)

    async def _wait_closed(self, r: asyncio.StreamReader) -> None:
        while await r.read(1 << 16):
            pass
        self.stats.closed_by_node += 1

    async def _junk(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self._send(w, frame(cbor.dumps(["ledgerlink-peer-v1", self.chain_id, 1])))
        closed = asyncio.ensure_future(self._wait_closed(r))
        try:
            while not closed.done():
                await self._send(w, frame(self._junk_frame))
                await asyncio.sleep(1 / self.rate)
        finally:
            closed.cancel()

    async def _huge(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self._send(w, frame(os.urandom(64)) + b"\xff\xff\xff\xff" + os.urandom(1 << 16))
        await self._wait_closed(r)
        await asyncio.sleep(1 / self.rate)

    async def _partial(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        size = self.frame_size
        await self._send(w, struct.pack(">I", size))
        chunk = bytes(1 << 16)
        left = size - 1
        closed = asyncio.ensure_future(self._wait_closed(r))
        try:
            while left > 0 and not closed.done():
                n = min(left, len(chunk))
                await self._send(w, chunk[:n])
                left -= n
            await closed
        finally:
            closed.cancel()

    async def _idle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self._wait_closed(r)

    async def _hello(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await self._send(w, frame(cbor.dumps([HELLO, self.chain_id, 1, 0, os.urandom(32)])))
        try:
            await asyncio.wait_for(read_frame(r, MAX_HELLO_FRAME), 5)
        except Exception as exc:  # noqa: BLE001 - whatever the node does, the next attempt follows
            self._error(exc)
        await self._send(w, frame(cbor.dumps(os.urandom(64))))
        await self._wait_closed(r)
        await asyncio.sleep(1 / self.rate)


class FetchFlood:
    """Validator ``index`` (its node stopped) asking ``targets`` for blocks 0..10^6 ``rate`` times a second
    each and reading nothing the nodes send it."""

    def __init__(self, config: ClusterConfig, index: int, key: bytes, targets: Sequence[int],
                 rate: float = 1000.0, receive_buffer: int | None = None) -> None:
        """``receive_buffer``: SO_RCVBUF of the connections the nodes dial (default: the kernel's)."""
        self.config = config
        self.receive_buffer = receive_buffer
        self.index = index
        self.key = key
        self.targets = list(targets)
        self.rate = rate
        self.sent = 0
        self.accepted = 0
        self.crypto = get_backend("cpython")
        self._runner = _Runner()
        self._held: list[asyncio.StreamWriter] = []

    def start(self) -> "FetchFlood":
        self._runner.start(self._run())
        return self

    def stop(self) -> dict[str, int]:
        self._runner.stop()
        return {"sent": self.sent, "accepted": self.accepted}

    def __enter__(self) -> "FetchFlood":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(handshake_accept(r, w, self.config, self.index, self.key, self.crypto), 5)
        except Exception:  # noqa: BLE001 - a failed handshake is the node's business
            w.transport.abort()
            return
        self.accepted += 1
        w.transport.pause_reading()               # never read what the node sends
        self._held.append(w)

    async def _run(self) -> None:
        me = self.config.nodes[self.index]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)   # inherited by accepted ones
        sock.bind((me.host, me.peer_port))
        server = await asyncio.start_server(self._accept, sock=sock)
        try:
            await asyncio.gather(*(self._flood(t) for t in self.targets))
        finally:
            server.close()
            for w in self._held:
                w.transport.abort()

    async def _flood(self, target: int) -> None:
        a = self.config.nodes[target]
        msg = m.encode_message(self.config.chain_id, [m.FETCH_BLOCKS, self.index, 0, 10 ** 6], self.key, self.crypto)
        while True:
            try:
                r, w = await asyncio.open_connection(a.host, a.peer_port)
                await asyncio.wait_for(handshake_dial(r, w, self.config, self.index, self.key, target, self.crypto), 5)
                last = time.monotonic()
                owed = 0.0
                while not w.is_closing():
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    owed += (now - last) * self.rate
                    last = now
                    k = int(owed)
                    owed -= k
                    w.write(frame(msg) * k)
                    self.sent += k
                    await w.drain()
            except (OSError, asyncio.TimeoutError, Exception):  # noqa: BLE001 - reconnect and go on
                await asyncio.sleep(0.1)


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (Linux)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (Linux /proc)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CPU_PERIOD_US = 100000


class Confinement:
    """Lower the CPU share of an attacking process on the machine of the nodes under test (on a real
    site the attacker is another host): ``nice`` (setpriority) and/or ``cpu`` cores at most (a cgroup
    of its own, v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``). ``describe()`` says what was applied;
    ``release()`` removes the cgroup."""

    def __init__(self, pid: int, nice: int | None = None, cpu: float | None = None) -> None:
        self.pid = pid
        self.nice = nice
        self.cpu = cpu
        self.group: Path | None = None
        self.problem = ""
        if nice:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        if cpu:
            try:
                self._cap(cpu)
            except OSError as exc:
                self.problem = "CPU cap not applied (%s)" % exc

    def _cap(self, cpu: float) -> None:
        quota = max(1000, int(cpu * CPU_PERIOD_US))
        if (CGROUP_V2 / "cgroup.controllers").exists():
            self.group = CGROUP_V2 / ("ledgerlink-attacker-%d" % self.pid)
            self.group.mkdir()
            (self.group / "cpu.max").write_text("%d %d" % (quota, CPU_PERIOD_US))
            (self.group / "cgroup.procs").write_text(str(self.pid))
        elif (CGROUP_V1_CPU / "cpu.cfs_quota_us").exists():
            self.group = CGROUP_V1_CPU / ("ledgerlink-attacker-%d" % self.pid)
            self.group.mkdir()
            (self.group / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (self.group / "cpu.cfs_quota_us").write_text(str(quota))
            (self.group / "cgroup.procs").write_text(str(self.pid))
        else:
            raise OSError("no cgroup cpu controller found")

    def describe(self) -> str:
        parts = ["nice %d" % self.nice if self.nice else "same priority as the nodes"]
        if self.cpu and not self.problem:
            parts.append("capped at %.2f of a core (cgroup %s)" % (self.cpu, self.group))
        elif self.problem:
            parts.append(self.problem)
        else:
            parts.append("no CPU cap")
        return ", ".join(parts)

    def release(self) -> None:
        if self.group is None:
            return
        for _ in range(50):                  # the group can be removed once its process has exited
            try:
                self.group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        self.group = None


class AttackerProcess:
    """``python3 -m ledgerlink.ledger.attacks --config C ...`` (one attack on a running cluster, until
    SIGTERM) as a child process, confined as ``Confinement`` says; ``stop()`` returns its counts."""

    def __init__(self, config_path: str | Path, args: list[str], nice: int | None = None,
                 cpu: float | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ledgerlink.ledger.attacks", "--config",
                                      str(config_path)] + args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.confinement = Confinement(self.proc.pid, nice, cpu)
        self.proc.stdout.readline()                       # "started": the attack is under way

    def cpu(self) -> float:
        try:
            return cpu_seconds(self.proc.pid)
        except OSError:
            return float("nan")

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.confinement.release()
        try:
            return json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"exit": self.proc.returncode}


def _attack_cluster(args: argparse.Namespace) -> None:
    """Child mode: run ``args.attack`` on the cluster of ``args.config`` until SIGTERM; print its counts."""
    config = ClusterConfig.load(args.config)
    attack: Any
    if args.attack == "fetch-flood":
        index = config.n - 1
        key = bytes.fromhex(Path(config.nodes[index].key_file or "").read_text().strip())
        attack = FetchFlood(config, index, key, [i for i in range(config.n) if i != index], args.rate or 1000.0)
    else:
        port = "peer_port" if args.port == "peer" else "client_port"
        attack = Attack(args.attack, [(a.host, getattr(a, port)) for a in config.nodes], rate=args.rate or 2.0,
                        connections=args.connections, frame_size=args.frame_size, source=args.source,
                        chain_id=config.chain_id)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    attack.start()
    print("started", flush=True)
    done.wait()
    stats = attack.stop()
    print(json.dumps(stats.as_dict() if isinstance(stats, AttackStats) else stats), flush=True)


def _measure(args: argparse.Namespace) -> None:
    from ledgerlink.ledger.client import LedgerClient
    from ledgerlink.ledger.cluster import LocalCluster
    from ledgerlink.ledger.state import encoding as enc

    with tempfile.TemporaryDirectory() as d:
        cluster = LocalCluster(d, log_level="WARNING")
        cluster.start()
        client = LedgerClient(cluster.config_path)
        loader_client = LedgerClient(cluster.config_path)
        stop_load = threading.Event()
        gateway = cluster.key("gateway")
        load_counts = {"admitted": 0, "failed": 0}

        def load() -> None:
            batch = 0
            while not stop_load.is_set():
                batch += 1
                n = max(1, int(args.tps / 10))
                txs = [enc.anchor_tx(cluster.config.chain_id, gateway, batch * 1000 + k, os.urandom(32), 1,
                                     int(time.time() * 1000)) for k in range(n)]
                try:
                    results = loader_client.submit_many(txs, wait_ms=0)
                    load_counts["admitted"] += sum(r.get("status") in ("pending", "committed") for r in results)
                except Exception:  # noqa: BLE001 - the load goes on whatever a node answers
                    load_counts["failed"] += len(txs)
                stop_load.wait(0.1)

        attacker: AttackerProcess | None = None

        def phase(name: str, seconds: float, nodes: list[int]) -> None:
            def snap() -> tuple[float, list[int], list[float], float]:
                cpu = [cpu_seconds(cluster.procs[i].pid) for i in nodes]
                return (time.monotonic(), [client.request_to(i, "info")["height"] for i in nodes], cpu,
                        attacker.cpu() if attacker is not None else 0.0)
            t0, h0, c0, a0 = snap()
            l0 = dict(load_counts)
            time.sleep(seconds)
            t1, h1, c1, a1 = snap()
            secs = t1 - t0
            blocks = min(b - a for a, b in zip(h0, h1))
            node_cpu = sum(c1) - sum(c0)
            rates = " ".join("%.1f" % ((b - a) / secs) for a, b in zip(h0, h1))
            rss = " ".join("%.0f" % rss_mb(cluster.procs[i].pid) for i in nodes)
            admitted = (load_counts["admitted"] - l0["admitted"]) / secs
            failed = (load_counts["failed"] - l0["failed"]) / secs
            print("%-7s blocks/s %s   tx/s admitted %.0f (failed %.0f)   node CPU ms/block %s  node CPU s/s %.2f  "
                  "attacker CPU s/s %s   RSS MB %s"
                  % (name, rates, admitted, failed, "%.1f" % (1000 * node_cpu / blocks) if blocks else "-",
                     node_cpu / secs, "%.2f" % ((a1 - a0) / secs) if attacker is not None else "-", rss), flush=True)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            nodes = list(range(cluster.config.n))
            child = ["--attack", args.attack, "--port", args.port, "--connections", str(args.connections),
                     "--frame-size", str(args.frame_size)]
            if args.rate:
                child += ["--rate", str(args.rate)]
            if args.source:
                child += ["--source", args.source]
            if args.attack == "fetch-flood":
                cluster.stop_node(cluster.config.n - 1)
                nodes = nodes[:-1]
            phase("before", args.seconds, nodes)
            attacker = AttackerProcess(cluster.config_path, child, args.attacker_nice, args.attacker_cpu)
            print("attacker: pid %d, %s" % (attacker.proc.pid, attacker.confinement.describe()), flush=True)
            try:
                phase("attack", args.seconds, nodes)
            finally:
                a_cpu = attacker.cpu()
                stats = attacker.stop()
                attacker = None
            phase("after", args.seconds, nodes)
            print("attack: %s, attacker CPU %.2f s" % (stats, a_cpu))
        finally:
            stop_load.set()
            loader.join(5)
            loader_client.close()
            client.close()
            cluster.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python3 -m ledgerlink.ledger.attacks", description=__doc__.split("\n")[0])
    p.add_argument("--attack", choices=KINDS + ("fetch-flood",), default="partial")
    p.add_argument("--port", choices=("peer", "client"), default="client", help="which port of every node")
    p.add_argument("--connections", type=int, default=1000, help="per node (partial, idle)")
    p.add_argument("--frame-size", type=int, default=1 << 20, help="announced frame size (partial)")
    p.add_argument("--rate", type=float, help="frames or requests a second per node")
    p.add_argument("--source", help="local address to attack from (e.g. 127.0.0.2)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    p.add_argument("--tps", type=float, default=150.0, help="transactions a second submitted throughout")
    p.add_argument("--attacker-nice", type=int, help="run the attacker process at this nice value (e.g. 19)")
    p.add_argument("--attacker-cpu", type=float,
                   help="cap the attacker process at this many cores (cgroup; needs a writable cgroup cpu controller)")
    p.add_argument("--config", help="attack the running cluster of this config until SIGTERM (no measuring; "
                                    "fetch-flood takes over the last validator, whose node must be stopped)")
    main_args = p.parse_args(argv)
    if main_args.config:
        _attack_cluster(main_args)
    else:
        _measure(main_args)


if __name__ == "__main__":
    main()
