"""Hedging of ``AsyncLedgerClient`` against in-process fake nodes on loopback: a submit whose node is
alive (answers other requests) while its commit takes longer than the hedge delay stays with that node
(no second node is loaded with it); one whose node answers nothing goes to the next node."""

import asyncio
import time

from ledgerlink.core import cbor
from ledgerlink.ledger.client import AsyncLedgerClient
from ledgerlink.ledger.transport import ClusterConfig, NodeAddress, frame, read_frame

COMMIT_S = 1.6          # longer than the submit hedge delay plus a probe


class FakeNode:
    """Answers ``info`` at once and ``submit`` after ``COMMIT_S``; ``silent``: reads requests, answers none."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.ops: list[str] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (data := await read_frame(reader, 1 << 20)) is not None:
            req = cbor.loads(data)
            self.ops.append(req["op"])
            if not self.silent:
                asyncio.ensure_future(self._answer(req, writer))

    @staticmethod
    async def _answer(req: dict, writer: asyncio.StreamWriter) -> None:
        if req["op"] == "submit":
            await asyncio.sleep(COMMIT_S)
            resp = {"ok": True, "status": "committed", "height": 1, "index": 0, "code": 0}
        else:
            resp = {"ok": True, "height": 1}
        writer.write(frame(cbor.dumps(dict(resp, id=req["id"]))))


async def cluster(*nodes: FakeNode) -> ClusterConfig:
    ports = [await n.start() for n in nodes]
    return ClusterConfig("fake", [NodeAddress(i, "127.0.0.1", 0, p, b"") for i, p in enumerate(ports)], {})


def test_alive_node_keeps_a_slow_commit():
    async def run():
        first, second = FakeNode(), FakeNode()
        client = AsyncLedgerClient(await cluster(first, second))
        t0 = time.monotonic()
        res = await client.submit(b"tx")
        took = time.monotonic() - t0
        await client.close()
        return res, took, first.ops, second.ops

    res, took, first, second = asyncio.run(run())
    assert res["status"] == "committed" and took >= COMMIT_S
    assert second == [], "a second node was asked although the first was alive"
    assert "submit" in first and "info" in first           # probed while the commit took its time


def test_silent_node_is_passed_over_for_a_submit_and_a_read():
    async def run():
        silent, live = FakeNode(silent=True), FakeNode()
        client = AsyncLedgerClient(await cluster(silent, live))
        t0 = time.monotonic()
        res = await client.submit(b"tx")
        took_submit = time.monotonic() - t0
        t0 = time.monotonic()
        info = await client.info()
        took_read = time.monotonic() - t0
        await client.close()
        return res, took_submit, info, took_read, silent.ops, live.ops

    res, took_submit, info, took_read, silent, live = asyncio.run(run())
    assert res["status"] == "committed" and took_submit < COMMIT_S + 2.0, took_submit
    assert silent[:2] == ["submit", "info"] and live[0] == "submit"
    assert info["ok"] and silent.count("info") == 1, took_read   # the read went to the live node first
