"""Batches of accepted frames anchored on the ledger, receipts, and warnings posted to the ledger.

``Batcher.step(now_ms)`` (called every ~100 ms) cuts the stored, not yet batched frames into a batch
when ``max_batch`` frames wait or the oldest waited ``interval_ms``: the RFC 9162 root over the frames
(in arrival order) and their count go into an anchor transaction, stored with the batch before it is
submitted, so after a crash the same transaction is submitted again (the ledger answers a committed
transaction with where it was committed). Once the ledger has committed it, the transaction's inclusion
proof and certified header are checked with ``spv`` against the trusted validator set, and every
frame of the batch gets a ``receipt`` (docs/protocol.md) on its device's down topic. Refusal records go
to the ledger in ``tx-warnings`` of at most 32 entries; session certificates in ``tx-cert-record``.

Protects against: losing acknowledged frames (they are in the store before the ack and anchored after a
restart); receipts the ledger did not certify (proofs are verified before a receipt is sent);
an anchor refused for time or nonce (rebuilt with a fresh time and nonce). Tested in
tests/gateway/test_batcher.py against an in-process ledger whose headers are certified by real
validator signatures; receipts are checked as a device would check them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ledgerlink.core import cbor, merkle, spv
from ledgerlink.core.errors import InvalidMessage, InvalidProof
from ledgerlink.gateway.store import Batch, Store
from ledgerlink.ledger.state import encoding as enc

log = logging.getLogger("ledgerlink.gateway.batcher")

REBUILD_CODES = (7, 8)          # replay (nonce), clock-skew: rebuild the transaction
MAX_WARNINGS_PER_TX = 32
MAX_WARNING_TXS_PER_STEP = 8


class Ledger(Protocol):
    """What the batcher needs of a ledger client (``ledgerlink.ledger.client.LedgerClient`` has it)."""

    def submit(self, tx: bytes, wait_ms: int = 10000) -> dict: ...

    def tx_proof(self, tx_hash: bytes) -> dict: ...

    def record(self, kind: int, record_id: Any) -> dict: ...

    def latest(self) -> dict: ...


@dataclass
class Outgoing:
    """Something to publish: ``retain`` for the certified header."""

    topic: str
    payload: bytes
    retain: bool = False


def down_topic(site: str, dev: bytes) -> str:
    return "ll/%s/dev/%s/down" % (site, dev.hex())


def verify_receipt(receipt: bytes | dict, frame: bytes, chain_id: str, validator_keys: list[bytes]) -> spv.Header:
    """A device's check of a receipt for ``frame``; returns the certifying header or raises InvalidProof."""
    r = cbor.loads(receipt) if isinstance(receipt, (bytes, bytearray)) else receipt
    if not isinstance(r, dict) or r.get(0) != 1 or r.get(1) != hashlib.sha256(frame).digest():
        raise InvalidProof("not a receipt of this frame")
    header = spv.verify_certified_header(r[7], chain_id, validator_keys)
    atp = r[6]
    spv.verify_tx_inclusion(header, atp[1], atp[2], atp[3], atp[4])
    body = cbor.loads(cbor.loads(atp[1]).value[2])
    if body.get(1) != 5 or body.get(6) != r[4]:
        raise InvalidProof("the transaction is not an anchor of this batch")
    merkle.verify_inclusion(merkle.leaf_hash(r[1]), r[3], r[4], r[5], body[5])
    return header


class Batcher:
    """Anchors the batches of ``store`` through ``ledger``; returns what to publish from ``step``."""

    def __init__(self, store: Store, ledger: Ledger, site: str, chain_id: str, validator_keys: list[bytes],
                 gateway_priv: bytes, max_batch: int = 256, interval_ms: int = 100, wait_ms: int = 10000,
                 rng: Callable[[int], bytes] | None = None) -> None:
        self.store = store
        self.ledger = ledger
        self.site = site
        self.chain_id = chain_id
        self.validator_keys = list(validator_keys)
        self.priv = gateway_priv
        self.max_batch = max_batch
        self.interval_ms = interval_ms
        self.wait_ms = wait_ms
        self.rng = rng or os.urandom
        self.last_header: tuple[int, bytes] | None = None

    # --- cutting ----------------------------------------------------------------------------------

    def cut(self, now_ms: int, force: bool = False) -> Batch | None:
        """Make a batch of the waiting frames when it is time (or ``force``)."""
        waiting = self.store.unbatched(self.max_batch)
        if not waiting:
            return None
        if not force and len(waiting) < self.max_batch and now_ms - waiting[0].received_ms < self.interval_ms:
            return None
        root = merkle.MerkleTree([m.frame_hash for m in waiting]).root()
        batch_id = self.rng(16)
        tx = enc.anchor_tx(self.chain_id, self.priv, batch_id, root, len(waiting), now_ms, rng=self.rng)
        self.store.create_batch(batch_id, root, tx, [m.id for m in waiting], now_ms)
        return self.store.batch(batch_id)

    # --- anchoring --------------------------------------------------------------------------------

    def _submit(self, tx: bytes) -> dict | None:
        try:
            return self.ledger.submit(tx, self.wait_ms)
        except Exception as exc:  # noqa: BLE001 - ledger unavailable: retried at the next step
            log.warning("ledger submit failed: %s", exc)
            return None

    def _proof(self, tx: bytes) -> tuple[dict, spv.Header] | None:
        try:
            p = self.ledger.tx_proof(enc.tx_id(tx))
        except Exception as exc:  # noqa: BLE001
            log.warning("ledger tx_proof failed: %s", exc)
            return None
        if not p.get("ok") or p.get("tx") != tx:
            return None
        try:
            certified = cbor.dumps(p["certified_header"])
            header = spv.verify_certified_header(certified, self.chain_id, self.validator_keys)
            spv.verify_tx_inclusion(header, tx, p["index"], p["size"], p["proof"])
        except Exception as exc:  # noqa: BLE001 - a node lying about the anchor
            log.error("anchor proof from the ledger does not verify: %s", exc)
            return None
        if self.last_header is None or header.height > self.last_header[0]:
            self.last_header = (header.height, certified)
        return p, header

    def anchor(self, batch: Batch, now_ms: int, retry: bool = True) -> list[Outgoing]:
        """Submit a pending batch's anchor; on commit return its receipts."""
        res = self._submit(batch.tx)
        if res is None or not res.get("ok"):
            return []
        status = res.get("status")
        if status == "refused" or (status == "committed" and res.get("code", 0) != 0):
            code = res.get("code")
            if code in REBUILD_CODES:
                tx = enc.anchor_tx(self.chain_id, self.priv, batch.id, batch.root, batch.count, now_ms, rng=self.rng)
                self.store.replace_batch_tx(batch.id, tx)
                log.info("anchor of batch %s rebuilt after refusal %s", batch.id.hex(), code)
                rebuilt = self.store.batch(batch.id)
                if retry and rebuilt is not None:
                    return self.anchor(rebuilt, now_ms, retry=False)
            else:
                self.store.set_batch_status(batch.id, "failed")
                log.error("anchor of batch %s refused by the ledger: %s %s", batch.id.hex(), code, res.get("reason"))
            return []
        if status != "committed":
            return []
        got = self._proof(batch.tx)
        if got is None:
            return []
        p, _ = got
        anchor_proof = {1: batch.tx, 2: p["index"], 3: p["size"], 4: list(p["proof"])}
        self.store.set_batch_status(batch.id, "anchored", cbor.dumps([anchor_proof, p["certified_header"]]))
        return self.receipts(batch.id)

    def receipts(self, batch_id: bytes) -> list[Outgoing]:
        """The receipts of an anchored batch, one per frame, for the devices' down topics."""
        batch = self.store.batch(batch_id)
        if batch is None or batch.proof is None:
            return []
        anchor_proof, certified = cbor.loads(batch.proof)
        msgs = self.store.batch_messages(batch_id)
        tree = merkle.MerkleTree([m.frame_hash for m in msgs])
        out = []
        for m in msgs:
            receipt = {0: 1, 1: m.frame_hash, 2: m.seq, 3: m.leaf, 4: len(msgs), 5: tree.inclusion_proof(m.leaf),
                       6: anchor_proof, 7: certified}
            out.append(Outgoing(down_topic(self.site, m.device), cbor.dumps(receipt)))
        return out

    # --- warnings and certificates ------------------------------------------------------------------

    def post_warnings(self, now_ms: int) -> None:
        for _ in range(MAX_WARNING_TXS_PER_STEP):
            entries = self.store.queued_warnings(MAX_WARNINGS_PER_TX)
            if not entries:
                break
            while True:
                try:
                    tx = enc.warnings_tx(self.chain_id, self.priv, entries, now_ms, rng=self.rng)
                    break
                except InvalidMessage:              # over the 4096-byte frame limit
                    entries = entries[:len(entries) // 2]
            self.store.create_warning_tx(tx, [e[1] for e in entries])
        for h, tx in self.store.warning_txs("pending"):
            res = self._submit(tx)
            if res is None or not res.get("ok") or res.get("status") == "pending":
                continue
            if res.get("status") == "committed" and res.get("code", 0) == 0:
                self.store.set_warning_tx_status(h, "committed")
            else:
                self.store.set_warning_tx_status(h, "refused")
                log.warning("warnings transaction refused: %s %s", res.get("code"), res.get("reason"))

    def record_certs(self, now_ms: int) -> None:
        for _, cert in self.store.certificates("pending"):
            res = self._submit(enc.cert_record_tx_for(self.chain_id, self.priv, cert, now_ms, rng=self.rng))
            if res is None or not res.get("ok") or res.get("status") == "pending":
                continue
            ok = res.get("status") == "committed" and res.get("code", 0) == 0
            self.store.set_cert_status(cert, "recorded" if ok else "refused")
            if not ok:
                log.warning("cert record refused: %s %s", res.get("code"), res.get("reason"))

    # --- one step -----------------------------------------------------------------------------------

    def step(self, now_ms: int, force: bool = False) -> list[Outgoing]:
        """Cut, anchor pending batches, post warnings and certificate records; return what to publish."""
        out: list[Outgoing] = []
        while self.cut(now_ms, force) is not None:
            pass
        for batch in self.store.batches("pending"):
            out.extend(self.anchor(batch, now_ms))
        self.post_warnings(now_ms)
        self.record_certs(now_ms)
        if self.last_header is not None and out:
            out.append(Outgoing("ll/%s/ledger/header" % self.site, self.last_header[1], retain=True))
        return out
