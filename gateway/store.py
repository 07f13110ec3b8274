"""Durable gateway store: accepted messages, content-addressed frames, batches, warnings, session certificates.

One SQLite file in WAL mode with ``synchronous=FULL``: every write returns only after its
transaction is committed to disk, so a frame acknowledged to the broker after ``append_accepted`` (or
``write_many``, which commits the frames, warnings and certificates of a group of inputs in one
transaction: one fsync for the group) survives a crash and is anchored after the restart
(``unbatched``/``pending_batches``). Frames are stored once
under their SHA-256 (content address), which is also their batch leaf entry's hash.

Several gateway processes of one site on one host share the file, each with its own ``owner`` name:
a process batches, anchors and posts only its own messages, warnings and certificate records, while
sessions (``session_cert``) and sequence numbers are shared. A (device, seq) pair is stored once
(unique index): ``write_many`` reports the frames another process had already stored, in the same
transaction, so a replay sent to a second process is caught even when both check it at once.

Protects against losing acknowledged readings at a crash, and, through ``highest_seqs`` and
``certificates``, against replays and lost sessions after a restart. Tested in
tests/gateway/test_batcher.py (restart with un-anchored messages, reopen after anchoring) and
tests/gateway/test_shared_store.py (two processes' services on one file).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledgerlink.core import cbor

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (hash BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, frame_hash BLOB NOT NULL, device BLOB NOT NULL, seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL, topic TEXT NOT NULL, received_ms INTEGER NOT NULL,
    batch BLOB, leaf INTEGER);
CREATE INDEX IF NOT EXISTS messages_batch ON messages (batch, leaf);
CREATE UNIQUE INDEX IF NOT EXISTS messages_device_seq ON messages (device, seq);
CREATE TABLE IF NOT EXISTS batches (
    id BLOB PRIMARY KEY, root BLOB NOT NULL, count INTEGER NOT NULL, tx BLOB NOT NULL,
    status TEXT NOT NULL, created_ms INTEGER NOT NULL, proof BLOB);
CREATE TABLE IF NOT EXISTS warnings (
    id BLOB PRIMARY KEY, entry BLOB NOT NULL, created_ms INTEGER NOT NULL, tx_hash BLOB, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS warning_txs (hash BLOB PRIMARY KEY, tx BLOB NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certs (
    hash BLOB PRIMARY KEY, device BLOB NOT NULL, cert BLOB NOT NULL, created_ms INTEGER NOT NULL,
    status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS registrations (
    device BLOB PRIMARY KEY, request BLOB NOT NULL, role INTEGER NOT NULL, attributes BLOB NOT NULL,
    time_ms INTEGER NOT NULL, held_ms INTEGER NOT NULL);
"""


@dataclass
class StoredMessage:
    id: int
    frame_hash: bytes
    device: bytes
    seq: int
    time_ms: int
    topic: str
    received_ms: int
    batch: bytes | None
    leaf: int | None


@dataclass
class HeldRegistration:
    """A device's registration request waiting for an admin; ``request`` is the device's signed frame."""

    device: bytes
    request: bytes
    role: int
    attributes: dict
    time_ms: int
    held_ms: int


@dataclass
class Batch:
    id: bytes
    root: bytes
    count: int
    tx: bytes
    status: str            # pending, anchored, failed
    created_ms: int
    proof: bytes | None    # CBOR [anchor-tx-proof, certified-header] once anchored


WAL_AUTOCHECKPOINT_PAGES = 4000    # WAL pages before a checkpoint (SQLite: 1000); fewer copies of hot index pages
OWNED = ("messages", "batches", "warnings", "warning_txs", "certs")
MESSAGE_COLUMNS = "id, frame_hash, device, seq, time_ms, topic, received_ms, batch, leaf"
BATCH_COLUMNS = "id, root, count, tx, status, created_ms, proof"


class Store:
    """The gateway's SQLite store at ``path`` (":memory:" for tests that need no durability); ``owner``
    names this process among the gateway processes sharing the file."""

    def __init__(self, path: str | Path, owner: str = "") -> None:
        self.path = str(path)
        self.owner = owner
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.lock = threading.RLock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA wal_autocheckpoint=%d" % WAL_AUTOCHECKPOINT_PAGES)
        self.db.executescript(SCHEMA)
        self.db.execute("BEGIN IMMEDIATE")                   # stores written before owners existed
        try:
            for table in OWNED:
                columns = [r[1] for r in self.db.execute("PRAGMA table_info(%s)" % table)]
                if "owner" not in columns:
                    self.db.execute("ALTER TABLE %s ADD COLUMN owner TEXT NOT NULL DEFAULT ''" % table)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        # reads (the batcher's, the dashboard's, session lookups) go through their own connection, so they
        # neither wait for nor hold up the check thread's group commits (WAL: readers see committed data)
        self.reader, self.read_lock = self.db, self.lock
        if self.path != ":memory:":
            self.reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self.read_lock = threading.Lock()

    def close(self) -> None:
        with self.read_lock:
            if self.reader is not self.db:
                self.reader.close()
        with self.lock:
            self.db.close()

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self.db.execute(sql, args)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.read_lock:
            return self.reader.execute(sql, args).fetchall()

    # --- messages ---------------------------------------------------------------------------------

    def append_accepted(self, frame: bytes, device: bytes, seq: int, time_ms: int, topic: str,
                        received_ms: int) -> bytes:
        """Store an accepted frame durably; returns its SHA-256."""
        h = hashlib.sha256(frame).digest()
        self._tx([("INSERT OR IGNORE INTO blobs (hash, data) VALUES (?, ?)", (h, frame)),
                  ("INSERT INTO messages (frame_hash, device, seq, time_ms, topic, received_ms, owner) "
                   "VALUES (?,?,?,?,?,?,?)", (h, device, seq, time_ms, topic, received_ms, self.owner))])
        return h

    def write_many(self, accepted: list[tuple[bytes, bytes, int, int, str, int, bytes]] = (),
                   warnings: list[tuple[dict, int]] = (), certs: list[tuple[bytes, bytes, int]] = (),
                   stored_elsewhere: list[tuple[int, bool]] | None = None) -> int:
        """Commit in one transaction ``accepted`` frames (frame, device, seq, time_ms, topic, received_ms, SHA-256)
        in order, queued ``warnings`` (entry, now_ms) and session ``certs`` (device, cert, now_ms).

        Returns the number of warnings newly queued (an id already queued is kept once). The indexes
        of accepted frames whose (device, seq) was already stored (by another process sharing the
        file) are appended to ``stored_elsewhere`` with whether the stored frame is the same one;
        those frames are not stored again.
        """
        if not accepted and not warnings and not certs:
            return 0
        blobs = []
        msgs = []
        owner = self.owner
        for frame, device, seq, time_ms, topic, received_ms, h in accepted:
            blobs.append((h, frame))
            msgs.append((h, device, seq, time_ms, topic, received_ms, owner))
        warn_rows = [(e[1], cbor.dumps(e), now_ms, "queued", owner) for e, now_ms in warnings]
        cert_rows = [(hashlib.sha256(cert).digest(), dev, cert, now_ms, "pending", owner)
                     for dev, cert, now_ms in certs]
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if blobs:
                    self.db.executemany("INSERT OR IGNORE INTO blobs (hash, data) VALUES (?, ?)", blobs)
                    before = self.db.total_changes
                    self.db.executemany("INSERT OR IGNORE INTO messages (frame_hash, device, seq, time_ms, topic, "
                                        "received_ms, owner) VALUES (?,?,?,?,?,?,?)", msgs)
                    if self.db.total_changes - before != len(msgs):
                        self._find_stored_elsewhere(msgs, stored_elsewhere)
                before = self.db.total_changes
                if warn_rows:
                    self.db.executemany("INSERT OR IGNORE INTO warnings (id, entry, created_ms, status, owner) "
                                        "VALUES (?,?,?,?,?)", warn_rows)
                added = self.db.total_changes - before
                if cert_rows:
                    self.db.executemany("INSERT OR IGNORE INTO certs (hash, device, cert, created_ms, status, owner) "
                                        "VALUES (?,?,?,?,?,?)", cert_rows)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return added

    def _find_stored_elsewhere(self, msgs: list[tuple], out: list[tuple[int, bool]] | None) -> None:
        """Inside the write transaction: which of ``msgs`` did not go in (their (device, seq) was taken)."""
        if out is None:
            raise sqlite3.IntegrityError("a (device, seq) of the group is already stored")
        for i, m in enumerate(msgs):
            row = self.db.execute("SELECT frame_hash, owner FROM messages WHERE device = ? AND seq = ?",
                                  (m[1], m[2])).fetchone()
            if row is None or bytes(row[0]) != m[0] or row[1] != self.owner:
                out.append((i, row is not None and bytes(row[0]) == m[0]))

    def blob(self, h: bytes) -> bytes | None:
        rows = self._query("SELECT data FROM blobs WHERE hash = ?", (h,))
        return rows[0][0] if rows else None

    def unbatched(self, limit: int) -> list[StoredMessage]:
        rows = self._query("SELECT " + MESSAGE_COLUMNS + " FROM messages WHERE batch IS NULL AND owner = ? "
                           "ORDER BY id LIMIT ?", (self.owner, limit))
        return [StoredMessage(*r) for r in rows]

    def unbatched_leaves(self, limit: int, offset: int = 0) -> list[tuple[int, bytes, int]]:
        """(id, frame hash, received_ms) of this owner's messages not in a batch, in arrival order, from
        the ``offset``-th on."""
        return self._query("SELECT id, frame_hash, received_ms FROM messages WHERE batch IS NULL AND owner = ? "
                           "ORDER BY id LIMIT ? OFFSET ?", (self.owner, limit, offset))

    def batch_messages(self, batch_id: bytes) -> list[StoredMessage]:
        rows = self._query("SELECT " + MESSAGE_COLUMNS + " FROM messages WHERE batch = ? ORDER BY leaf", (batch_id,))
        return [StoredMessage(*r) for r in rows]

    def batch_leaves(self, batch_id: bytes) -> list[tuple[bytes, bytes, int, int]]:
        """(frame hash, device, seq, leaf) of the messages of a batch, in leaf order."""
        return self._query("SELECT frame_hash, device, seq, leaf FROM messages WHERE batch = ? ORDER BY leaf",
                           (batch_id,))

    def highest_seqs(self) -> dict[bytes, int]:
        return {d: s for d, s in self._query("SELECT device, MAX(seq) FROM messages GROUP BY device")}

    # --- batches ----------------------------------------------------------------------------------

    def create_batch(self, batch_id: bytes, root: bytes, tx: bytes, message_ids: list[int], now_ms: int) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("INSERT INTO batches (id, root, count, tx, status, created_ms, owner) "
                                "VALUES (?,?,?,?,?,?,?)",
                                (batch_id, root, len(message_ids), tx, "pending", now_ms, self.owner))
                first = message_ids[0] if message_ids else 0
                if message_ids and message_ids[-1] - first == len(message_ids) - 1 and \
                        message_ids == list(range(first, first + len(message_ids))):
                    self.db.execute("UPDATE messages SET batch = ?, leaf = id - ? WHERE id BETWEEN ? AND ?",
                                    (batch_id, first, first, message_ids[-1]))
                else:
                    self.db.executemany("UPDATE messages SET batch = ?, leaf = ? WHERE id = ?",
                                        [(batch_id, i, mid) for i, mid in enumerate(message_ids)])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def batches(self, status: str) -> list[Batch]:
        return [Batch(*r) for r in self._query("SELECT " + BATCH_COLUMNS + " FROM batches WHERE status = ? AND owner = ? "
                                               "ORDER BY created_ms", (status, self.owner))]

    def batch(self, batch_id: bytes) -> Batch | None:
        rows = self._query("SELECT " + BATCH_COLUMNS + " FROM batches WHERE id = ?", (batch_id,))
        return Batch(*rows[0]) if rows else None

    def replace_batch_tx(self, batch_id: bytes, tx: bytes) -> None:
        self._tx([("UPDATE batches SET tx = ? WHERE id = ?", (tx, batch_id))])

    def set_batch_status(self, batch_id: bytes, status: str, proof: bytes | None = None) -> None:
        self._tx([("UPDATE batches SET status = ?, proof = ? WHERE id = ?", (status, proof, batch_id))])

    # --- warnings ---------------------------------------------------------------------------------

    def add_warning(self, entry: dict, now_ms: int) -> bool:
        """Queue a refusal record for the ledger; False when its id was already queued (once per gateway)."""
        with self.lock:
            before = self.db.total_changes
            self._tx([("INSERT OR IGNORE INTO warnings (id, entry, created_ms, status, owner) VALUES (?,?,?,?,?)",
                       (entry[1], cbor.dumps(entry), now_ms, "queued", self.owner))])
            return self.db.total_changes > before

    def queued_warnings(self, limit: int) -> list[dict]:
        rows = self._query("SELECT entry FROM warnings WHERE status = 'queued' AND owner = ? ORDER BY created_ms "
                           "LIMIT ?", (self.owner, limit))
        return [cbor.loads(r[0]) for r in rows]

    def create_warning_tx(self, tx: bytes, ids: list[bytes]) -> None:
        h = hashlib.sha256(tx).digest()
        stmts: list[tuple[str, tuple]] = [("INSERT INTO warning_txs (hash, tx, status, owner) VALUES (?,?,?,?)",
                                           (h, tx, "pending", self.owner))]
        stmts += [("UPDATE warnings SET status = 'batched', tx_hash = ? WHERE id = ?", (h, i)) for i in ids]
        self._tx(stmts)

    def warning_txs(self, status: str) -> list[tuple[bytes, bytes]]:
        return self._query("SELECT hash, tx FROM warning_txs WHERE status = ? AND owner = ?", (status, self.owner))

    def set_warning_tx_status(self, h: bytes, status: str) -> None:
        self._tx([("UPDATE warning_txs SET status = ? WHERE hash = ?", (status, h))])

    # --- session certificates ---------------------------------------------------------------------

    def add_cert(self, device: bytes, cert: bytes, now_ms: int) -> None:
        self._tx([("INSERT OR IGNORE INTO certs (hash, device, cert, created_ms, status, owner) VALUES (?,?,?,?,?,?)",
                   (hashlib.sha256(cert).digest(), device, cert, now_ms, "pending", self.owner))])

    def certificates(self, status: str | None = None, limit: int = -1) -> list[tuple[bytes, bytes]]:
        """(device, cert) pairs: all of the site's, or this owner's with ``status`` (pending: not yet
        recorded on the ledger)."""
        if status is None:
            return self._query("SELECT device, cert FROM certs ORDER BY created_ms LIMIT ?", (limit,))
        return self._query("SELECT device, cert FROM certs WHERE status = ? AND owner = ? ORDER BY created_ms "
                           "LIMIT ?", (status, self.owner, limit))

    def session_cert(self, session_id: bytes) -> tuple[bytes, bytes] | None:
        """(device, cert) of the stored certificate whose session id (its hash's first bytes) is
        ``session_id``, issued by any process sharing the file; None when there is none."""
        if not isinstance(session_id, bytes) or not 0 < len(session_id) < 32:
            return None
        lo = session_id + bytes(32 - len(session_id))
        hi = session_id + b"\xff" * (32 - len(session_id))
        rows = self._query("SELECT device, cert FROM certs WHERE hash BETWEEN ? AND ? LIMIT 2", (lo, hi))
        return (bytes(rows[0][0]), bytes(rows[0][1])) if len(rows) == 1 else None

    def set_cert_status(self, cert: bytes, status: str) -> None:
        self.set_cert_statuses([(cert, status)])

    def set_cert_statuses(self, statuses: list[tuple[bytes, str]]) -> None:
        """Set the status of several certificates in one transaction."""
        if statuses:
            self._tx([("UPDATE certs SET status = ? WHERE hash = ?", (status, hashlib.sha256(cert).digest()))
                      for cert, status in statuses])

    # --- registration requests held for an admin ---------------------------------------------------

    def write_registrations(self, held: list[tuple[bytes, bytes, int, dict, int, int]],
                            settled: list[bytes]) -> None:
        """Keep (device, request, role, attributes, time, held since) rows and drop ``settled`` devices, in
        one transaction; a newer request of a device replaces its older one."""
        if held or settled:
            self._tx([("INSERT OR REPLACE INTO registrations (device, request, role, attributes, time_ms, held_ms) "
                       "VALUES (?,?,?,?,?,?)", (dev, req, role, cbor.dumps(attrs), t, at))
                      for dev, req, role, attrs, t, at in held]
                     + [("DELETE FROM registrations WHERE device = ?", (dev,)) for dev in settled])

    def registrations(self, limit: int = -1) -> list[HeldRegistration]:
        """Held registration requests, oldest first."""
        return [HeldRegistration(bytes(d), bytes(r), role, cbor.loads(bytes(a)), t, at) for d, r, role, a, t, at in
                self._query("SELECT device, request, role, attributes, time_ms, held_ms FROM registrations "
                            "ORDER BY held_ms LIMIT ?", (limit,))]

    def stats(self) -> dict[str, Any]:
        return {
            "messages": self._query("SELECT COUNT(*) FROM messages")[0][0],
            "unbatched": self._query("SELECT COUNT(*) FROM messages WHERE batch IS NULL AND owner = ?",
                                     (self.owner,))[0][0],
            "batches": dict(self._query("SELECT status, COUNT(*) FROM batches GROUP BY status")),
            "warnings": dict(self._query("SELECT status, COUNT(*) FROM warnings GROUP BY status")),
        }
