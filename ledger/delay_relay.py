"""A TCP relay on loopback that holds every chunk for a fixed one-way delay, per direction.

This kernel has no ``sch_netem``, so a LAN or WAN delay between real node processes is made in user
space: ``DelayRelay`` listens on one port per route and forwards each accepted connection to the
route's target. Each direction of a connection has its own FIFO: a chunk read at time t is written
on at ``t + delay`` (or later), in the order it was read; with a bandwidth cap a chunk first waits
for the direction's link to be free and occupies it for its bytes' serialization time, then is held
for the delay.

How it differs from ``tc netem delay``: it works on chunks as ``recv`` returns them, not on packets
(a chunk may hold many frames or part of one; the TCP connections on both sides of the relay still
run on the undelayed loopback, so their handshakes, ACKs and windows see no delay and a slow reader
does not slow the sender down through the relay, whose queues are unbounded); it adds its own
scheduling time (the event loop's timers have about 1 ms granularity and run on a shared CPU, so a
0.5 ms hold is in practice 1-2 ms; ``measure_one_way_ms`` measures it); and it has no loss,
reordering, duplication or jitter. An end's close (EOF) reaches the other end once what was read
before it has been delivered.

``python3 -m ledgerlink.ledger.delay_relay --delay-ms 20 --route 9000=127.0.0.1:8000`` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from typing import Any

CHUNK_BYTES = 65536
PROBE_ROUNDS = 20


class DelayRelay:
    """Relays connections on loopback with a fixed one-way delay (and an optional bandwidth cap) per
    direction, in a thread of its own. ``ports[k]`` is where route k listens once ``start`` returned."""

    def __init__(self, targets: list[tuple[str, int]], delay_ms: float, bandwidth_mbit_s: float = 0.0,
                 host: str = "127.0.0.1", listen_ports: list[int] | None = None) -> None:
        """``targets``: (host, port) of each route; ``listen_ports``: a port per route (default: any
        free one); ``bandwidth_mbit_s`` 0 is no cap."""
        if delay_ms < 0 or bandwidth_mbit_s < 0:
            raise ValueError("delay and bandwidth must not be negative")
        if listen_ports is not None and len(listen_ports) != len(targets):
            raise ValueError("one listen port per target")
        self.targets = list(targets)
        self.delay_s = delay_ms / 1000.0
        self.s_per_byte = 8 / (bandwidth_mbit_s * 1e6) if bandwidth_mbit_s > 0 else 0.0
        self.host = host
        self.listen_ports = list(listen_ports) if listen_ports is not None else [0] * len(targets)
        self.ports: list[int] = []
        self.bytes = 0                      # relayed, both directions, all routes
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> list[int]:
        """Listen on every route and return the ports."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="delay-relay", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)
        except BaseException:
            self.stop()
            raise
        return self.ports

    async def _listen(self) -> None:
        for (host, port), listen in zip(self.targets, self.listen_ports):
            server = await asyncio.start_server(
                lambda r, w, t=(host, port): self._connection(r, w, t), self.host, listen, limit=CHUNK_BYTES)
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          target: tuple[str, int]) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target, limit=CHUNK_BYTES)
        except OSError:
            writer.close()
            return
        self.connections += 1
        for w in (writer, up_writer):
            w.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._writers.add(w)
        try:
            await asyncio.gather(self._direction(reader, up_writer), self._direction(up_reader, writer))
        except asyncio.CancelledError:
            pass                            # the relay stops
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy reader to writer, each chunk held until its due time, in order; an EOF is passed on
        (half-close) after what was read before it, an error closes the writer."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        link_free = 0.0

        async def feed() -> None:
            nonlocal link_free
            while True:
                try:
                    data = await reader.read(CHUNK_BYTES)
                except OSError:
                    data = b""
                now = loop.time()
                if self.s_per_byte:
                    link_free = max(link_free, now) + len(data) * self.s_per_byte
                    now = link_free
                queue.put_nowait((now + self.delay_s, data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    if not data:
                        writer.write_eof()
                        return
                    self.bytes += len(data)
                    writer.write(data)
                    await writer.drain()
                except OSError:
                    writer.close()
                    return

        await asyncio.gather(feed(), deliver())

    def cpu_seconds(self) -> float:
        """CPU time the relay's thread has used so far."""
        if self._loop is None:
            raise RuntimeError("the relay is not running")

        async def thread_time() -> float:
            return time.thread_time()
        return asyncio.run_coroutine_threadsafe(thread_time(), self._loop).result(10)

    def stop(self) -> None:
        """Close the listeners and every relayed connection, and end the thread."""
        loop = self._loop
        if loop is None:
            return

        async def close() -> None:
            for s in self._servers:
                s.close()
            for w in list(self._writers):
                w.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(close(), loop).result(10)
            except Exception:
                pass
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self) -> "DelayRelay":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            while True:
                data = conn.recv(CHUNK_BYTES)
                if not data:
                    return
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def measure_one_way_ms(delay_ms: float, rounds: int = PROBE_ROUNDS) -> list[float]:
    """Half of each of ``rounds`` one-byte round trips through a relay of ``delay_ms`` to an echo
    server on this machine: the hold the relay really gives, scheduling included."""
    srv, t = _echo_server()
    try:
        with DelayRelay([srv.getsockname()], delay_ms) as relay:
            with socket.create_connection(("127.0.0.1", relay.ports[0]), timeout=10) as c:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                out = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    c.sendall(b"x")
                    if c.recv(1) != b"x":
                        raise RuntimeError("relay probe: no echo")
                    out.append((time.perf_counter() - t0) * 500)
                return out
    finally:
        srv.close()
        t.join(5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python3 -m ledgerlink.ledger.delay_relay",
                                description=__doc__.split("\n")[0])
    p.add_argument("--delay-ms", type=float, required=True, help="one-way delay per direction")
    p.add_argument("--bandwidth-mbit", type=float, default=0.0, help="cap per direction and connection (0: none)")
    p.add_argument("--route", action="append", required=True, metavar="PORT=HOST:PORT",
                   help="listen on 127.0.0.1:PORT and relay to HOST:PORT (repeatable)")
    args = p.parse_args(argv)
    listen, targets = [], []
    for r in args.route:
        try:
            port, target = r.split("=", 1)
            host, tport = target.rsplit(":", 1)
            listen.append(int(port))
            targets.append((host, int(tport)))
        except ValueError:
            p.error("--route %r is not PORT=HOST:PORT" % r)
    relay = DelayRelay(targets, args.delay_ms, args.bandwidth_mbit, listen_ports=listen)
    relay.start()
    for port, (host, tport) in zip(relay.ports, targets):
        print("127.0.0.1:%d -> %s:%d, %.3f ms each way" % (port, host, tport, args.delay_ms), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop()


if __name__ == "__main__":
    main()
