"""Node submit waits: a wait ends at its deadline (swept by the ticker) with the tx's status, and the
deadline heap drops finished waits."""

import asyncio
import heapq
import os
import time

from ledgerlink.ledger.cluster import generate
from ledgerlink.ledger.node import Node
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.transport import ClusterConfig


def _node(tmp_path):
    generate(tmp_path, 4)
    cfg = ClusterConfig.load(tmp_path / "cluster.json")
    key = lambda name: bytes.fromhex((tmp_path / "keys" / (name + ".key")).read_text().strip())  # noqa: E731
    return cfg, key, Node(cfg, 1, tmp_path / "n1", key("validator1"))


def test_waits_end_at_their_deadline_with_the_status(tmp_path):
    cfg, key, node = _node(tmp_path)
    now = int(time.time() * 1000)
    txs = [enc.anchor_tx(cfg.chain_id, key("gateway"), k, os.urandom(32), 1, now) for k in range(1, 41)]

    async def run():
        async def sweep():
            while True:
                await asyncio.sleep(0.005)
                node._expire_waits()
        sweeper = asyncio.create_task(sweep())
        t0 = time.monotonic()
        one = await node.handle({"op": "submit", "tx": txs[0], "wait_ms": 30})
        many = await node.handle({"op": "submit_many", "txs": txs[1:], "wait_ms": 30})
        sweeper.cancel()
        return one, many, time.monotonic() - t0

    try:
        one, many, secs = asyncio.run(run())
    finally:
        node.store.close()
    assert one == {"ok": True, "status": "pending"}      # no peers: nothing commits
    assert [r["status"] for r in many["results"]] == ["pending"] * 39
    assert 0.05 <= secs < 2
    assert not node.waiters and not node._deadlines and node._waits_live == 0


def test_deadline_heap_drops_finished_waits(tmp_path):
    _, _, node = _node(tmp_path)
    node.store.close()
    later = time.monotonic() + 60
    for i in range(2000):
        heapq.heappush(node._deadlines, (later, i, [] if i % 10 else [object()]))
    node._waits_live = 200
    node._expire_waits()
    assert len(node._deadlines) == 200 and all(e[2] for e in node._deadlines)
