"""Durable block store of a ledger node (SQLite).

Holds what a node needs to restart and to answer queries: every committed block (header, commit
certificate and transactions, as the ``Persist`` effect of the replica gives them), an index from
transaction hash to (height, index in block, result code), and the replica's vote record (the
``SaveVotes`` effect: its view and prepared proof, replaced on each save and fsync'd like a block). A block and its index rows are written in
one SQLite transaction with ``synchronous=FULL`` in WAL mode, so ``append_block`` returns only after
the commit is fsync'd: the node carries out no later effect of the replica (its vote on the next
height) before the block is durable.

Protects against: a torn or partial write at a crash (one transaction per block; on open the heights
must be contiguous from 0, else ``StoreError``); mixing two chains in one directory (the chain id and
genesis hash are recorded on first use and checked on every open). Tested in
tests/ledger/test_node_storage.py (round trip, reopen, gaps, wrong chain, restore of a replica).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Iterator, Sequence

from ledgerlink.ledger.consensus import messages as m

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    header BLOB NOT NULL,
    certificate BLOB NOT NULL,
    block BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (id INTEGER PRIMARY KEY CHECK (id = 0), record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS threshold (height INTEGER PRIMARY KEY, certificate BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS txs (
    hash BLOB PRIMARY KEY,
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    code INTEGER NOT NULL
);
"""


class StoreError(Exception):
    """The block store is inconsistent or belongs to another chain."""


class BlockStore:
    """Blocks and transaction index of one node, in ``path`` (a SQLite file)."""

    def __init__(self, path: str | Path, chain_id: str, genesis_hash: bytes) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._check_meta("chain_id", chain_id.encode())
        self._check_meta("genesis_hash", genesis_hash)
        row = self._db.execute("SELECT COUNT(*), MAX(height) FROM blocks").fetchone()
        count, top = row[0], row[1]
        if count and top != count - 1:
            raise StoreError("block heights are not contiguous from 0")
        self._height = -1 if top is None else top

    def _check_meta(self, key: str, value: bytes) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
        elif bytes(row[0]) != value:
            raise StoreError("store belongs to another chain (%s differs)" % key)

    @property
    def height(self) -> int:
        """Height of the last stored block (-1 when empty)."""
        return self._height

    def append_block(self, height: int, block: bytes, certificate: bytes,
                     codes: Sequence[int] | None = None, decoded: m.Block | None = None,
                     tx_hashes: Sequence[bytes] | None = None) -> None:
        """Store block ``height`` (cbor [header, txs]) with its certificate; durable on return.

        ``codes`` are the per-transaction result codes (0 = applied), default all 0. ``decoded`` (the
        block that ``block`` encodes) and ``tx_hashes`` (SHA-256 of each of its transactions) spare
        decoding and hashing again when the caller has them.
        """
        if height != self._height + 1:
            raise StoreError("expected block %d, got %d" % (self._height + 1, height))
        if decoded is None:
            decoded = m.Block.decode(block)
        if decoded.header.height != height:
            raise StoreError("block header height differs")
        header = decoded.header.encode()
        if tx_hashes is None:
            tx_hashes = [hashlib.sha256(tx).digest() for tx in decoded.txs]
        if codes is None:
            rows = [(th, height, i, 0) for i, th in enumerate(tx_hashes)]
        else:
            rows = [(th, height, i, int(codes[i])) for i, th in enumerate(tx_hashes)]
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO blocks (height, hash, header, certificate, block) VALUES (?,?,?,?,?)",
                       (height, hashlib.sha256(header).digest(), header, certificate, block))
            db.executemany("INSERT OR IGNORE INTO txs (hash, height, idx, code) VALUES (?,?,?,?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._height = height

    def save_threshold(self, height: int, certificate: bytes) -> None:
        """Store the threshold certificate (cbor [view, frost-signature]) of stored block ``height``."""
        if not 0 <= height <= self._height:
            raise StoreError("no block %d for a threshold certificate" % height)
        self._db.execute("INSERT OR REPLACE INTO threshold (height, certificate) VALUES (?, ?)",
                         (height, certificate))

    def threshold_certs(self) -> Iterator[tuple[int, bytes]]:
        """(height, threshold certificate) pairs in height order: an input of ``Replica.restore``."""
        for height, cert in self._db.execute("SELECT height, certificate FROM threshold ORDER BY height"):
            yield height, bytes(cert)

    def threshold(self, height: int) -> bytes | None:
        row = self._db.execute("SELECT certificate FROM threshold WHERE height = ?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def save_votes(self, record: bytes) -> None:
        """Replace the vote record; durable on return."""
        self._db.execute("INSERT OR REPLACE INTO votes (id, record) VALUES (0, ?)", (record,))

    def votes(self) -> bytes | None:
        """The last saved vote record (None if the replica never saved one)."""
        row = self._db.execute("SELECT record FROM votes WHERE id = 0").fetchone()
        return None if row is None else bytes(row[0])

    def blocks(self, start: int = 0) -> Iterator[tuple[bytes, bytes]]:
        """(block, certificate) pairs from ``start`` in height order: the input of ``Replica.restore``."""
        cur = self._db.execute("SELECT height, block, certificate FROM blocks WHERE height >= ? "
                               "ORDER BY height", (start,))
        expect = start
        for height, block, cert in cur:
            if height != expect:
                raise StoreError("missing block %d" % expect)
            expect += 1
            yield bytes(block), bytes(cert)

    def block(self, height: int) -> tuple[bytes, bytes] | None:
        row = self._db.execute("SELECT block, certificate FROM blocks WHERE height = ?",
                               (height,)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def header(self, height: int) -> tuple[bytes, bytes] | None:
        """(header, certificate) CBOR bytes at ``height``."""
        row = self._db.execute("SELECT header, certificate FROM blocks WHERE height = ?",
                               (height,)).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def tx_location(self, tx_hash: bytes) -> tuple[int, int, int] | None:
        """(height, index, result code) of a committed transaction."""
        row = self._db.execute("SELECT height, idx, code FROM txs WHERE hash = ?", (tx_hash,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def close(self) -> None:
        self._db.close()
