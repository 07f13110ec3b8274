"""The gateway's side of session chain statements (docs/protocol.md, "Session chain statements").

A chain statement arrives as a signed reading: ``GatewayCore`` checks its signature (canonical, with the
device's registered key), its binding to the device's ``up`` topic and its structure, and hands it on
in ``Accept.chain``. Here it is checked against the frames the store holds (and those accepted earlier
in the same group): the session's frames with seq in [first, last], in seq order, must give the signed
head. A statement that matches is stored and anchored like any reading, and the hashes of the frames
it covers are kept (``chain_frames``), so a receipt can say which device-signed statement covers its
reading. One that does not match is refused (``CHAIN_MISMATCH``) and counted.

Protects against a session frame the device did not send (the gateway, holding the site key, can seal
one) passing as the device's: only frames in a verified statement's chain are ever reported covered.
Tested in tests/gateway/test_session_chain.py.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from typing import Any

from ledgerlink.core import session_chain
from ledgerlink.core.errors import InvalidProof
from ledgerlink.gateway.store import SEQ_INDEXED_UPTO, Store

SCHEMA = "CREATE TABLE IF NOT EXISTS chain_frames (frame_hash BLOB PRIMARY KEY, statement BLOB NOT NULL) WITHOUT ROWID"


class ChainStatements:
    """Checks chain statements against ``store`` and keeps which frames they cover.

    The session frames of the last ``DEVICES`` devices (at most ``PER_DEVICE`` each) are kept in memory
    as they are accepted (``note``), so a statement is usually checked without reading the store; seqs
    of its range not held there (after a restart, from another gateway process, or signed frames and
    skipped seqs) are read from the store with one range query."""

    PER_DEVICE = 3 * session_chain.EVERY_FRAMES
    DEVICES = 8192

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.lock:
            store.db.execute(SCHEMA)
        self.recent: OrderedDict[bytes, dict[int, bytes]] = OrderedDict()   # device -> {seq: session frame}
        self.verified = 0
        self.refused = 0

    def note(self, dev: bytes, seq: int, frame: bytes) -> None:
        """An accepted session frame."""
        frames = self.recent.get(dev)
        if frames is None:
            if len(self.recent) >= self.DEVICES:
                self.recent.popitem(last=False)
            frames = self.recent[dev] = {}
        frames[seq] = frame
        if len(frames) > self.PER_DEVICE:
            del frames[next(iter(frames))]

    def _stored(self, dev: bytes, first: int, last: int) -> dict[int, bytes]:
        """{seq: frame} of the store's frames of ``dev`` with seq in [first, last]."""
        rows = self.store._query("SELECT s.seq, m.frame FROM frames.seq_index s JOIN messages m ON m.id = s.id "
                                 "WHERE s.device = ? AND s.seq BETWEEN ? AND ?", (dev, first, last))
        rows += self.store._query("SELECT seq, frame FROM messages WHERE id > " + SEQ_INDEXED_UPTO +
                                  " AND device = ? AND seq BETWEEN ? AND ?", (dev, first, last))
        return {seq: frame for seq, frame in rows if frame is not None}

    def check(self, accept: Any, earlier: list[Any]) -> list[bytes]:
        """The hashes of the frames the statement ``accept`` (an ``Accept`` with ``chain``) covers; InvalidProof
        when its session's frames in its range, stored or among the ``earlier`` accepts of its group, do not
        give its head."""
        sid, first, last, head = accept.chain
        dev = accept.device_id
        held = self.recent.get(dev, {})
        frames = {seq: f for seq, f in held.items() if first <= seq <= last}
        for e in earlier:
            if getattr(e, "device_id", None) == dev and getattr(e, "mode", None) == "session" \
                    and first <= e.seq <= last:
                frames[e.seq] = e.frame
        if len(frames) < last - first + 1:
            frames = {**self._stored(dev, first, last), **frames}
        statement = session_chain.Statement(dev, accept.seq, accept.time_ms, sid, first, last, head)
        try:
            hashes = session_chain.covered(statement, sorted(frames.items()))
        except InvalidProof:
            self.refused += 1
            raise
        self.verified += 1
        for seq in [seq for seq in held if seq <= last]:
            del held[seq]
        return hashes

    def record(self, covered: list[tuple[bytes, list[bytes]]]) -> None:
        """Keep (statement frame hash, covered frame hashes) of statements now stored."""
        sql = "INSERT OR REPLACE INTO chain_frames (frame_hash, statement) VALUES (?,?)"
        rows = [(sql, (h, statement)) for statement, hashes in covered for h in hashes]
        if rows:
            self.store._tx(rows)


def covering(store: Store, frame_hash: bytes) -> bytes | None:
    """The frame hash of the stored, anchored chain statement that covers the frame ``frame_hash``, or None."""
    try:
        rows = store._query("SELECT statement FROM chain_frames WHERE frame_hash = ?", (frame_hash,))
    except sqlite3.OperationalError:        # no statement was ever checked with this store
        return None
    if not rows:
        return None
    msg = store.message_by_hash(rows[0][0])
    if msg is None or store.anchored_batch_of(msg) is None:
        return None
    return rows[0][0]
