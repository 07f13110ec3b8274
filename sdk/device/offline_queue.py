"""Durable device queue (SQLite, WAL, synchronous=FULL): frames to deliver, frames awaiting receipts, receipts.

Frames are queued exactly as built (topic, payload, original sequence number) and come out in the
order they went in. A frame leaves the queue only when the gateway says it is stored (``stored``: a
checked stored-ack, a receipt, or the held reply to a registration request) or refused it for good
(``refuse``); a broker PUBACK only marks it sent, so a crash, an outage or a broker that had no gateway
to deliver to publishes it again (at least once; the gateway answers a copy of a stored frame with its
ack and receipt, and stores it once).

A stored reading moves, in the same transaction, to ``awaiting``: it waits there for its receipt (the
ledger anchor), also across restarts, and the device asks for the receipts it misses. Checked receipts
are kept (``receipt``), the newest ``max_receipts`` of them.

Policy when full: drop the oldest frame and count it (``dropped``, persisted). A device that was
offline for long keeps its most recent readings; the count says how many older ones were lost, and
the gap in sequence numbers shows which. Frames refused for good are counted too (``refused``).
Frames are never rebuilt, so their signatures, Partial IVs and sequence numbers stay the original ones.

Protects against losing readings across broker and gateway outages, process restarts and power loss
(every change is committed with fsync before it returns), and against unbounded storage use. Tested in
tests/device/test_offline_queue.py (order, reopen after close, bound and drop counter, the move to
awaiting and receipts across reopen) and through the device in tests/device/test_client.py.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
    seq INTEGER);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS awaiting (hash BLOB PRIMARY KEY, seq INTEGER, topic TEXT NOT NULL, payload BLOB NOT NULL,
    stored_ms INTEGER NOT NULL, asked_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS receipts (n INTEGER PRIMARY KEY AUTOINCREMENT, hash BLOB NOT NULL UNIQUE, seq INTEGER,
    receipt BLOB NOT NULL);
"""
COUNTERS = ("dropped", "refused")


class QueuedFrame:
    """A queued frame: ``id`` (queue position), ``topic``, ``payload``, ``seq`` (None for non-readings)."""

    def __init__(self, id: int, topic: str, payload: bytes, seq: int | None) -> None:
        self.id = id
        self.topic = topic
        self.payload = payload
        self.seq = seq
        self.hash = hashlib.sha256(payload).digest()

    def __repr__(self) -> str:
        return "QueuedFrame(%d, %s, seq=%s)" % (self.id, self.topic, self.seq)


class AwaitingFrame:
    """A stored frame waiting for its receipt: ``hash``, ``seq``, ``topic``, ``payload``, when the gateway
    said it is stored and when its receipt was last asked for (epoch ms, 0: never)."""

    def __init__(self, hash: bytes, seq: int | None, topic: str, payload: bytes, stored_ms: int,
                 asked_ms: int) -> None:
        self.hash = hash
        self.seq = seq
        self.topic = topic
        self.payload = payload
        self.stored_ms = stored_ms
        self.asked_ms = asked_ms

    def __repr__(self) -> str:
        return "AwaitingFrame(seq=%s)" % self.seq


class OfflineQueue:
    """FIFO of at most ``max_frames`` frames in the SQLite file ``path`` (":memory:" for tests), with at
    most ``max_frames`` frames awaiting receipts and the last ``max_receipts`` receipts."""

    def __init__(self, path: str, max_frames: int = 10_000, max_receipts: int = 1_000) -> None:
        if max_frames < 1 or max_receipts < 0:
            raise ValueError("max_frames must be at least 1 and max_receipts at least 0")
        self.path = os.fspath(path)
        self.max_frames = max_frames
        self.max_receipts = max_receipts
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        for name in COUNTERS:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, 0)", (name,))

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        """Run ``statements`` in one transaction (durable on return); the caller holds the lock."""
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                cur.execute(sql, args)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def put(self, topic: str, payload: bytes, seq: int | None = None) -> int:
        """Append a frame (durable on return); drops the oldest when full. Returns its queue id."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                count = cur.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
                excess = count + 1 - self.max_frames
                if excess > 0:
                    cur.execute("DELETE FROM frames WHERE id IN (SELECT id FROM frames ORDER BY id LIMIT ?)", (excess,))
                    cur.execute("UPDATE meta SET v = v + ? WHERE k = 'dropped'", (excess,))
                cur.execute("INSERT INTO frames (topic, payload, seq) VALUES (?, ?, ?)",
                            (topic, bytes(payload), seq))
                rowid = cur.lastrowid
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            return rowid

    def peek(self, limit: int = 1) -> list[QueuedFrame]:
        """The oldest ``limit`` frames, oldest first, without removing them."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, seq FROM frames ORDER BY id LIMIT ?",
                                    (limit,)).fetchall()
        return [QueuedFrame(r[0], r[1], bytes(r[2]), r[3]) for r in rows]

    def remove(self, frame_id: int) -> None:
        """Remove a frame (no receipt will be awaited for it)."""
        with self._lock:
            self._db.execute("DELETE FROM frames WHERE id = ?", (frame_id,))

    def stored(self, frame: QueuedFrame, now_ms: int) -> None:
        """The gateway stored ``frame``: it leaves the queue and, a reading, awaits its receipt (one
        transaction; the oldest awaiting frames make room, counted as dropped)."""
        with self._lock:
            statements: list[tuple[str, tuple]] = [("DELETE FROM frames WHERE id = ?", (frame.id,))]
            if frame.seq is not None:
                count = self._db.execute("SELECT COUNT(*) FROM awaiting").fetchone()[0]
                excess = count + 1 - self.max_frames
                if excess > 0:
                    statements += [("DELETE FROM awaiting WHERE hash IN (SELECT hash FROM awaiting ORDER BY stored_ms, "
                                    "seq LIMIT ?)", (excess,)),
                                   ("UPDATE meta SET v = v + ? WHERE k = 'dropped'", (excess,))]
                statements.append(("INSERT OR IGNORE INTO awaiting (hash, seq, topic, payload, stored_ms) "
                                   "VALUES (?,?,?,?,?)", (frame.hash, frame.seq, frame.topic, frame.payload, now_ms)))
            self._write(statements)

    def refuse(self, frame_id: int) -> None:
        """The gateway refused a frame for good: it leaves the queue, counted in ``refused``."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM frames WHERE id = ?", (frame_id,)).fetchone():
                self._write([("DELETE FROM frames WHERE id = ?", (frame_id,)),
                             ("UPDATE meta SET v = v + 1 WHERE k = 'refused'", ())])

    def find(self, frame_hash: bytes, limit: int = 64) -> QueuedFrame | None:
        """The queued frame whose SHA-256 is ``frame_hash`` among the oldest ``limit`` (those that may be in
        flight), None when there is none."""
        for f in self.peek(limit):
            if f.hash == frame_hash:
                return f
        return None

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]

    # --- awaiting receipts ------------------------------------------------------------------------

    def awaiting(self, frame_hash: bytes | None = None, seq: int | None = None) -> AwaitingFrame | None:
        """The frame awaiting its receipt with this hash (or seq), None when there is none."""
        where, arg = ("hash = ?", frame_hash) if frame_hash is not None else ("seq = ?", seq)
        with self._lock:
            row = self._db.execute("SELECT hash, seq, topic, payload, stored_ms, asked_ms FROM awaiting WHERE " + where,
                                   (arg,)).fetchone()
        return AwaitingFrame(bytes(row[0]), row[1], row[2], bytes(row[3]), row[4], row[5]) if row else None

    def due_for_asking(self, now_ms: int, wait_ms: int, limit: int) -> list[AwaitingFrame]:
        """Up to ``limit`` awaiting frames stored more than ``wait_ms`` ago whose receipt was not asked for
        in the last ``wait_ms`` times (1 + asks so far) - roughly: the wait doubles with each ask."""
        with self._lock:
            rows = self._db.execute(
                "SELECT hash, seq, topic, payload, stored_ms, asked_ms FROM awaiting WHERE stored_ms <= ? AND "
                "(asked_ms = 0 OR asked_ms + MAX(?, asked_ms - stored_ms) <= ?) ORDER BY stored_ms, seq LIMIT ?",
                (now_ms - wait_ms, wait_ms, now_ms, limit)).fetchall()
        return [AwaitingFrame(bytes(r[0]), r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    def asked(self, hashes: list[bytes], now_ms: int) -> None:
        with self._lock:
            self._write([("UPDATE awaiting SET asked_ms = ? WHERE hash = ?", (now_ms, h)) for h in hashes])

    def not_stored(self, frame_hash: bytes) -> bool:
        """The gateway says an awaiting frame is not stored: it goes back into the queue (to the end) to be
        delivered again. False when no such frame awaits."""
        with self._lock:
            row = self._db.execute("SELECT topic, payload, seq FROM awaiting WHERE hash = ?", (frame_hash,)).fetchone()
            if row is None:
                return False
            self._write([("DELETE FROM awaiting WHERE hash = ?", (frame_hash,)),
                         ("INSERT INTO frames (topic, payload, seq) VALUES (?, ?, ?)", tuple(row))])
            return True

    def awaiting_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM awaiting").fetchone()[0]

    # --- receipts ---------------------------------------------------------------------------------

    def receipt_received(self, frame_hash: bytes, seq: int | None, receipt: bytes) -> None:
        """Keep a checked receipt; its frame no longer awaits it (and leaves the queue, were it still there)."""
        with self._lock:
            statements = [("DELETE FROM awaiting WHERE hash = ?", (frame_hash,)),
                          ("INSERT OR REPLACE INTO receipts (hash, seq, receipt) VALUES (?,?,?)",
                           (frame_hash, seq, bytes(receipt))),
                          ("DELETE FROM receipts WHERE n <= (SELECT MAX(n) FROM receipts) - ?", (self.max_receipts,))]
            self._write(statements)

    def receipt(self, frame_hash: bytes | None = None, seq: int | None = None) -> bytes | None:
        """The kept receipt of the frame with this hash (or seq), None when there is none."""
        where, arg = ("hash = ?", frame_hash) if frame_hash is not None else ("seq = ?", seq)
        with self._lock:
            row = self._db.execute("SELECT receipt FROM receipts WHERE " + where + " ORDER BY n DESC LIMIT 1",
                                   (arg,)).fetchone()
        return bytes(row[0]) if row else None

    # --- counters ---------------------------------------------------------------------------------

    def _counter(self, name: str) -> int:
        with self._lock:
            return self._db.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()[0]

    @property
    def dropped(self) -> int:
        """Frames dropped because the queue (or the awaiting list) was full, over the queue file's life."""
        return self._counter("dropped")

    @property
    def refused(self) -> int:
        """Frames the gateway refused for good, over the queue file's life."""
        return self._counter("refused")

    def close(self) -> None:
        with self._lock:
            self._db.close()
