"""Batches of accepted frames anchored on the ledger, receipts, and warnings posted to the ledger.

``Batcher.step(now_ms)`` (called every ~100 ms) cuts the stored, not yet batched frames into a batch
when ``max_batch`` frames wait or the oldest waited ``interval_ms``: the RFC 9162 root over the frames
(in arrival order) and their count go into an anchor transaction, stored with the batch before it is
submitted, so after a crash the same transaction is submitted again (the ledger answers a committed
transaction with where it was committed). Once the ledger has committed it, the transaction's inclusion
proof and certified header are checked with ``spv`` against the trusted validator set, and every
frame of the batch gets a ``receipt`` (docs/protocol.md) on its device's down topic. The receipts a step
returns are marked published at the next step (the transport publishes them in between), so the first
step after a restart publishes those of batches anchored just before the crash. Queued warnings and
pending certificates are asked of the store only while some wait or after this process wrote one
(``Store.records_written``), so a step with nothing to post costs the store two queries. Refusal
records go to the ledger in ``tx-warnings`` of at most 32 entries; session certificates in
``tx-cert-record``. The transactions of a step are submitted together (``submit_many``), so a step waits
for about one commit.

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
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ledgerlink.core import cbor, cose, merkle
from ledgerlink.protocol import spv
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidMessage, InvalidProof, LedgerlinkError
from ledgerlink.gateway.chain_statements import covering as covering_statement
from ledgerlink.gateway.store import Batch, Store
from ledgerlink.protocol import ledger_tx as enc
from ledgerlink.protocol.codes import REASON_CLOCK_SKEW, REASON_REPLAY

log = logging.getLogger("ledgerlink.gateway.batcher")

REBUILD_CODES = (REASON_REPLAY, REASON_CLOCK_SKEW)     # a tx refused for its nonce or time is built again
MAX_WARNINGS_PER_TX = enc.MAX_WARNINGS
MAX_WARNING_TXS_PER_STEP = 8
MAX_CERTS_PER_STEP = 256
POOL_FULL = "pool full"         # the node's transaction pool is full: submitted again at the next step
THRESHOLD_WAIT_MS = 2000        # longest an anchor's proof is asked again for its block's threshold certificate
THRESHOLD_REFETCH_MS = 20       # between two such asks


class Ledger(Protocol):
    """What the batcher needs of a ledger client (``ledgerlink.ledger.client.LedgerClient`` has it)."""

    def submit(self, tx: bytes, wait_ms: int = 10000) -> dict: ...

    def tx_proof(self, tx_hash: bytes) -> dict: ...

    def record(self, kind: int, record_id: Any) -> dict: ...

    def latest(self) -> dict: ...

    def block(self, height: int) -> dict: ...


@dataclass
class Outgoing:
    """Something to publish: ``retain`` for the certified header; ``qos`` 0 for stored-acks."""

    topic: str
    payload: bytes
    retain: bool = False
    frame_hash: bytes | None = None     # for a receipt: the frame it is for
    qos: int = 1


def down_topic(site: str, dev: bytes) -> str:
    return "ll/%s/dev/%s/down" % (site, dev.hex())


def verify_receipt(receipt: bytes | dict, frame: bytes, chain_id: str, validator_keys: list[bytes],
                   group_key: bytes | None = None) -> spv.Header:
    """A device's check of a receipt for ``frame``; returns the certifying header or raises InvalidProof."""
    r = cbor.loads(receipt) if isinstance(receipt, (bytes, bytearray)) else receipt
    if not isinstance(r, dict) or r.get(0) != 1 or r.get(1) != hashlib.sha256(frame).digest():
        raise InvalidProof("not a receipt of this frame")
    header = spv.verify_certified_header(r[7], chain_id, validator_keys, group_key=group_key)
    atp = r[6]
    spv.verify_tx_inclusion(header, atp[1], atp[2], atp[3], atp[4])
    body = cbor.loads(cbor.loads(atp[1]).value[2])
    if body.get(1) != 5 or body.get(6) != r[4]:
        raise InvalidProof("the transaction is not an anchor of this batch")
    merkle.verify_inclusion(merkle.leaf_hash(r[1]), r[3], r[4], r[5], body[5])
    seq = frame_seq(frame)
    if seq is not None and r.get(2) != seq:
        raise InvalidProof("the receipt names seq %r, the frame has seq %d" % (r.get(2), seq))
    return header


def frame_seq(frame: bytes) -> int | None:
    """The seq a reading frame carries (the signed reading's key 2, or a session frame's Partial IV), or
    None when ``frame`` is not a COSE reading. The receipt's seq is bookkeeping outside the proof; this
    binds it to the frame the proof is for."""
    try:
        if frame[:1] == b"\xd2":
            reading = cbor.loads(cose.decode_sign1(frame).payload)
            seq = reading.get(2) if isinstance(reading, dict) else None
            return seq if cbor.is_uint(seq) else None
        if frame[:1] == b"\xd0":
            piv = cose.decode_encrypt0(frame).partial_iv
            return int.from_bytes(piv, "big") if piv else None
    except (LedgerlinkError, ValueError, TypeError):
        return None
    return None


def cbor_head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type ``major`` with argument ``n`` (RFC 8949 section 4.2.1)."""
    if n < 24:
        return bytes(((major << 5) | n,))
    if n < 0x100:
        return bytes(((major << 5) | 24, n))
    if n < 0x10000:
        return bytes(((major << 5) | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes(((major << 5) | 26,)) + n.to_bytes(4, "big")
    return bytes(((major << 5) | 27,)) + n.to_bytes(8, "big")


_HASH_ITEM = b"\x58\x20"           # CBOR head of a 32-byte byte string
TREES_KEPT = 16                    # trees of batches cut and not yet anchored, kept for their receipts


def encoded_inclusion_proofs(entries: list[bytes]) -> tuple[bytes, list[tuple[int, bytes]]]:
    """The RFC 9162 root of ``entries`` and, for every entry, its inclusion proof as (number of hashes,
    the hashes' CBOR byte strings concatenated), all in one pass over the tree (the proofs of leaves
    with a common ancestor share the encoding of the path above it)."""
    if not entries:
        raise ValueError("no entries")
    return encoded_proofs_of_leaves(leaf_hashes_of(entries))


def leaf_hashes_of(entries: list[bytes]) -> list[bytes]:
    """``merkle.leaf_hash`` of each entry (bytes), SHA-256(0x00 || entry) taken in one call each."""
    sha256 = hashlib.sha256
    return [sha256(b"\x00" + e).digest() for e in entries]


def tree_levels(leaf_hashes: list[bytes]) -> list[list[bytes]]:
    """``merkle.tree_levels`` of ``leaf_hashes`` (at least one), each node hash taken in one call."""
    sha256 = hashlib.sha256
    level = leaf_hashes
    levels = [level]
    while len(level) > 1:
        up = [sha256(b"\x01" + level[k] + level[k + 1]).digest() for k in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            up.append(level[-1])
        levels.append(up)
        level = up
    return levels


def encoded_proofs_of_leaves(leaf_hashes: list[bytes]) -> tuple[bytes, list[tuple[int, bytes]]]:
    """``encoded_inclusion_proofs`` of the entries whose leaf hashes are ``leaf_hashes`` (at least one)."""
    return encoded_proofs_of_levels(tree_levels(leaf_hashes))


def encoded_proofs_of_levels(levels: list[list[bytes]]) -> tuple[bytes, list[tuple[int, bytes]]]:
    """``encoded_inclusion_proofs`` of the tree whose ``tree_levels`` are ``levels``."""
    above: list[tuple[int, bytes]] = [(0, b"")]
    for level in reversed(levels[:-1]):
        m = len(level)
        paths = []
        for j in range(m):
            count, rest = above[j >> 1]
            s = j ^ 1
            paths.append((count + 1, _HASH_ITEM + level[s] + rest) if s < m else (count, rest))
        above = paths
    return levels[-1][0], above


def inclusion_proofs(entries: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The RFC 9162 root of ``entries`` and the inclusion proof of every entry (``encoded_inclusion_proofs``)."""
    root, encoded = encoded_inclusion_proofs(entries)
    return root, [[enc[k + 2:k + 34] for k in range(0, 34 * count, 34)] for count, enc in encoded]


def batch_receipts(store: Store, site: str, batch_id: bytes, only: bytes | None = None,
                   tree: tuple[list[bytes], list[list[bytes]]] | None = None) -> list[Outgoing]:
    """The receipts of an anchored batch of ``store``, one per frame (``only``: of that frame hash alone),
    for the devices' down topics. ``tree``: the (frame hashes, ``tree_levels``) the batch's root was made
    from when it was cut, used when the stored leaves are those frame hashes (its node hashes are not
    taken again).

    A receipt is the deterministic CBOR map {0: 1, 1: frame hash, 2: seq, 3: leaf, 4: size,
    5: inclusion proof, 6: anchor proof, 7: certified header}; the encoding of 6 and 7, the same in
    every receipt of the batch, is made once.
    """
    batch = store.batch(batch_id)
    if batch is None or batch.proof is None:
        return []
    proof = cbor.loads(batch.proof)
    shared = b"\x06" + cbor.dumps(proof[0]) + b"\x07" + cbor.dumps(proof[1])
    leaves = store.batch_leaves(batch_id)
    size = len(leaves)
    if not leaves:
        return []
    hashes = [leaf[0] for leaf in leaves]
    levels = tree[1] if tree is not None and tree[0] == hashes else tree_levels(leaf_hashes_of(hashes))
    root, proofs = encoded_proofs_of_levels(levels)
    if root != batch.root or [leaf[3] for leaf in leaves] != list(range(size)):
        log.error("stored batch %s does not match its anchored root", batch_id.hex())
        return []
    out = []
    size_item = b"\x04" + cbor_head(0, size)
    arrays = [b"\x05" + cbor_head(4, n) for n in range(max(count for count, _ in proofs) + 1)]
    named = store.batch_covering(batch_id)            # frame -> (the statement chain_frames names for it, its id)
    topics: dict[bytes, str] = {}                     # device -> its down topic
    in_batch = {leaf[0] for leaf in leaves} if named else set()
    checked = {s: True for s, _ in named.values() if s in in_batch}    # statement -> stored and anchored
    for (frame_hash, device, seq, leaf), (count, path) in zip(leaves, proofs):
        if only is not None and frame_hash != only:
            continue
        # the deterministic map of 8 entries, keys 0..7 in order (6 and 7 shared by the batch), and 8: the
        # device-signed chain statement that covers a session reading, when one is stored and anchored
        statement, frame_id = named.get(frame_hash, (None, 0)) if named else (None, 0)
        if statement is not None and not checked.get(statement):
            statement = covering_statement(store, frame_hash, checked, statement, frame_id)
        payload = b"".join((b"\xa8\x00\x01\x01" if statement is None else b"\xa9\x00\x01\x01",
                            cbor_head(2, len(frame_hash)), frame_hash, b"\x02", cbor_head(0, seq),
                            b"\x03", cbor_head(0, leaf), size_item, arrays[count], path, shared,
                            b"" if statement is None else b"\x08\x58\x20" + statement))
        topic = topics.get(device)
        if topic is None:
            topic = topics[device] = down_topic(site, device)
        out.append(Outgoing(topic, payload, False, frame_hash))
    return out


class Batcher:
    """Anchors the batches of ``store`` through ``ledger``; returns what to publish from ``step``."""

    def __init__(self, store: Store, ledger: Ledger, site: str, chain_id: str, validator_keys: list[bytes],
                 gateway_priv: bytes, max_batch: int = 256, interval_ms: int = 100, wait_ms: int = 10000,
                 rng: Callable[[int], bytes] | None = None, group_key: bytes | None = None) -> None:
        """``group_key``: the validator set's FROST group key, when it has one; receipts then carry the
        header with its threshold certificate (one verification for the device) when the ledger has it."""
        self.store = store
        self.ledger = ledger
        self.site = site
        self.chain_id = chain_id
        self.validator_keys = list(validator_keys)
        self.group_key = group_key
        self.priv = gateway_priv
        self.max_batch = max_batch
        self.interval_ms = interval_ms
        self.wait_ms = wait_ms
        self.rng = rng or os.urandom
        self.kid = enc.device_id(get_backend(None).public_key(gateway_priv, True))    # of the signed transactions
        self.last_header: tuple[int, bytes] | None = None
        self._handed_out: list[bytes] = []     # batches whose receipts the last step returned
        self._trees: dict[bytes, tuple[list[bytes], list[list[bytes]]]] = {}   # batch cut here -> (frame hashes, levels)
        self._resent = False                   # the receipts left unsent before this start were looked for
        self._records_seen: int | None = None  # ``store.records_written`` when no warning or certificate waited

    # --- cutting ----------------------------------------------------------------------------------

    def cut(self, now_ms: int, force: bool = False) -> Batch | None:
        """Make a batch of the waiting frames when it is time (or ``force``)."""
        if not force:
            oldest = self.store.unbatched_leaves(1)
            if not oldest:
                return None
            if now_ms - oldest[0][2] < self.interval_ms and not self.store.unbatched_leaves(1, self.max_batch - 1):
                return None
        waiting = self.store.unbatched_leaves(self.max_batch)
        if not waiting:
            return None
        hashes = [m[1] for m in waiting]
        levels = tree_levels(leaf_hashes_of(hashes))
        root = levels[-1][0]
        batch_id = self.rng(16)
        tx = enc.anchor_tx(self.chain_id, self.priv, batch_id, root, len(waiting), now_ms, rng=self.rng, kid=self.kid)
        self.store.create_batch(batch_id, root, tx, [m[0] for m in waiting], now_ms)
        if len(self._trees) >= TREES_KEPT:
            del self._trees[next(iter(self._trees))]
        self._trees[batch_id] = (hashes, levels)
        return self.store.batch(batch_id)

    # --- anchoring --------------------------------------------------------------------------------

    def _submit_many(self, txs: list[bytes]) -> list[dict | None]:
        """Submit ``txs`` concurrently when the ledger client can (``submit_many``); None for a failed one."""
        if not txs:
            return []
        many = getattr(self.ledger, "submit_many", None)
        if many is not None and len(txs) > 1:
            try:
                return list(many(txs, self.wait_ms))
            except Exception as exc:  # noqa: BLE001 - ledger unavailable: retried at the next step
                log.warning("ledger submit failed: %s", exc)
                return [None] * len(txs)
        out: list[dict | None] = []
        for tx in txs:
            try:
                out.append(self.ledger.submit(tx, self.wait_ms))
            except Exception as exc:  # noqa: BLE001
                log.warning("ledger submit failed: %s", exc)
                out.append(None)
        return out

    def _fetch_proof(self, tx_hash: bytes) -> dict:
        """The ledger's ``tx_proof`` answer; with a group key, asked again for up to THRESHOLD_WAIT_MS until
        it carries the block's threshold certificate (made just after the commit), so receipts do."""
        p = self.ledger.tx_proof(tx_hash)
        if self.group_key is None:
            return p
        deadline = time.monotonic() + THRESHOLD_WAIT_MS / 1000
        while p.get("ok") and p.get("threshold_header") is None and time.monotonic() < deadline:
            time.sleep(THRESHOLD_REFETCH_MS / 1000)
            p = self.ledger.tx_proof(tx_hash)
        if p.get("ok") and p.get("threshold_header") is None:
            log.warning("no threshold certificate for the anchor at height %s: its receipts carry votes",
                        p.get("height"))
        return p

    def _proof(self, tx: bytes) -> tuple[dict, spv.Header] | None:
        try:
            p = self._fetch_proof(enc.tx_id(tx))
        except Exception as exc:  # noqa: BLE001
            log.warning("ledger tx_proof failed: %s", exc)
            return None
        if not p.get("ok") or p.get("tx") != tx:
            return None
        if self.group_key is not None and p.get("threshold_header") is not None:
            p = dict(p, certified_header=p["threshold_header"])
        try:
            certified = cbor.dumps(p["certified_header"])
            header = spv.verify_certified_header(certified, self.chain_id, self.validator_keys,
                                                 group_key=self.group_key)
            spv.verify_tx_inclusion(header, tx, p["index"], p["size"], p["proof"])
        except Exception as exc:  # noqa: BLE001 - a node lying about the anchor
            log.error("anchor proof from the ledger does not verify: %s", exc)
            return None
        if self.last_header is None or header.height > self.last_header[0]:
            self.last_header = (header.height, certified)
        return p, header

    def anchor(self, batch: Batch, now_ms: int, retry: bool = True) -> list[Outgoing]:
        """Submit a pending batch's anchor; on commit return its receipts."""
        return self._anchored(batch, self._submit_many([batch.tx])[0], now_ms, retry)

    def _anchored(self, batch: Batch, res: dict | None, now_ms: int, retry: bool = True) -> list[Outgoing]:
        """Act on the ledger's answer ``res`` to the anchor of ``batch``; on commit return its receipts."""
        if res is None or not res.get("ok"):
            return []
        status = res.get("status")
        if status == "refused" or (status == "committed" and res.get("code", 0) != 0):
            code = res.get("code")
            if res.get("reason") == POOL_FULL:
                return []
            if code in REBUILD_CODES:
                tx = enc.anchor_tx(self.chain_id, self.priv, batch.id, batch.root, batch.count, now_ms, rng=self.rng,
                                   kid=self.kid)
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
        """The receipts of an anchored batch, one per frame (``batch_receipts``)."""
        self._handed_out.append(batch_id)
        return batch_receipts(self.store, self.site, batch_id, tree=self._trees.pop(batch_id, None))

    def _unsent_receipts(self) -> list[Outgoing]:
        """Mark the receipts handed out by the last step as sent (the transport published them before it
        called this step); at the first step, return those of anchored batches still unmarked: the receipts
        of batches anchored just before a crash."""
        self.store.mark_receipts_sent(self._handed_out)
        self._handed_out = []
        if self._resent:
            return []
        self._resent = True
        out: list[Outgoing] = []
        for batch_id in self.store.unreceipted_batches():
            out.extend(self.receipts(batch_id))
        return out

    # --- warnings and certificates ------------------------------------------------------------------

    def _warning_txs(self, now_ms: int) -> list[tuple[bytes, bytes]]:
        """Make ``tx-warnings`` of the queued refusal records; return the pending ones (hash, tx)."""
        for _ in range(MAX_WARNING_TXS_PER_STEP):
            entries = self.store.queued_warnings(MAX_WARNINGS_PER_TX)
            if not entries:
                break
            while True:
                try:
                    tx = enc.warnings_tx(self.chain_id, self.priv, entries, now_ms, rng=self.rng, kid=self.kid)
                    break
                except InvalidMessage:              # over the 4096-byte frame limit
                    entries = entries[:len(entries) // 2]
            self.store.create_warning_tx(tx, [e[1] for e in entries])
        return self.store.warning_txs("pending")

    def _warnings_done(self, pending: list[tuple[bytes, bytes]], results: list[dict | None]) -> None:
        for (h, _), res in zip(pending, results):
            if res is None or not res.get("ok") or res.get("status") == "pending" or res.get("reason") == POOL_FULL:
                continue
            if res.get("status") == "committed" and res.get("code", 0) == 0:
                self.store.set_warning_tx_status(h, "committed")
            else:
                self.store.set_warning_tx_status(h, "refused")
                log.warning("warnings transaction refused: %s %s", res.get("code"), res.get("reason"))

    def _cert_txs(self, now_ms: int) -> tuple[list[bytes], list[bytes]]:
        """(certificates, their ``tx-cert-record``) of at most ``MAX_CERTS_PER_STEP`` pending certificates."""
        certs = [cert for _, cert in self.store.certificates("pending", MAX_CERTS_PER_STEP)]
        return certs, [enc.cert_record_tx_for(self.chain_id, self.priv, cert, now_ms, rng=self.rng, kid=self.kid)
                       for cert in certs]

    def _certs_done(self, certs: list[bytes], results: list[dict | None]) -> None:
        statuses = []
        for cert, res in zip(certs, results):
            if res is None or not res.get("ok") or res.get("status") == "pending" or res.get("reason") == POOL_FULL:
                continue
            ok = res.get("status") == "committed" and res.get("code", 0) == 0
            statuses.append((cert, "recorded" if ok else "refused"))
            if not ok:
                log.warning("cert record refused: %s %s", res.get("code"), res.get("reason"))
        self.store.set_cert_statuses(statuses)

    # --- one step -----------------------------------------------------------------------------------

    def step(self, now_ms: int, force: bool = False) -> list[Outgoing]:
        """Cut, anchor pending batches, post warnings and certificate records; return what to publish.

        The anchors, warnings and certificate records of a step are submitted together (concurrently
        with a ``LedgerClient``), so the step waits for about one commit, not one per transaction.
        """
        out = self._unsent_receipts()
        while self.cut(now_ms, force) is not None:
            pass
        batches = self.store.batches("pending")
        written = self.store.records_written
        idle = written == self._records_seen
        warnings = [] if idle else self._warning_txs(now_ms)
        certs, cert_txs = ([], []) if idle else self._cert_txs(now_ms)
        if not warnings and not certs:
            self._records_seen = written
        results = self._submit_many([b.tx for b in batches] + [tx for _, tx in warnings] + cert_txs)
        for batch, res in zip(batches, results):
            out.extend(self._anchored(batch, res, now_ms))
        self._warnings_done(warnings, results[len(batches):len(batches) + len(warnings)])
        self._certs_done(certs, results[len(batches) + len(warnings):])
        if self.last_header is not None and out:
            out.append(Outgoing("ll/%s/ledger/header" % self.site, self.last_header[1], retain=True))
        return out
