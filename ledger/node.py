"""A ledger full node: one PBFT replica of the ledger state as a process.

``python3 -m ledgerlink.ledger.node --config cluster.json --index i --data DIR`` runs validator ``i``.
The node feeds peer messages, client transactions and timer ticks (every ``TICK_MS``) into its
``Replica`` and carries out the effects in order: ``Send``/``Broadcast`` go to the peer links,
``Persist`` writes the block to SQLite and returns only once it is fsync'd (so no later effect, in
particular a vote on the next height, happens before the block is durable), ``SaveVotes`` does the
same for the replica's vote record (view and prepared proof, saved before the votes they cover), ``Committed`` answers
the clients waiting for those transactions. On start the node restores the replica from its block
store: every stored block is re-executed into a fresh ``LedgerState`` and its certificate, header
chain and state root are checked (``Replica.restore``); a node that is behind fetches the missing
blocks from its peers (state transfer in the replica).

Client port operations (CBOR maps, see ``transport``): ``submit`` {tx, wait_ms}, ``submit_many``
{txs, wait_ms} (answer: ``results``, one ``submit`` answer per tx, in order), ``status`` {hash},
``latest``, ``header`` {height}, ``block`` {height}, ``validators``, ``record`` {kind, record_id},
``tx_proof`` {hash}, ``info``. Record proofs are sparse-Merkle proofs against the state root of the
latest certified header; transaction proofs are RFC 9162 inclusion proofs against the tx root of the
header of the transaction's block.

Protects against: malformed, oversized or unknown peer and client messages (dropped with a logged
reason by the transport or the replica, never a crash; every handler error becomes an error answer);
strangers on either port (peers prove their validator key before any frame is read; every buffer,
queue, connection count and request rate of both ports is bounded, see ``transport``);
loss of committed blocks at a crash (durable before the next vote) and of votes (a restarted node
never votes twice in one view and height). Limits: proofs of records are only served for the latest
height. The node process freezes its restored state out of the garbage collector's scans and runs
young collections every ``GC_THRESHOLD`` net new objects (at saturation the default 700 spent ~6% of the
node's CPU rescanning the state tree). ``LEDGERLINK_PROFILE_DIR=DIR`` writes a cProfile of the node to
``DIR/node<i>.prof`` at exit. Tested in
tests/ledger/test_node_cluster.py with real processes on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import hashlib
import heapq
import itertools
import logging
import os
import signal
import sys
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

from ledgerlink.core import merkle, smt
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.cluster import load_share
from ledgerlink.ledger.consensus import reconfig
from ledgerlink.ledger.consensus.replica import (
    Broadcast, Committed, Dropped, Persist, PersistThreshold, Replica, SaveVotes, Send,
)
from ledgerlink.ledger.state import LedgerState
from ledgerlink.ledger.storage import BlockStore
from ledgerlink.ledger.transport import ClientServer, ClusterConfig, PeerNetwork, added_address, default_peers_file

log = logging.getLogger("ledgerlink.node")

TICK_MS = 10
DEFAULT_WAIT_MS = 10000
MAX_WAIT_MS = 60000
MAX_REFUSED = 100000
MAX_SUBMIT_MANY = 1024
RECORD_THRESHOLD_WAIT_MS = 2000   # longest a record answer waits for its block's threshold certificate
GC_THRESHOLD = 20000     # net new container objects between young collections (CPython default 700)
_TIMED_OUT = object()
NODE_STOPPING = "node stopping"


def load_key(path: str | Path) -> bytes:
    """A private key file: 64 hex characters."""
    return bytes.fromhex(Path(path).read_text().strip())


def now_ms() -> int:
    return int(time.time() * 1000)


def threshold_genesis(config: ClusterConfig) -> dict[str, Any]:
    """The genesis config of ``LedgerState.genesis``, with the group key and verifying shares (hex in
    the cluster config) as bytes when there are any."""
    genesis = config.genesis_config()
    if "group_key" in genesis:
        genesis["group_key"] = bytes.fromhex(genesis["group_key"])
        genesis["verifying_shares"] = [bytes.fromhex(v) for v in genesis["verifying_shares"]]
    return genesis


class Node:
    """One validator: replica, block store, peer network and client port."""

    def __init__(self, config: ClusterConfig, index: int, data_dir: str | Path, key: bytes,
                 threshold_share: int | None = None, epoch_share: Callable[[int], int | None] | None = None) -> None:
        """``threshold_share``: this validator's FROST signing share (secret), when the genesis names a group key;
        ``epoch_share(epoch)``: its share of a later set's group key (``reconfig.take_share`` at the switch)."""
        self.config = config
        self.index = index
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.backend = get_backend("cpython")
        genesis = threshold_genesis(config)
        self.rconfig = config.replica_config()
        if "group_key" in genesis:
            self.rconfig = dataclasses.replace(self.rconfig, group_key=genesis["group_key"],
                                               verifying_shares=tuple(genesis["verifying_shares"]))
        else:
            threshold_share = None
        self.store = BlockStore(self.data_dir / "blocks.sqlite", config.chain_id, config.genesis_hash())
        started = time.perf_counter()
        self.app = LedgerState.genesis(genesis, self.backend)
        self.replica = Replica.restore(index, self.rconfig, key, self.app, self.backend, now_ms(),
                                       self.store.blocks(), votes=self.store.votes(),
                                       threshold_certs=list(self.store.threshold_certs()),
                                       threshold_share=threshold_share,
                                       rng=os.urandom)
        self.replica.epoch_share = epoch_share
        if self.replica.epoch:
            reconfig.take_share(self.replica)              # restored past a set change: that set's share
        if self.replica.height != self.store.height:
            raise RuntimeError("restored height %d differs from the store's %d"
                               % (self.replica.height, self.store.height))
        log.info("node %d restored %d blocks in %.2f s", index, self.replica.height + 1,
                 time.perf_counter() - started)
        self.waiters: dict[bytes, list[asyncio.Future]] = {}
        self._deadlines: list[tuple[float, int, list[asyncio.Future]]] = []   # heap, swept by the ticker
        self._waits_live = 0                                          # its entries not yet finished
        self._deadline_seq = itertools.count()
        self._arriving: list[tuple[bytes, asyncio.Future]] = []
        self.refused: OrderedDict[bytes, tuple[int, str]] = OrderedDict()
        self.drops: Counter[str] = Counter()
        if index >= config.n:                # a validator added by a set change: its own address
            me = added_address(index, self.backend.public_key(key, True), default_peers_file(config))
            if index > config.n or me is None:
                raise RuntimeError("validator %d is not in the cluster config and %s names no address for its key"
                                   % (index, default_peers_file(config)))
            config.nodes.append(me)
        self.net = PeerNetwork(config, index, self.rconfig.max_message_size + 1024, self.on_peer_message, key,
                               self.backend)
        reconfig.follow_peers(self)          # the restored chain may have changed the validator set
        me = config.nodes[index]
        self.client = ClientServer(me.host, me.client_port, self.handle, limits=config.ports)
        self._tasks: list[asyncio.Task] = []
        self.stopping = False

    # --- replica driving --------------------------------------------------------------------------

    def on_peer_message(self, sender: int, data: bytes) -> None:
        if not self.stopping:
            self.effects(self.replica.receive(sender, data, now_ms()))

    def effects(self, effects: list) -> None:
        if self.stopping:                     # the block store may be closed: nothing is carried out
            return
        for e in effects:
            if isinstance(e, Broadcast):
                self.net.broadcast(e.data)
            elif isinstance(e, Send):
                self.net.send(e.to, e.data)
            elif isinstance(e, Persist):
                try:
                    codes = [r.code for r in self.app.results_of(e.height)]
                except KeyError:
                    codes = None
                block = self.replica.block(e.height)[0]
                self.store.append_block(e.height, e.block, e.certificate, codes, block,
                                        self._tx_hashes(e.height, block.txs))
            elif isinstance(e, SaveVotes):
                self.store.save_votes(e.record)
            elif isinstance(e, PersistThreshold):
                self.store.save_threshold(e.height, e.certificate)
            elif isinstance(e, Committed):
                reconfig.follow_peers(self)
                self._on_committed(e)
            elif isinstance(e, Dropped):
                self.drops[e.reason] += 1
                log.debug("dropped from %s: %s", e.sender, e.reason)

    def _tx_hashes(self, height: int, txs: Sequence[bytes]) -> Sequence[bytes]:
        """SHA-256 of each transaction of block ``height``: the replica's, kept from its last commit, or computed."""
        known = self.replica.committed_hashes
        return known[1] if known[0] == height else [hashlib.sha256(tx).digest() for tx in txs]

    def _on_committed(self, e: Committed) -> None:
        if not self.waiters:
            return
        try:
            codes = [r.code for r in self.app.results_of(e.height)]
        except KeyError:
            codes = [0] * len(e.txs)
        for i, h in enumerate(self._tx_hashes(e.height, e.txs)):
            futs = self.waiters.pop(h, None)
            if futs:
                res = {"status": "committed", "height": e.height, "index": i, "code": codes[i]}
                for f in futs:
                    if not f.done():
                        f.set_result(res)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_MS / 1000)
            try:
                self.effects(self.replica.tick(now_ms()))
            except Exception:
                log.exception("tick failed")
                raise
            self._expire_waits()

    def _expire_waits(self) -> None:
        """End the waits whose time is up (their futures get ``_TIMED_OUT``)."""
        now = time.monotonic()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            for f in heapq.heappop(heap)[2]:
                if not f.done():
                    f.set_result(_TIMED_OUT)
        if len(heap) > 1024 and len(heap) > 4 * self._waits_live:
            self._deadlines = [e for e in heap if e[2]]            # finished waits leave empty lists
            heapq.heapify(self._deadlines)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(5)
            if self.drops:
                log.info("dropped messages by reason: %s", dict(self.drops))
                self.drops.clear()
            log.info("height %d view %d pool %d", self.replica.height, self.replica.view,
                     len(self.replica.pool))

    async def start(self) -> None:
        await self.net.start()
        await self.client.start()
        self._tasks = [asyncio.create_task(self._ticker()), asyncio.create_task(self._report())]
        log.info("node %d listening: peers %s:%d, clients %s:%d", self.index,
                 self.config.nodes[self.index].host, self.config.nodes[self.index].peer_port,
                 self.config.nodes[self.index].host, self.config.nodes[self.index].client_port)

    async def stop(self) -> None:
        """Stop taking input (timers, peers, clients), answer the transactions still queued for the
        replica with "node stopping", let the cancelled tasks end, then close the block store."""
        self.stopping = True
        for t in self._tasks:
            t.cancel()
        await self.client.stop()
        await self.net.stop()
        arrived, self._arriving = self._arriving, []
        for _, fut in arrived:
            if not fut.done():
                fut.set_result(NODE_STOPPING)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.store.close()

    # --- client requests --------------------------------------------------------------------------

    def _certified(self, height: int) -> list:
        block, cert = self.replica.block(height)
        return [block.header.to_obj(), cert.to_obj()]

    def _with_threshold(self, out: dict, height: int) -> dict:
        """Add ``threshold_header`` = [header, threshold-certificate] when block ``height`` has one (a
        client holding the group key checks it with one verification)."""
        tcert = self.replica.threshold_certs.get(height)
        if tcert is not None:
            out["threshold_header"] = [self.replica.block(height)[0].header.to_obj(), tcert.to_obj()]
        return out

    async def _record_header(self, height: int) -> list:
        """Block ``height``'s header with its threshold certificate when the set has a group key (waiting
        up to RECORD_THRESHOLD_WAIT_MS for it), so a device checks a record proof with one verification;
        else, or when none comes in time, with its vote certificate."""
        r = self.replica
        if r.config.group_key is not None:
            deadline = time.monotonic() + RECORD_THRESHOLD_WAIT_MS / 1000
            while height not in r.threshold_certs and time.monotonic() < deadline:
                await asyncio.sleep(TICK_MS / 1000)
            tcert = r.threshold_certs.get(height)
            if tcert is not None:
                return [r.block(height)[0].header.to_obj(), tcert.to_obj()]
        return self._certified(height)

    def _status(self, h: bytes) -> dict:
        loc = self.store.tx_location(h) if h in self.replica.committed_txs else None
        if loc is not None:
            return {"status": "committed", "height": loc[0], "index": loc[1], "code": loc[2]}
        if h in self.refused:
            code, reason = self.refused[h]
            return {"status": "refused", "code": code, "reason": reason}
        if h in self.replica.pool:
            return {"status": "pending"}
        return {"status": "unknown"}

    def _refuse(self, h: bytes, code: int, reason: str) -> dict:
        self.refused[h] = (code, reason)
        if len(self.refused) > MAX_REFUSED:
            self.refused.popitem(last=False)
        return {"ok": True, "status": "refused", "code": code, "reason": reason}

    def _admit(self, tx: bytes) -> asyncio.Future:
        """Queue ``tx`` for the replica; the future gives the reason it was refused, or None. The
        transactions that arrive in one turn of the event loop go to the replica together, so they
        are forwarded to the other validators in one signed request."""
        fut = asyncio.get_running_loop().create_future()
        if not self._arriving:
            asyncio.get_running_loop().call_soon(self._admit_arrived)
        self._arriving.append((tx, fut))
        return fut

    def _admit_arrived(self) -> None:
        arrived, self._arriving = self._arriving, []
        if not arrived:
            return                            # answered by ``stop``
        try:
            effects = self.replica.submit_many([tx for tx, _ in arrived], now_ms())
        except Exception as exc:
            log.exception("submit failed")
            for _, fut in arrived:
                if not fut.done():
                    fut.set_exception(exc)
            return
        drops = [e for e in effects if isinstance(e, Dropped) and e.tx is not None]
        self.effects(effects)
        k = 0
        for tx, fut in arrived:
            reason = None
            if k < len(drops) and drops[k].tx is tx:
                reason = drops[k].reason
                k += 1
            if not fut.done():
                fut.set_result(reason)

    async def _submit(self, req: dict) -> dict:
        wait = req.get("wait_ms", DEFAULT_WAIT_MS)
        if type(wait) is not int or wait < 0:
            return {"ok": False, "error": "bad wait_ms"}
        return (await self._submit_all([req.get("tx")], wait))[0]

    async def _submit_all(self, txs: list, wait: int) -> list[dict]:
        """Admit ``txs`` together and wait (up to ``wait`` ms in all) for their outcomes, in order."""
        out: list[dict | None] = [None] * len(txs)
        admitting: list[tuple[int, bytes, asyncio.Future]] = []
        for i, tx in enumerate(txs):
            if not isinstance(tx, bytes):
                out[i] = {"ok": False, "error": "tx must be bytes"}
                continue
            h = hashlib.sha256(tx).digest()
            st = self._status(h)
            if st["status"] == "committed":
                out[i] = dict(st, ok=True)
            else:
                admitting.append((i, h, self._admit(tx)))
        loop = asyncio.get_running_loop()
        waiting: list[tuple[int, bytes, asyncio.Future]] = []
        for i, h, admitted in admitting:
            reason = await admitted
            if reason == NODE_STOPPING:
                out[i] = {"ok": False, "error": NODE_STOPPING}
                continue
            if reason is not None:
                if reason.startswith("invalid tx "):
                    out[i] = self._refuse(h, int(reason[11:]), reason)
                    continue
                if reason == "oversized tx":
                    out[i] = self._refuse(h, 2, reason)
                    continue
                if reason == "pool full":
                    out[i] = {"ok": True, "status": "refused", "code": 9, "reason": reason}
                    continue
            st = self._status(h)                # committed already (e.g. by a single validator at once)
            if st["status"] == "committed":
                out[i] = dict(st, ok=True)
                continue
            if wait == 0:
                out[i] = {"ok": True, "status": "pending"}
                continue
            fut = loop.create_future()
            self.waiters.setdefault(h, []).append(fut)
            waiting.append((i, h, fut))
        if waiting:
            pending = [f for _, _, f in waiting]
            heapq.heappush(self._deadlines, (time.monotonic() + min(wait, MAX_WAIT_MS) / 1000,
                                             next(self._deadline_seq), pending))
            self._waits_live += 1
            try:
                for f in pending:
                    await f
            finally:
                pending.clear()
                self._waits_live -= 1
        for i, h, fut in waiting:
            res = fut.result()
            if res is not _TIMED_OUT:
                out[i] = dict(res, ok=True)
                continue
            futs = self.waiters.get(h)
            if futs is not None and fut in futs:
                futs.remove(fut)
                if not futs:
                    del self.waiters[h]
            out[i] = dict(self._status(h), ok=True)
        return out  # type: ignore[return-value]

    async def handle(self, req: dict) -> dict:
        """Answer one client request (see the module docstring)."""
        op = req["op"]
        r = self.replica
        if op == "submit":
            return await self._submit(req)
        if op == "submit_many":
            txs = req.get("txs")
            if not isinstance(txs, list) or not 0 < len(txs) <= MAX_SUBMIT_MANY:
                return {"ok": False, "error": "txs must be a list of 1..%d transactions" % MAX_SUBMIT_MANY}
            wait = req.get("wait_ms", DEFAULT_WAIT_MS)
            if type(wait) is not int or wait < 0:
                return {"ok": False, "error": "bad wait_ms"}
            return {"ok": True, "results": await self._submit_all(txs, wait)}
        if op == "status":
            h = req.get("hash")
            if not isinstance(h, bytes) or len(h) != 32:
                return {"ok": False, "error": "hash must be 32 bytes"}
            return dict(self._status(h), ok=True)
        if op == "info":
            return {"ok": True, "index": self.index, "height": r.height, "view": r.view,
                    "primary": r.config.primary(r.view), "pool": len(r.pool),
                    "in_view_change": r.in_view_change}
        if op == "set_change":
            return reconfig.set_change_answer(self, req)
        if op == "validators":
            rc = r.config                              # the set in force (it changes through the ledger)
            out = {"ok": True, "chain_id": self.config.chain_id, "f": rc.f,
                   "validators": [[i, k] for i, k in enumerate(rc.validators)]}
            if rc.group_key is not None:
                out["group_key"] = rc.group_key
                out["verifying_shares"] = list(rc.verifying_shares)
            return out
        if op in ("latest", "header", "block"):
            height = r.height if op == "latest" else req.get("height")
            if type(height) is not int or not 0 <= height <= r.height:
                return {"ok": False, "error": "no such block"}
            out: dict[str, Any] = {"ok": True, "height": height, "certified_header": self._certified(height)}
            if op == "block":
                out["txs"] = list(r.block(height)[0].txs)
            return self._with_threshold(out, height)
        if op == "record":
            kind, rid = req.get("kind"), req.get("record_id")
            if type(kind) is not int or r.height < 0:
                return {"ok": False, "error": "bad kind" if r.height >= 0 else "no certified block yet"}
            try:
                key, value, proof = self.app.prove(kind, rid)
            except Exception:
                return {"ok": False, "error": "bad record id"}
            height = r.height                          # the proof is against this block's state root
            return {"ok": True, "height": height,
                    "proof": {1: await self._record_header(height), 2: key, 3: value,
                              4: smt.proof_to_cbor_obj(proof)}}
        if op == "tx_proof":
            h = req.get("hash")
            if not isinstance(h, bytes) or len(h) != 32:
                return {"ok": False, "error": "hash must be 32 bytes"}
            loc = self.store.tx_location(h)
            if loc is None or loc[0] > r.height:
                return dict(self._status(h), ok=False, error="not committed")
            height, index, code = loc
            txs = list(r.block(height)[0].txs)
            proof = merkle.MerkleTree(txs).inclusion_proof(index)
            return self._with_threshold({"ok": True, "height": height, "certified_header": self._certified(height),
                                         "tx": txs[index], "index": index, "size": len(txs), "proof": list(proof),
                                         "code": code}, height)
        return {"ok": False, "error": "unknown op"}


async def _main(args: argparse.Namespace) -> None:
    config = ClusterConfig.load(args.config)
    config.peers_file = Path(args.peers) if args.peers else None
    key_file = args.key or config.nodes[args.index].key_file
    if key_file is None:
        raise SystemExit("no key file: give --key or nodes[i].key_file in the config")
    node = Node(config, args.index, args.data, load_key(key_file), load_share(key_file),
                reconfig.share_loader(key_file))
    gc.freeze()                       # the restored state is long-lived: no collection scans it again
    gc.set_threshold(GC_THRESHOLD, 10, 10)
    await node.start()
    if args.metrics_port is not None:
        from ledgerlink.ledger.metrics import serve_node
        serve_node(node, config.nodes[args.index].host, args.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("node %d stopping at height %d", args.index, node.replica.height)
    await node.stop()


def node_arguments(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every validator process takes (config, index, data, key, log level)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", required=True, help="cluster config (JSON or TOML)")
    p.add_argument("--index", required=True, type=int, help="validator index")
    p.add_argument("--data", required=True, help="data directory (block store)")
    p.add_argument("--key", help="private key file (hex); default: nodes[i].key_file of the config")
    p.add_argument("--log-level", default=os.environ.get("LEDGERLINK_LOG", "INFO"))
    return p


def start_logging(args: argparse.Namespace, name: str) -> None:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s " + name + str(args.index) + " %(name)s %(levelname)s %(message)s")


def main(argv: list[str] | None = None) -> None:
    p = node_arguments("python3 -m ledgerlink.ledger.node", __doc__.split("\n")[0])
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (default: off)")
    p.add_argument("--peers", metavar="FILE", help="addresses of validators added after genesis, by key "
                   "(default: peers.json beside the config; read when the set grows)")
    args = p.parse_args(argv)
    start_logging(args, "node")
    prof_dir = os.environ.get("LEDGERLINK_PROFILE_DIR")
    if not prof_dir:
        asyncio.run(_main(args))
        return
    import cProfile
    prof = cProfile.Profile()
    try:
        prof.runcall(asyncio.run, _main(args))
    finally:
        prof.dump_stats(os.path.join(prof_dir, "node%d.prof" % args.index))


if __name__ == "__main__":
    main()
