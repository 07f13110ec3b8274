"""Node shutdown: work that arrived before ``stop`` (a transaction batch queued for the replica) is
answered "node stopping" and not carried out against the closed block store afterwards (it logged
"Cannot operate on a closed database" from ``save_votes`` and its submits never got an answer).
Also: a single validator, which commits a transaction as it admits it, answers the submit at once
(it answered at the end of ``wait_ms``)."""

import asyncio
import logging
import os
import time

from ledgerlink.ledger.cluster import generate
from ledgerlink.ledger.node import Node
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.transport import ClusterConfig


def _single_validator(tmp_path):
    generate(tmp_path, 1, consensus={"batch_timeout_ms": 0})
    cfg = ClusterConfig.load(tmp_path / "cluster.json")
    key = lambda name: bytes.fromhex((tmp_path / "keys" / (name + ".key")).read_text().strip())  # noqa: E731
    return cfg, key, Node(cfg, 0, tmp_path / "n0", key("validator0"))


def test_clean_shutdown_logs_no_error(tmp_path, caplog):
    cfg, key, node = _single_validator(tmp_path)
    now = int(time.time() * 1000)
    txs = [enc.anchor_tx(cfg.chain_id, key("gateway"), k, os.urandom(32), 1, now) for k in range(1, 21)]
    unhandled = []

    async def run():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx.get("message")))
        await node.start()
        t0 = time.monotonic()
        first = await node.handle({"op": "submit", "tx": txs[0], "wait_ms": 20000})
        first["seconds"] = time.monotonic() - t0
        pending = [asyncio.create_task(node.handle({"op": "submit", "tx": tx, "wait_ms": 0})) for tx in txs[1:]]
        await asyncio.sleep(0)                      # the batch is queued for the replica
        await node.stop()
        answers = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
        for _ in range(20):                         # what the loop still runs before it ends
            await asyncio.sleep(0.01)
        return first, answers

    caplog.set_level(logging.INFO)
    first, answers = asyncio.run(run())
    assert first["status"] == "committed"           # the single validator commits: SaveVotes and Persist ran
    assert first["seconds"] < 5                     # answered at its commit, not at the end of its wait
    assert all(a == {"ok": False, "error": "node stopping"} for a in answers), answers
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    assert not unhandled, unhandled
