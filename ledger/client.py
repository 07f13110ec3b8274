"""Client of the ledger nodes' client port.

``AsyncLedgerClient`` pipelines requests over one connection per node; ``LedgerClient`` is the same
API made synchronous (its event loop runs in a background thread). A request that fails because its
node is unreachable, the connection drops or no answer comes in time is retried on the next node.

Hedged requests: a read not answered within ``HEDGE_READ_S`` is also sent to the next node. A submit
(its answer waits for the commit, which may rightly take longer) not answered within ``HEDGE_SUBMIT_S``
goes to the next node too only when its node is dead: it answered nothing in the last ``PROBE_S`` and
does not answer an ``info`` probe within it; a live node keeps it (probed again every
``HEDGE_SUBMIT_S``), so a loaded cluster is not sent each slow commit twice. The first answer is taken
and the other attempts cancelled; a node that fails at once (refused or dropped connection) is followed
by the next at once. A request goes to each node at most once, to one more node per delay, and its
attempts and probe end with it. A node that did not answer before another did, or failed, is slow for
``SLOW_NODE_S``: requests go to the other nodes first until then. Reads are idempotent; ``submit`` is
too: a node answers a committed transaction with where it was committed, admits one it holds pending
once ("duplicate tx") and waits for its commit, and validators drop one already committed ("replayed
tx"), so asking a second node never commits a transaction twice.

Protects against: one node that accepts connections but does not answer (SIGSTOPped, or loading after
a restart; the kernel accepts for it) holding every request for the full timeout (5 s for a read, 15
s for a submit), and so a gateway's receipts. Tested in tests/ledger/test_client_failover.py: a
4-node cluster with the client's preferred node SIGSTOPped answers a read within 2 s, a submit and a
submit_many within 4 s, later reads without waiting for that node, and the node, continued, answers
the submitted transaction with the same place in the chain; tests/ledger/test_client_hedging.py: a
submit whose live node commits after 1.6 s is sent to no other node, one to a silent node goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
import time
from pathlib import Path
from typing import Any, Coroutine, Sequence

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.ledger.transport import ClusterConfig, FrameError, frame, read_frame

MAX_RESPONSE = 16 << 20
HEDGE_READ_S = 0.5          # a read not answered this long is asked of the next node too
HEDGE_SUBMIT_S = 0.5        # a submit not answered this long: its node is probed, and if dead the next asked
PROBE_S = 0.5               # a node that answered nothing in this long (a probe included) counts as dead
SLOW_NODE_S = 10.0          # a node that lost a hedge or failed is asked after the others this long


class LedgerUnavailable(Exception):
    """No node answered."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future] = {}
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        err: BaseException = ConnectionError("connection closed")
        try:
            while True:
                data = await read_frame(self.reader, MAX_RESPONSE)
                if data is None:
                    break
                try:
                    resp = cbor.loads(data)
                except LedgerlinkError:
                    continue
                if isinstance(resp, dict):
                    fut = self.pending.pop(resp.get("id"), None)
                    if fut is not None and not fut.done():
                        self.answered += 1
                        self.answered_at = time.monotonic()
                        fut.set_result(resp)
        except (OSError, ConnectionError, FrameError) as exc:
            err = ConnectionError(str(exc))
        except asyncio.CancelledError:
            pass
        finally:
            self.closed = True
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self.pending.clear()
            try:
                self.writer.close()
            except RuntimeError:
                pass

    closed = False
    answered = 0
    answered_at = 0.0


class AsyncLedgerClient:
    """Requests to the nodes of ``config`` (a ClusterConfig or the path of its file)."""

    def __init__(self, config: ClusterConfig | str | Path, prefer: int = 0, timeout: float = 5.0) -> None:
        self.config = config if isinstance(config, ClusterConfig) else ClusterConfig.load(config)
        self.current = prefer % self.config.n
        self.timeout = timeout
        self._conns: dict[int, _Conn] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._ids = itertools.count(1)
        self._slow_until: dict[int, float] = {}     # node -> monotonic time until which it is asked last

    async def _conn(self, i: int) -> _Conn:
        lock = self._locks.setdefault(i, asyncio.Lock())
        async with lock:
            c = self._conns.get(i)
            if c is None or c.closed:
                a = self.config.nodes[i]
                r, w = await asyncio.wait_for(asyncio.open_connection(a.host, a.client_port), self.timeout)
                c = self._conns[i] = _Conn(r, w)
            return c

    async def request_to(self, i: int, op: str, timeout: float | None = None, **args: Any) -> dict:
        """One request to node ``i``; raises ConnectionError/TimeoutError when it does not answer.

        A connection the node closes as the request goes out (nodes close idle connections) is
        replaced once; every operation is idempotent, so the request is sent again."""
        req = dict(args, op=op)
        for attempt in (0, 1):
            c = await self._conn(i)
            reused = c.answered > 0
            rid = next(self._ids)
            fut = asyncio.get_running_loop().create_future()
            c.pending[rid] = fut
            req["id"] = rid
            c.writer.write(frame(cbor.dumps(req)))
            try:
                return await asyncio.wait_for(fut, self.timeout if timeout is None else timeout)
            except ConnectionError:
                if attempt or not reused:
                    raise
            finally:
                c.pending.pop(rid, None)
        raise AssertionError("unreachable")

    def _order(self) -> list[int]:
        """The nodes to ask, in order: from the current one on, those not slow first."""
        now = time.monotonic()
        nodes = [(self.current + k) % self.config.n for k in range(self.config.n)]
        return sorted(nodes, key=lambda i: self._slow_until.get(i, 0.0) > now)

    def _mark_slow(self, i: int) -> None:
        self._slow_until[i] = time.monotonic() + SLOW_NODE_S

    async def _alive(self, i: int) -> bool:
        """Whether node ``i`` answered anything in the last ``PROBE_S``, or answers ``info`` within it."""
        c = self._conns.get(i)
        if c is not None and not c.closed and time.monotonic() - c.answered_at < PROBE_S:
            return True
        try:
            await self.request_to(i, "info", PROBE_S)
        except (OSError, ConnectionError, asyncio.TimeoutError):
            return False
        return True

    async def request(self, op: str, timeout: float | None = None, hedge_s: float = HEDGE_READ_S,
                      probe: bool = False, **args: Any) -> dict:
        """``op`` on the current node, asking the next node too when no answer came within ``hedge_s``
        (with ``probe``: and the node did not answer a probe either) or a node failed (module
        docstring); the first answer is returned."""
        order = self._order()
        asked: dict[asyncio.Task, int] = {}          # attempts not finished -> their node
        newest = -1                                  # the node asked last
        probing: asyncio.Task | None = None          # whether ``newest`` is alive
        last: BaseException | None = None

        def ask_next() -> None:
            nonlocal newest
            if order:
                newest = order.pop(0)
                asked[asyncio.ensure_future(self.request_to(newest, op, timeout, **args))] = newest

        try:
            ask_next()
            while asked:
                waiting = set(asked) if probing is None else set(asked) | {probing}
                done, _ = await asyncio.wait(waiting, timeout=hedge_s if order and probing is None else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if probe:
                        probing = asyncio.ensure_future(self._alive(newest))
                    else:
                        ask_next()
                    continue
                if probing in done:
                    done.discard(probing)
                    if not probing.result():
                        ask_next()
                    probing = None
                for t in done:
                    i = asked.pop(t)
                    exc = t.exception()
                    if exc is None:
                        self.current = i
                        self._slow_until.pop(i, None)
                        for j in asked.values():
                            self._mark_slow(j)
                        return t.result()
                    if not isinstance(exc, (OSError, ConnectionError, asyncio.TimeoutError)):
                        raise exc
                    last = exc
                    self._mark_slow(i)
                    ask_next()
        finally:
            rest = set(asked) if probing is None else set(asked) | {probing}
            for t in rest:
                t.cancel()
            if rest:
                await asyncio.wait(rest)
        raise LedgerUnavailable("no node answered %s: %s" % (op, last))

    async def submit(self, tx: bytes, wait_ms: int = 10000) -> dict:
        """Submit ``tx`` and wait for its outcome: ``status`` committed (height, index, code),
        refused (code, reason) or pending (not committed within ``wait_ms``)."""
        return await self.request("submit", timeout=wait_ms / 1000 + self.timeout, hedge_s=HEDGE_SUBMIT_S,
                                  probe=True, tx=tx, wait_ms=wait_ms)

    async def submit_many(self, txs: Sequence[bytes], wait_ms: int = 10000) -> list[dict]:
        """Submit ``txs`` in one request (to one node) and wait for their outcomes, one ``submit``
        answer per tx in order; raises LedgerUnavailable if no node answers, ValueError if the node
        refuses the request as a whole."""
        resp = await self.request("submit_many", timeout=wait_ms / 1000 + self.timeout, hedge_s=HEDGE_SUBMIT_S,
                                  probe=True, txs=list(txs), wait_ms=wait_ms)
        results = resp.get("results")
        if not resp.get("ok") or not isinstance(results, list) or len(results) != len(txs):
            raise ValueError("submit_many refused: %s" % resp.get("error", "bad answer"))
        return results

    async def status(self, tx_hash: bytes) -> dict:
        return await self.request("status", hash=tx_hash)

    async def latest(self) -> dict:
        return await self.request("latest")

    async def header(self, height: int) -> dict:
        return await self.request("header", height=height)

    async def block(self, height: int) -> dict:
        return await self.request("block", height=height)

    async def validators(self) -> dict:
        return await self.request("validators")

    async def record(self, kind: int, record_id: Any) -> dict:
        return await self.request("record", kind=kind, record_id=record_id)

    async def tx_proof(self, tx_hash: bytes) -> dict:
        return await self.request("tx_proof", hash=tx_hash)

    async def info(self) -> dict:
        return await self.request("info")

    async def close(self) -> None:
        conns = list(self._conns.values())
        self._conns.clear()
        for c in conns:
            c.task.cancel()
            c.writer.close()
        await asyncio.gather(*(c.task for c in conns), return_exceptions=True)


class LedgerClient:
    """Synchronous ``AsyncLedgerClient``: same methods, blocking."""

    def __init__(self, config: ClusterConfig | str | Path, prefer: int = 0, timeout: float = 5.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = self._call(self._make(config, prefer, timeout))

    @staticmethod
    async def _make(config: Any, prefer: int, timeout: float) -> AsyncLedgerClient:
        return AsyncLedgerClient(config, prefer, timeout)

    def _call(self, coro: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def config(self) -> ClusterConfig:
        return self._client.config

    def submit(self, tx: bytes, wait_ms: int = 10000) -> dict:
        return self._call(self._client.submit(tx, wait_ms))

    def submit_many(self, txs: Sequence[bytes], wait_ms: int = 10000) -> list[dict]:
        return self._call(self._client.submit_many(txs, wait_ms))

    def request_to(self, i: int, op: str, **args: Any) -> dict:
        return self._call(self._client.request_to(i, op, **args))

    def status(self, tx_hash: bytes) -> dict:
        return self._call(self._client.status(tx_hash))

    def latest(self) -> dict:
        return self._call(self._client.latest())

    def header(self, height: int) -> dict:
        return self._call(self._client.header(height))

    def block(self, height: int) -> dict:
        return self._call(self._client.block(height))

    def validators(self) -> dict:
        return self._call(self._client.validators())

    def record(self, kind: int, record_id: Any) -> dict:
        return self._call(self._client.record(kind, record_id))

    def tx_proof(self, tx_hash: bytes) -> dict:
        return self._call(self._client.tx_proof(tx_hash))

    def info(self) -> dict:
        return self._call(self._client.info())

    def close(self) -> None:
        async def shutdown() -> None:
            await self._client.close()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
        try:
            self._call(shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> "LedgerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def tx_hash(tx: bytes) -> bytes:
    return hashlib.sha256(tx).digest()
