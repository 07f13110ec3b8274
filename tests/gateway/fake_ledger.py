"""FakeLedgerAdapter: an in-process, LedgerState-backed stand-in for ``LedgerClient`` in gateway tests only.

Every accepted transaction is committed at once as a one-transaction block whose header is certified
by 2f+1 (or ``votes``) real DevNet validator signatures, so record and transaction proofs check with
``ledgerlink.protocol.spv`` exactly as proofs from real nodes do. Answers have the shapes of the node's
client port (``submit``, ``status``, ``latest``, ``block``, ``record``, ``tx_proof``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, Callable

from ledgerlink.core import merkle, smt
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.state.codes import RecordKind, Role
from tests.devnet import DevNet

CRYPTO = get_backend("cpython")


class FakeLedgerAdapter:
    def __init__(self, net: DevNet | None = None, votes: int | None = None,
                 clock: Callable[[], int] | None = None) -> None:
        self.net = net or DevNet()
        self.state = self.net.genesis()
        self.keys = [self.net[n].pub for n in self.net.validator_names]
        self.votes = votes if votes is not None else len(self.keys) - (len(self.keys) - 1) // 3
        self.clock = clock or (lambda: max(self.state.last_time, int(time.time() * 1000)))
        self.blocks: list[tuple[list, list[bytes]]] = []      # (certified header obj, txs)
        self.locations: dict[bytes, tuple[int, int, int]] = {}
        self.lock = threading.Lock()
        self.available = True
        self.submitted: list[bytes] = []
        self.many: list[int] = []
        self.commit_block([])

    @property
    def chain_id(self) -> str:
        return self.net.chain_id

    @property
    def height(self) -> int:
        return len(self.blocks)

    def _check(self) -> None:
        if not self.available:
            raise ConnectionError("fake ledger is down")

    def certify(self, height: int, prev: bytes, time_ms: int, txs: list[bytes], root: bytes, votes: int) -> list:
        header = m.Header(self.net.chain_id, height, prev, time_ms, merkle.root_of(txs) if txs else bytes(32),
                          root, m.validators_hash(self.keys))
        hh = header.hash()
        msg = m.commit_sign_bytes(self.net.chain_id, height, 0, hh)
        cert = m.CommitCertificate(height, 0, hh, tuple(
            (i, CRYPTO.sign(self.net[self.net.validator_names[i]].priv, msg)) for i in range(votes)))
        return [header.to_obj(), cert.to_obj()]

    def commit_block(self, txs: list[bytes], time_ms: int | None = None) -> list:
        with self.lock:
            height = len(self.blocks) + 1
            t = max(self.state.last_time, time_ms if time_ms is not None else self.clock())
            root = self.state.execute(height, t, txs)
            self.state.commit(height)
            prev = bytes(32) if not self.blocks else m.Header.from_obj(self.blocks[-1][0][0]).hash()
            certified = self.certify(height, prev, t, txs, root, self.votes)
            self.blocks.append((certified, list(txs)))
            results = self.state.results_of(height)
            for i, tx in enumerate(txs):
                self.locations[hashlib.sha256(tx).digest()] = (height, i, results[i].code)
            return results

    # --- LedgerClient API ------------------------------------------------------------------------

    def submit(self, tx: bytes, wait_ms: int = 10000) -> dict:
        self._check()
        self.submitted.append(tx)
        h = hashlib.sha256(tx).digest()
        if h in self.locations:
            height, index, code = self.locations[h]
            return {"ok": True, "status": "committed", "height": height, "index": index, "code": code}
        res = self.state.check_tx_detail(tx, max(self.state.last_time, self.clock()))
        if not res.ok:
            return {"ok": True, "status": "refused", "code": res.code, "reason": res.text}
        self.commit_block([tx])
        height, index, code = self.locations[h]
        return {"ok": True, "status": "committed", "height": height, "index": index, "code": code}

    def submit_many(self, txs: list[bytes], wait_ms: int = 10000) -> list[dict]:
        """``LedgerClient.submit_many``: here one after the other; each call's size is kept in ``many``."""
        self.many.append(len(txs))
        return [self.submit(tx, wait_ms) for tx in txs]

    def status(self, tx_hash: bytes) -> dict:
        self._check()
        loc = self.locations.get(tx_hash)
        if loc is None:
            return {"ok": True, "status": "unknown"}
        return {"ok": True, "status": "committed", "height": loc[0], "index": loc[1], "code": loc[2]}

    def latest(self) -> dict:
        self._check()
        return {"ok": True, "height": self.height, "certified_header": self.blocks[-1][0]}

    def block(self, height: int) -> dict:
        self._check()
        if not 1 <= height <= self.height:
            return {"ok": False, "error": "no such block"}
        certified, txs = self.blocks[height - 1]
        return {"ok": True, "height": height, "certified_header": certified, "txs": list(txs)}

    def record(self, kind: int, record_id: Any) -> dict:
        self._check()
        with self.lock:
            key, value, proof = self.state.prove(kind, record_id)
            return {"ok": True, "height": self.height,
                    "proof": {1: self.blocks[-1][0], 2: key, 3: value, 4: smt.proof_to_cbor_obj(proof)}}

    def tx_proof(self, tx_hash: bytes) -> dict:
        self._check()
        loc = self.locations.get(tx_hash)
        if loc is None:
            return {"ok": False, "status": "unknown", "error": "not committed"}
        height, index, code = loc
        certified, txs = self.blocks[height - 1]
        return {"ok": True, "height": height, "certified_header": certified, "tx": txs[index], "index": index,
                "size": len(txs), "proof": list(merkle.MerkleTree(txs).inclusion_proof(index)), "code": code}

    def close(self) -> None:
        pass

    # --- test helpers ----------------------------------------------------------------------------

    def device_proof(self, dev: bytes) -> dict:
        return self.record(RecordKind.DEVICE, dev)["proof"]

    def register(self, name: str, role: int = Role.SENSOR) -> None:
        results = self.commit_block([self.net.register("admin", name, role, time_ms=self.state.last_time)],
                                    self.state.last_time)
        assert results[0].ok, results[0]

    def ban(self, name: str) -> None:
        tx = self.net.tx("admin", 3, {4: self.net[name].id, 5: "test ban"}, time_ms=self.state.last_time)
        results = self.commit_block([tx], self.state.last_time)
        assert results[0].ok, results[0]
