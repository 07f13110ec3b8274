"""Durable gateway store: accepted messages and their frames, batches, warnings, session certificates.

One SQLite file in WAL mode with ``synchronous=FULL`` (the frame index has a second one, below): every
write returns only after its transaction is committed to disk, so a frame acknowledged to the broker
after ``append_accepted`` (or ``write_many``, which commits the frames, warnings and certificates of a
group of inputs in one transaction: one fsync for the group) survives a crash and is anchored after the
restart (``unbatched``, ``batches("pending")``).

Frames are content-addressed: ``blob(sha256)`` finds a stored frame by its SHA-256, which is also its
batch leaf entry's hash. A frame is written once, in its ``messages`` row, appended in arrival order.
A batch is the range of its owner's message ids from ``first_id`` to ``last_id``; no message row is
rewritten when it is batched. The ``frame_index`` (hash prefix -> message id; the whole hash is compared
in the row, so prefixes may repeat), in a file of its own next to the store, is extended in hash order, for
every owner's messages up to the newest batched one, once ``FRAME_INDEX_STEP`` of them wait; later
frames are found by scanning the rows after the mark ``indexed``. So the group commit on the way to
the broker's ack appends rows and rewrites one small row per device, where inserting into indexes
keyed by random values (frame hash, device id) wrote a page for nearly every message. The frame index
is still keyed by random values, so each of its steps writes more pages as it grows: its keys are
hash prefixes, and its steps take the index file's write lock, not the store's. Measured with
``python3 -m ledgerlink.gateway.store_bench --messages 300000 --every 100000`` (1,000 devices, groups
of 256, a batch every 1,024): group commits 7.8 / 7.6 / 8.0 us and 1.1 / 1.7 / 2.6 KB written per
message at 100k / 200k / 300k messages, against 24 / 39 / 44 us and 9.3 / 15.1 / 16.8 KB with those
indexes; batches (with the index steps) 2.2 / 3.1 / 4.5 us per message, the longest 42 ms.

Several gateway processes of one site on one host share the file, each with its own ``owner`` name:
a process batches, anchors and posts only its own messages, warnings and certificate records, while
sessions (``session_cert``) and sequence numbers are shared. ``device_seqs`` keeps, per device, the
highest stored sequence number and which of the ``window`` numbers below it are stored, the same
replay window the checks keep: ``write_many`` takes a (device, seq) only when that window still has
room for it, in the same transaction as the frame, and reports the frames that another process had
already stored (or that fell below the shared window), so a replay sent to a second process is caught
even when both check it at once.

Stored frames are also found by (device, seq) (``message_by_seq``, for receipt requests): a
``seq_index`` in the index file, extended in the same steps as the frame index, then the rows after its
mark. Each batch records whether its receipts were published (``receipts_sent``), so the receipts of a
batch anchored just before a crash are published after the restart. ``chain_frames`` names, for each
session frame a matched chain statement covers, that statement; the rows are written in the group commit
that stores the statement (``write_many``), keyed by (device, seq), so a statement's rows go to one or two
pages (keyed by frame hash, each row wrote a page of its own), and a batch's are read with one query
(``batch_covering``).

Protects against losing acknowledged readings at a crash, and, through ``seq_windows`` (each device's
stored window, exactly) and ``certificates``, against replays and lost sessions after a restart. Tested in
tests/gateway/test_batcher.py (restart with un-anchored messages, reopen after anchoring),
tests/gateway/test_shared_store.py (two processes' services on one file) and
tests/gateway/test_store.py (the shared window against a model; frames found before and after batching,
with shared hash prefixes, with the index file locked, lost or ahead of the store; a store of the earlier
layout opened and carried on).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ledgerlink.core import cbor

CHAIN_FRAMES_SCHEMA = """
CREATE TABLE IF NOT EXISTS chain_frames (device BLOB NOT NULL, seq INTEGER NOT NULL, frame_hash BLOB NOT NULL,
    statement BLOB NOT NULL, PRIMARY KEY (device, seq)) WITHOUT ROWID"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, frame_hash BLOB NOT NULL, device BLOB NOT NULL, seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL, topic TEXT NOT NULL, received_ms INTEGER NOT NULL, frame BLOB);
CREATE TABLE IF NOT EXISTS device_seqs (device BLOB PRIMARY KEY, highest INTEGER NOT NULL, seen BLOB NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    id BLOB PRIMARY KEY, root BLOB NOT NULL, count INTEGER NOT NULL, tx BLOB NOT NULL,
    status TEXT NOT NULL, created_ms INTEGER NOT NULL, proof BLOB, first_id INTEGER, last_id INTEGER);
CREATE TABLE IF NOT EXISTS warnings (
    id BLOB PRIMARY KEY, entry BLOB NOT NULL, created_ms INTEGER NOT NULL, tx_hash BLOB, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS warning_txs (hash BLOB PRIMARY KEY, tx BLOB NOT NULL, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certs (
    hash BLOB PRIMARY KEY, device BLOB NOT NULL, cert BLOB NOT NULL, created_ms INTEGER NOT NULL,
    status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS registrations (
    device BLOB PRIMARY KEY, request BLOB NOT NULL, role INTEGER NOT NULL, attributes BLOB NOT NULL,
    time_ms INTEGER NOT NULL, held_ms INTEGER NOT NULL);
""" + CHAIN_FRAMES_SCHEMA + ";"

FRAMES_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames.frame_index (prefix BLOB NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (prefix, id))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS frames.marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS frames.seq_index (device BLOB NOT NULL, seq INTEGER NOT NULL, id INTEGER NOT NULL,
    PRIMARY KEY (device, seq, id)) WITHOUT ROWID;
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
MESSAGE_COLUMNS = "id, frame_hash, device, seq, time_ms, topic, received_ms"
INSERT_ROWS = (64, 16, 4, 1)       # rows per multi-row INSERT statement, largest first
FRAME_PREFIX = 8                   # bytes of the frame hash in the index (the message row has all 32)
FRAME_INDEX_STEP = 8192            # messages added to the frame index at once (fewer index pages written per frame)
BATCHED_UPTO = "(SELECT COALESCE(MAX(last_id), 0) FROM batches WHERE owner = ?)"   # this owner's batched prefix
INDEXED_UPTO = "(SELECT COALESCE(MAX(value), 0) FROM frames.marks WHERE name = 'indexed')"  # messages in the index
SEQ_INDEXED_UPTO = "(SELECT COALESCE(MAX(value), 0) FROM frames.marks WHERE name = 'seq_indexed')"  # in seq_index
BATCH_COLUMNS = "id, root, count, tx, status, created_ms, proof"


def _prefixed(columns: str) -> str:
    """``columns`` ("a, b") of the messages table under its alias m ("m.a, m.b")."""
    return ", ".join("m." + name.strip() for name in columns.split(","))


@contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[None]:
    """A write transaction on ``con``: committed when the block ends, rolled back when it raises."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


class Store:
    """The gateway's SQLite store at ``path`` (":memory:" for tests that need no durability); ``owner``
    names this process among the gateway processes sharing the file."""

    def __init__(self, path: str | Path, owner: str = "", window: int = 64) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.path = str(path)
        self.owner = owner
        self.window = window            # sequence numbers below a device's highest that may still be stored
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.lock = threading.RLock()
        self._insert_sql: dict[tuple[str, int], str] = {}
        self.records_written = 0        # writes of warnings or certificates by this instance (``Batcher`` asks
                                        # for queued ones again only after one)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA wal_autocheckpoint=%d" % WAL_AUTOCHECKPOINT_PAGES)
        self.db.executescript(SCHEMA)
        with _transaction(self.db):                         # stores written before owners existed
            for table in OWNED:
                columns = [r[1] for r in self.db.execute("PRAGMA table_info(%s)" % table)]
                if "owner" not in columns:
                    self.db.execute("ALTER TABLE %s ADD COLUMN owner TEXT NOT NULL DEFAULT ''" % table)
            self._upgrade_layout()
        # reads (the batcher's, the dashboard's, session lookups) go through their own connection, so they
        # neither wait for nor hold up the check thread's group commits (WAL: readers see committed data)
        self.reader, self.read_lock = self.db, self.lock
        self.indexer, self.index_lock = self.db, self.lock
        self.frames_path = ":memory:" if self.path == ":memory:" else self.path + "-frames"
        if self.path == ":memory:":
            self._attach_frames(self.db)
        else:                           # not on the writer: its BEGIN IMMEDIATE would take the index file's lock too
            self.reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self.read_lock = threading.Lock()
            self._attach_frames(self.reader)
            self.indexer = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self.index_lock = threading.Lock()
            self._attach_frames(self.indexer)
            self._drop_index_ahead_of_store()

    def _drop_index_ahead_of_store(self) -> None:
        """An index file newer than the store (the store restored from a copy without it) names message
        ids the store may give to other messages: it is emptied and rebuilt by the next steps."""
        con = self.indexer
        with _transaction(con):
            if con.execute("SELECT MAX(" + INDEXED_UPTO + ", " + SEQ_INDEXED_UPTO + ") > "
                           "(SELECT COALESCE(MAX(id), 0) FROM messages)").fetchone()[0]:
                con.execute("DELETE FROM frames.frame_index")
                con.execute("DELETE FROM frames.seq_index")
                con.execute("DELETE FROM frames.marks")

    def _attach_frames(self, con: sqlite3.Connection) -> None:
        """The frame index lives in a file of its own (``<store>-frames``), so that extending it takes that
        file's write lock, not the store's: group commits go on meanwhile. It holds nothing that cannot be
        rebuilt from the messages (synchronous=NORMAL: a crash may lose its last steps, and their frames
        are then found by the scan past the mark until the next step indexes them again)."""
        con.execute("ATTACH DATABASE ? AS frames", (self.frames_path,))
        con.execute("PRAGMA frames.journal_mode=WAL")
        con.execute("PRAGMA frames.synchronous=NORMAL")
        con.executescript(FRAMES_SCHEMA)

    def _upgrade_layout(self) -> None:
        """Stores of the earlier layout kept frames in a ``blobs`` table keyed by hash, a unique (device,
        seq) index, and each message's batch and leaf in its row: new frames go into their message
        row; the highest stored seq of each device becomes its ``device_seqs`` row with the whole window
        below it counted as stored; each batch gets the id range of its messages."""
        columns = {table: [r[1] for r in self.db.execute("PRAGMA table_info(%s)" % table)]
                   for table in ("messages", "batches")}
        if "frame" not in columns["messages"]:
            self.db.execute("ALTER TABLE messages ADD COLUMN frame BLOB")
        covered = [r[1] for r in self.db.execute("PRAGMA table_info(chain_frames)")]
        if "device" not in covered:         # keyed by frame hash: rows moved to the (device, seq) layout
            self.db.execute("ALTER TABLE chain_frames RENAME TO chain_frames_by_hash")
            self.db.execute(CHAIN_FRAMES_SCHEMA)
            self.db.execute("INSERT OR REPLACE INTO chain_frames (device, seq, frame_hash, statement) SELECT m.device, "
                            "m.seq, c.frame_hash, c.statement FROM chain_frames_by_hash c JOIN messages m "
                            "ON m.frame_hash = c.frame_hash")
            self.db.execute("DROP TABLE chain_frames_by_hash")
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_device_seq'").fetchone():
            self.db.execute("INSERT OR IGNORE INTO device_seqs (device, highest, seen) "
                            "SELECT device, MAX(seq), ? FROM messages GROUP BY device", (self._full_window(),))
            self.db.execute("DROP INDEX messages_device_seq")
        if "first_id" not in columns["batches"]:
            self.db.execute("ALTER TABLE batches ADD COLUMN first_id INTEGER")
            self.db.execute("ALTER TABLE batches ADD COLUMN last_id INTEGER")
            self.db.execute("UPDATE batches SET first_id = (SELECT MIN(id) FROM messages WHERE batch = batches.id), "
                            "last_id = (SELECT MAX(id) FROM messages WHERE batch = batches.id)")
            self.db.execute("DROP INDEX IF EXISTS messages_batch")
        if "receipts_sent" not in columns["batches"]:    # batches anchored before: their receipts count as sent
            self.db.execute("ALTER TABLE batches ADD COLUMN receipts_sent INTEGER NOT NULL DEFAULT 1")
        self.db.execute("CREATE INDEX IF NOT EXISTS batches_owner_last ON batches (owner, last_id)")
        self.db.execute("CREATE INDEX IF NOT EXISTS batches_unreceipted ON batches (owner) WHERE receipts_sent = 0")
        self.db.execute("CREATE INDEX IF NOT EXISTS batches_last ON batches (last_id)")
        self.legacy_blobs = bool(self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'blobs'").fetchone())

    def _full_window(self) -> bytes:
        return ((1 << self.window) - 1).to_bytes((self.window + 7) // 8, "little")

    def close(self) -> None:
        with self.read_lock:
            if self.reader is not self.db:
                self.reader.close()
        with self.index_lock:
            if self.indexer is not self.db:
                self.indexer.close()
        with self.lock:
            self.db.close()

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        with self.lock, _transaction(self.db):
            for sql, args in statements:
                self.db.execute(sql, args)

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.read_lock:
            return self.reader.execute(sql, args).fetchall()

    # --- messages ---------------------------------------------------------------------------------

    def append_accepted(self, frame: bytes, device: bytes, seq: int, time_ms: int, topic: str,
                        received_ms: int) -> bytes:
        """Store an accepted frame durably; returns its SHA-256. Raises ``sqlite3.IntegrityError`` when its
        (device, seq) is already stored or below the device's window."""
        h = hashlib.sha256(frame).digest()
        self.write_many([(frame, device, seq, time_ms, topic, received_ms, h)])
        return h

    def write_many(self, accepted: list[tuple[bytes, bytes, int, int, str, int, bytes]] = (),
                   warnings: list[tuple[dict, int]] = (), certs: list[tuple[bytes, bytes, int]] = (),
                   stored_elsewhere: list[tuple[int, bool]] | None = None,
                   chain_frames: list[tuple[bytes, list[tuple[bytes, int, bytes]]]] = ()) -> int:
        """Commit in one transaction ``accepted`` frames (frame, device, seq, time_ms, topic, received_ms, SHA-256)
        in order, queued ``warnings`` (entry, now_ms), session ``certs`` (device, cert, now_ms) and the
        ``chain_frames`` of chain statements that matched (statement frame hash, (device, seq, frame hash) of each
        frame it covers).

        Returns the number of warnings newly queued (an id already queued is kept once). The indexes
        of accepted frames whose (device, seq) was already stored (by another process sharing the
        file) or lies below the device's stored window are appended to ``stored_elsewhere`` with whether
        the same frame is stored; those frames are not stored again. Without ``stored_elsewhere``, such a
        frame raises ``sqlite3.IntegrityError`` and nothing of the group is stored.
        """
        if not accepted and not warnings and not certs and not chain_frames:
            return 0
        owner = self.owner
        warn_rows = [(e[1], cbor.dumps(e), now_ms, "queued", owner) for e, now_ms in warnings]
        cert_rows = [(hashlib.sha256(cert).digest(), dev, cert, now_ms, "pending", owner)
                     for dev, cert, now_ms in certs]
        covered_rows = [(dev, seq, h, statement) for statement, frames in chain_frames for dev, seq, h in frames]
        with self.lock, _transaction(self.db):
            if accepted:
                self._append_messages(accepted, stored_elsewhere)
            before = self.db.total_changes
            if warn_rows:
                self.db.executemany("INSERT OR IGNORE INTO warnings (id, entry, created_ms, status, owner) "
                                    "VALUES (?,?,?,?,?)", warn_rows)
            added = self.db.total_changes - before
            if cert_rows:
                self.db.executemany("INSERT OR IGNORE INTO certs (hash, device, cert, created_ms, status, owner) "
                                    "VALUES (?,?,?,?,?,?)", cert_rows)
            if covered_rows:
                self._insert_rows("INSERT OR REPLACE INTO chain_frames (device, seq, frame_hash, statement) VALUES ",
                                  covered_rows)
        if warn_rows or cert_rows:
            self.records_written += 1
        return added

    def _append_messages(self, accepted: list[tuple[bytes, bytes, int, int, str, int, bytes]],
                         stored_elsewhere: list[tuple[int, bool]] | None) -> None:
        """Inside the write transaction: take each frame's (device, seq) in its device's window and append
        the frames that got one."""
        window, full = self.window, (1 << self.window) - 1
        devices = list({row[1] for row in accepted})
        state: dict[bytes, list[int]] = {}
        for i in range(0, len(devices), 500):
            part = devices[i:i + 500]
            for dev, highest, seen in self.db.execute("SELECT device, highest, seen FROM device_seqs WHERE device IN "
                                                      "(%s)" % ",".join("?" * len(part)), part):
                state[dev] = [highest, int.from_bytes(seen, "little")]
        rows = []
        taken: set[bytes] = set()
        owner = self.owner
        for i, (frame, device, seq, time_ms, topic, received_ms, h) in enumerate(accepted):
            st = state.get(device)
            if st is None:
                state[device] = [seq, 1]
            elif seq > st[0]:
                st[1] = ((st[1] << (seq - st[0])) | 1) & full if seq - st[0] < window else 1
                st[0] = seq
            elif st[0] - seq < window and not st[1] >> (st[0] - seq) & 1:
                st[1] |= 1 << (st[0] - seq)
            else:
                stored = owner if h in taken else self._by_hash(h, "owner", with_frame=False)
                if stored == owner:             # this process's own frame again: stored once, decided again
                    continue
                if stored_elsewhere is None:
                    raise sqlite3.IntegrityError("seq %d of device %s is already stored or below its window"
                                                 % (seq, device.hex()))
                stored_elsewhere.append((i, stored is not None))
                continue
            rows.append((h, device, seq, time_ms, topic, received_ms, owner, frame))
            taken.add(h)
        self._insert_rows("INSERT INTO messages (frame_hash, device, seq, time_ms, topic, received_ms, owner, frame) "
                          "VALUES ", rows)
        nbytes = (window + 7) // 8
        self._insert_rows("INSERT OR REPLACE INTO device_seqs (device, highest, seen) VALUES ",
                          [(dev, st[0], st[1].to_bytes(nbytes, "little")) for dev, st in state.items()])

    def _insert_rows(self, head: str, rows: list[tuple]) -> None:
        """``head`` ("INSERT ... VALUES ") for ``rows`` as a few statements of many rows each: each statement
        is one step, and one release of the GIL, where ``executemany`` takes one per row (each a chance
        for a busy thread to keep this one waiting for the GIL)."""
        i, n = 0, len(rows)
        for size in INSERT_ROWS:
            if n - i < size:
                continue
            sql = self._insert_sql.get((head, size))
            if sql is None:
                sql = self._insert_sql[(head, size)] = head + ",".join(["(" + ",".join("?" * len(rows[0])) + ")"] * size)
            while n - i >= size:
                self.db.execute(sql, [v for row in rows[i:i + size] for v in row])
                i += size

    def _by_hash(self, h: bytes, column: str, with_frame: bool, whole_row: bool = False, after_id: int = 0) -> Any:
        """``column`` (columns, with ``whole_row``) of the stored message whose frame hash is ``h``, None
        when there is none: through the frame index, then among the messages after it (and after message
        ``after_id``, when the caller knows the message is newer than that). ``with_frame``: only
        rows that hold their frame (those of the earlier layout have it in ``blobs``). Read through the
        reader, which attaches the index; inside the writer's transaction it sees every other process's
        committed rows."""
        held = " AND m.frame IS NOT NULL" if with_frame else ""
        columns = _prefixed(column)
        rows = self._query("SELECT %s FROM frames.frame_index f JOIN messages m ON m.id = f.id "
                           "WHERE f.prefix = ? AND m.frame_hash = ?%s" % (columns, held), (h[:FRAME_PREFIX], h)) \
            or self._query("SELECT %s FROM messages m WHERE m.id > MAX(%s, ?) AND m.frame_hash = ?%s"
                           % (columns, INDEXED_UPTO, held), (after_id, h))
        if not rows:
            return None
        return rows[0] if whole_row else rows[0][0]

    def blob(self, h: bytes) -> bytes | None:
        """The stored frame whose SHA-256 is ``h``; None when there is none."""
        frame = self._by_hash(h, "frame", with_frame=True)
        if frame is None and self.legacy_blobs:
            rows = self._query("SELECT data FROM blobs WHERE hash = ?", (h,))
            return rows[0][0] if rows else None
        return frame

    def unbatched(self, limit: int) -> list[StoredMessage]:
        rows = self._query("SELECT " + MESSAGE_COLUMNS + " FROM messages WHERE id > " + BATCHED_UPTO +
                           " AND owner = ? ORDER BY id LIMIT ?", (self.owner, self.owner, limit))
        return [StoredMessage(*r) for r in rows]

    def unbatched_leaves(self, limit: int, offset: int = 0) -> list[tuple[int, bytes, int]]:
        """(id, frame hash, received_ms) of this owner's messages not in a batch, in arrival order, from
        the ``offset``-th on."""
        return self._query("SELECT id, frame_hash, received_ms FROM messages WHERE id > " + BATCHED_UPTO +
                           " AND owner = ? ORDER BY id LIMIT ? OFFSET ?", (self.owner, self.owner, limit, offset))

    def batch_leaves(self, batch_id: bytes) -> list[tuple[bytes, bytes, int, int]]:
        """(frame hash, device, seq, leaf) of the messages of a batch, in leaf order."""
        rows = self._query("SELECT m.frame_hash, m.device, m.seq FROM batches b JOIN messages m "
                           "ON m.id BETWEEN b.first_id AND b.last_id AND m.owner = b.owner WHERE b.id = ? ORDER BY m.id",
                           (batch_id,))
        return [(h, dev, seq, leaf) for leaf, (h, dev, seq) in enumerate(rows)]

    def batch_covering(self, batch_id: bytes) -> dict[bytes, tuple[bytes, int]]:
        """Frame hash -> (the chain statement (its frame hash) that covers it, the frame's message id), for the
        covered frames of a batch (one query; whether each statement is stored and anchored is for the caller
        to check)."""
        return {h: (statement, i) for h, statement, i in self._query(
            "SELECT c.frame_hash, c.statement, m.id FROM batches b JOIN messages m "
            "ON m.id BETWEEN b.first_id AND b.last_id AND m.owner = b.owner "
            "JOIN chain_frames c ON c.device = m.device AND c.seq = m.seq AND c.frame_hash = m.frame_hash "
            "WHERE b.id = ?", (batch_id,))}

    def covering(self, frame_hash: bytes) -> bytes | None:
        """The frame hash of the chain statement recorded as covering the frame ``frame_hash``, or None."""
        msg = self.message_by_hash(frame_hash)
        if msg is None:
            return None
        rows = self._query("SELECT statement FROM chain_frames WHERE device = ? AND seq = ? AND frame_hash = ?",
                           (msg.device, msg.seq, frame_hash))
        return rows[0][0] if rows else None

    def highest_seqs(self) -> dict[bytes, int]:
        """The highest stored sequence number of each device."""
        return dict(self._query("SELECT device, highest FROM device_seqs"))

    def seq_windows(self) -> dict[bytes, tuple[int, int]]:
        """Each device's stored window: (highest stored seq, bits), bit i set when seq highest - i is stored."""
        return {dev: (highest, int.from_bytes(seen, "little"))
                for dev, highest, seen in self._query("SELECT device, highest, seen FROM device_seqs")}

    def message_by_hash(self, h: bytes, after_id: int = 0) -> StoredMessage | None:
        """The stored message whose frame hash is ``h`` (by any owner), None when there is none; ``after_id``:
        it is known to be newer than that message (fewer rows past the frame index to look through)."""
        row = self._by_hash(h, MESSAGE_COLUMNS, with_frame=False, whole_row=True, after_id=after_id)
        return StoredMessage(*row) if row is not None else None

    def anchored_by_hash(self, h: bytes, after_id: int) -> bool:
        """Whether the stored message whose frame hash is ``h`` (by any owner), known to be newer than message
        ``after_id``, is in an anchored batch. Past the frame index it looks only through the messages of
        anchored batches that end after ``after_id`` (``message_by_hash`` reads every message stored since,
        the batches still waiting for their anchor and the frames not yet batched included)."""
        rows = self._query("SELECT m.id, m.owner FROM frames.frame_index f JOIN messages m ON m.id = f.id "
                           "WHERE f.prefix = ? AND m.frame_hash = ?", (h[:FRAME_PREFIX], h))
        if rows:
            return self.anchored_batch_of(StoredMessage(rows[0][0], h, b"", 0, 0, "", 0)) is not None
        return bool(self._query("SELECT 1 FROM batches b CROSS JOIN messages m ON m.id BETWEEN MAX(b.first_id, ?, %s + 1) "
                                "AND b.last_id AND +m.owner = b.owner WHERE b.last_id > ? AND b.status = 'anchored' "
                                "AND +m.frame_hash = ? LIMIT 1" % INDEXED_UPTO, (after_id + 1, after_id, h)))

    def message_by_seq(self, device: bytes, seq: int) -> StoredMessage | None:
        """The stored message of ``device`` with sequence number ``seq`` (by any owner), None when there is
        none: through the seq index, then among the messages after it."""
        rows = self._query("SELECT " + _prefixed(MESSAGE_COLUMNS) + " FROM frames.seq_index s JOIN messages m "
                           "ON m.id = s.id WHERE s.device = ? AND s.seq = ?", (device, seq)) \
            or self._query("SELECT " + MESSAGE_COLUMNS + " FROM messages WHERE id > " + SEQ_INDEXED_UPTO +
                           " AND device = ? AND seq = ?", (device, seq))
        return StoredMessage(*rows[0]) if rows else None

    def frame_of(self, message_id: int) -> bytes | None:
        rows = self._query("SELECT frame FROM messages WHERE id = ?", (message_id,))
        return rows[0][0] if rows else None

    def anchored_batch_of(self, message: StoredMessage) -> bytes | None:
        """The id of the anchored batch that holds ``message``, None while it is not anchored."""
        rows = self._query("SELECT b.id, b.first_id, b.status FROM batches b JOIN messages m ON m.id = ? "
                           "WHERE b.owner = m.owner AND b.last_id >= m.id ORDER BY b.last_id LIMIT 1", (message.id,))
        if not rows or rows[0][1] > message.id or rows[0][2] != "anchored":
            return None
        return rows[0][0]

    # --- batches ----------------------------------------------------------------------------------

    def create_batch(self, batch_id: bytes, root: bytes, tx: bytes, message_ids: list[int], now_ms: int) -> None:
        """Make a pending batch of ``message_ids``: this owner's oldest unbatched messages, in order (a
        batch is the range of this owner's messages from the first id to the last)."""
        if not message_ids:
            raise ValueError("a batch needs messages")
        first, last = message_ids[0], message_ids[-1]
        with self.lock, _transaction(self.db):
            ids = [r[0] for r in self.db.execute("SELECT id FROM messages WHERE id > " + BATCHED_UPTO +
                                                 " AND id <= ? AND owner = ? ORDER BY id", (self.owner, last, self.owner))]
            if ids != list(message_ids):
                raise ValueError("batch messages must be this owner's oldest unbatched messages, in order")
            self.db.execute("INSERT INTO batches (id, root, count, tx, status, created_ms, owner, first_id, last_id, "
                            "receipts_sent) VALUES (?,?,?,?,?,?,?,?,?,0)",
                            (batch_id, root, len(message_ids), tx, "pending", now_ms, self.owner, first, last))
        self._extend_frame_index(last)

    def _extend_frame_index(self, upto: int) -> None:
        """Add the frames of all owners' messages up to id ``upto`` to the frame index, in hash order, once
        at least ``FRAME_INDEX_STEP`` of them wait (one transaction on the index file; the messages are
        read from a snapshot, and a stored message never changes)."""
        con = self.indexer
        with self.index_lock:
            if upto - con.execute("SELECT " + INDEXED_UPTO).fetchone()[0] < FRAME_INDEX_STEP:
                return
            with _transaction(con):
                done = con.execute("SELECT " + INDEXED_UPTO).fetchone()[0]     # another process may have gone on
                if upto > done:
                    con.execute("INSERT OR IGNORE INTO frames.frame_index (prefix, id) SELECT substr(frame_hash, 1, ?), id "
                                "FROM messages WHERE id > ? AND id <= ? ORDER BY frame_hash", (FRAME_PREFIX, done, upto))
                    con.execute("INSERT OR REPLACE INTO frames.marks (name, value) VALUES ('indexed', ?)", (upto,))
                done = con.execute("SELECT " + SEQ_INDEXED_UPTO).fetchone()[0]
                if upto > done:
                    con.execute("INSERT OR IGNORE INTO frames.seq_index (device, seq, id) SELECT device, seq, id "
                                "FROM messages WHERE id > ? AND id <= ? ORDER BY device, seq", (done, upto))
                    con.execute("INSERT OR REPLACE INTO frames.marks (name, value) VALUES ('seq_indexed', ?)", (upto,))

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

    def unreceipted_batches(self) -> list[bytes]:
        """Ids of this owner's anchored batches whose receipts are not marked sent, oldest first."""
        return [r[0] for r in self._query("SELECT id FROM batches WHERE owner = ? AND receipts_sent = 0 "
                                          "AND status = 'anchored' ORDER BY last_id", (self.owner,))]

    def mark_receipts_sent(self, batch_ids: list[bytes]) -> None:
        if batch_ids:
            self._tx([("UPDATE batches SET receipts_sent = 1 WHERE id = ?", (b,)) for b in batch_ids])

    # --- warnings ---------------------------------------------------------------------------------

    def add_warning(self, entry: dict, now_ms: int) -> bool:
        """Queue a refusal record for the ledger; False when its id was already queued (once per gateway)."""
        with self.lock:
            before = self.db.total_changes
            self._tx([("INSERT OR IGNORE INTO warnings (id, entry, created_ms, status, owner) VALUES (?,?,?,?,?)",
                       (entry[1], cbor.dumps(entry), now_ms, "queued", self.owner))])
            self.records_written += 1
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
        self.records_written += 1

    def certificates(self, status: str | None = None, limit: int = -1,
                     issued_from_ms: int = 0) -> list[tuple[bytes, bytes]]:
        """(device, cert) pairs: all of the site's issued at ``issued_from_ms`` or later, or this owner's
        with ``status`` (pending: not yet recorded on the ledger)."""
        if status is None:
            return self._query("SELECT device, cert FROM certs WHERE created_ms >= ? ORDER BY created_ms LIMIT ?",
                               (issued_from_ms, limit))
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
            "unbatched": self._query("SELECT COUNT(*) FROM messages WHERE id > " + BATCHED_UPTO + " AND owner = ?",
                                     (self.owner, self.owner))[0][0],
            "batches": dict(self._query("SELECT status, COUNT(*) FROM batches GROUP BY status")),
            "warnings": dict(self._query("SELECT status, COUNT(*) FROM warnings GROUP BY status")),
        }
