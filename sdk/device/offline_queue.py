"""Bounded, durable queue of built frames waiting to be published (SQLite, WAL, synchronous=FULL).

Frames are queued exactly as built (topic, payload, original sequence number) and come out in the
order they went in; a frame leaves the queue only when ``remove`` is called after the broker
acknowledged it (PUBACK), so a crash between publish and acknowledgement publishes it again
(at-least-once; the gateway's replay window drops the duplicate).

Policy when full: drop the oldest frame and count it (``dropped``, persisted). A device that was
offline for long keeps its most recent readings; the count says how many older ones were lost, and
the gap in sequence numbers shows which. Frames are never rebuilt, so their signatures, Partial IVs
and sequence numbers stay the original ones.

Protects against losing readings across broker outages, process restarts and power loss (every
``put`` is committed with fsync before it returns), and against unbounded storage use. Tested in
tests/device/test_offline_queue.py (order, reopen after close, bound and drop counter).
"""

from __future__ import annotations

import os
import sqlite3
import threading


class QueuedFrame:
    """A queued frame: ``id`` (queue position), ``topic``, ``payload``, ``seq`` (None for non-readings)."""

    def __init__(self, id: int, topic: str, payload: bytes, seq: int | None) -> None:
        self.id = id
        self.topic = topic
        self.payload = payload
        self.seq = seq

    def __repr__(self) -> str:
        return "QueuedFrame(%d, %s, seq=%s)" % (self.id, self.topic, self.seq)


class OfflineQueue:
    """FIFO of at most ``max_frames`` frames in the SQLite file ``path`` (":memory:" for tests)."""

    def __init__(self, path: str, max_frames: int = 10_000) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be at least 1")
        self.path = os.fspath(path)
        self.max_frames = max_frames
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS frames (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "topic TEXT NOT NULL, payload BLOB NOT NULL, seq INTEGER)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")

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
        """Remove a frame after the broker acknowledged it."""
        with self._lock:
            self._db.execute("DELETE FROM frames WHERE id = ?", (frame_id,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]

    @property
    def dropped(self) -> int:
        """Frames dropped because the queue was full, over the queue file's life."""
        with self._lock:
            return self._db.execute("SELECT v FROM meta WHERE k = 'dropped'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
