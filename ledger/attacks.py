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
  hello     connections that send a v2 hello claiming a validator, then a random signature.

``FetchFlood(config, index, key, targets, rate)`` (needs validator ``index``'s key, the node of that
index stopped) listens on ``index``'s peer port, proves the key in every handshake and never reads;
it dials ``targets`` (validator indices) and sends each ``rate`` signed ``fetch-blocks 0..10^6`` a second.

``python3 -m ledgerlink.ledger.attacks --attack partial --port client`` starts a 4-node cluster,
submits transactions at ``--tps`` and prints the block rate and the nodes' RSS without the attack,
under it and after it (``--attack fetch-flood`` runs ``FetchFlood`` as validator 3).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.transport import (HELLO, MAX_HELLO_FRAME, ClusterConfig, frame, handshake_accept,
                                         handshake_dial, read_frame)

KINDS = ("junk", "huge", "partial", "idle", "hello")
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


def _measure(args: argparse.Namespace) -> None:
    from ledgerlink.ledger.client import LedgerClient
    from ledgerlink.ledger.cluster import LocalCluster
    from ledgerlink.ledger.state import encoding as enc

    with tempfile.TemporaryDirectory() as d:
        cluster = LocalCluster(d, log_level="WARNING")
        cluster.start()
        client = LedgerClient(cluster.config_path)
        stop_load = threading.Event()
        gateway = cluster.key("gateway")

        def load() -> None:
            batch = 0
            while not stop_load.is_set():
                batch += 1
                n = max(1, int(args.tps / 10))
                txs = [enc.anchor_tx(cluster.config.chain_id, gateway, batch * 1000 + k, os.urandom(32), 1,
                                     int(time.time() * 1000)) for k in range(n)]
                try:
                    client.submit_many(txs, wait_ms=0)
                except Exception:  # noqa: BLE001 - the load goes on whatever a node answers
                    pass
                stop_load.wait(0.1)

        def phase(name: str, seconds: float, nodes: list[int]) -> None:
            h0 = [client.request_to(i, "info")["height"] for i in nodes]
            time.sleep(seconds)
            h1 = [client.request_to(i, "info")["height"] for i in nodes]
            rates = ["%.1f" % ((b - a) / seconds) for a, b in zip(h0, h1)]
            rss = ["%.0f" % rss_mb(cluster.procs[i].pid) for i in nodes]
            print("%-8s blocks/s %s   RSS MB %s" % (name, " ".join(rates), " ".join(rss)), flush=True)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            nodes = list(range(cluster.config.n))
            attack: Any
            if args.attack == "fetch-flood":
                cluster.stop_node(3)
                nodes = [0, 1, 2]
                phase("before", args.seconds, nodes)
                attack = FetchFlood(cluster.config, 3, cluster.key("validator3"), nodes, args.rate or 1000.0)
            else:
                phase("before", args.seconds, nodes)
                port = "peer_port" if args.port == "peer" else "client_port"
                targets = [(a.host, getattr(a, port)) for a in cluster.config.nodes]
                attack = Attack(args.attack, targets, rate=args.rate or 2.0, connections=args.connections,
                                frame_size=args.frame_size, source=args.source, chain_id=cluster.config.chain_id)
            attack.start()
            try:
                phase("attack", args.seconds, nodes)
            finally:
                stats = attack.stop()
            phase("after", args.seconds, nodes)
            print("attack:", stats.as_dict() if isinstance(stats, AttackStats) else stats)
        finally:
            stop_load.set()
            loader.join(5)
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
    main_args = p.parse_args(argv)
    _measure(main_args)


if __name__ == "__main__":
    main()
