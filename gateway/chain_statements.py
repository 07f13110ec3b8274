"""The gateway's side of session chain statements (docs/protocol.md, "Session chain statements").

A chain statement arrives as a signed reading: ``GatewayCore`` checks its signature (canonical, with the
device's registered key), its binding to the device's ``up`` topic and its structure, and hands it on
in ``Accept.chain``. Here it is checked against the frames the store holds (and those accepted earlier
in the same group): the session's frames with seq in [first, last], in seq order, must give the signed
head. A statement that matches is stored and anchored like any reading, and the hashes of the frames
it covers are kept (``chain_frames``, in the same transaction as the statement), so a receipt can say
which device-signed statement covers its reading. One that does not match is refused (``CHAIN_MISMATCH``)
and counted. The check costs one ES256 verification (done with the other signed readings) and a
SHA-256 per covered frame, hashes the gateway keeps as it stores the frames.

Protects against a session frame the device did not send (the gateway, holding the site key, can seal
one) passing as the device's: only frames in a verified statement's chain are ever reported covered.
Tested in tests/gateway/test_session_chain.py.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import OrderedDict
from typing import Any

from ledgerlink.protocol import session_chain
from ledgerlink.core.errors import InvalidProof
from ledgerlink.gateway.store import SEQ_INDEXED_UPTO, Store

# a session frame as the gateway accepts it: tag 16, [protected {1: 10}, unprotected {4: 8-byte kid, ...}, ...]
SESSION_FRAME_HEAD = bytes.fromhex("d08343a1010aa2044" "8")
SID_AT = len(SESSION_FRAME_HEAD)


def session_id_of(frame: bytes) -> bytes | None:
    """The session id (kid) of a session frame the checks accepted; None for any other frame."""
    if frame[:SID_AT] == SESSION_FRAME_HEAD:
        return frame[SID_AT:SID_AT + session_chain.SESSION_ID_LEN]
    found = session_chain.session_frame(frame)
    return found[0] if found is not None else None


class ChainStatements:
    """Checks chain statements against ``store``; the covered frames go into the store's ``chain_frames`` with
    the group that stores the statement (``Store.write_many``).

    The (session id, frame hash) of the session frames of the last ``DEVICES`` devices (at most
    ``PER_DEVICE`` each) are kept in memory as they are stored (``note``), so a statement is usually
    checked without reading or decoding a frame; seqs of its range not held there (after a restart, from
    another gateway process, or signed frames and skipped seqs) are read from the store with one range query."""

    PER_DEVICE = 2 * session_chain.EVERY_FRAMES
    DEVICES = 8192

    def __init__(self, store: Store) -> None:
        self.store = store
        self.recent: OrderedDict[bytes, dict[int, tuple[bytes, bytes]]] = OrderedDict()   # device -> {seq: (sid, hash)}
        self.verified = 0
        self.refused = 0

    def note(self, dev: bytes, seq: int, frame: bytes, frame_hash: bytes | None = None) -> None:
        """A stored session frame."""
        sid = session_id_of(frame)
        if sid is None:
            return
        frames = self.recent.get(dev)
        if frames is None:
            if len(self.recent) >= self.DEVICES:
                self.recent.popitem(last=False)
            frames = self.recent[dev] = {}
        frames[seq] = (sid, frame_hash or hashlib.sha256(frame).digest())
        if len(frames) > self.PER_DEVICE:
            del frames[next(iter(frames))]

    def _stored(self, dev: bytes, first: int, last: int) -> dict[int, tuple[bytes, bytes]]:
        """{seq: (session id, frame hash)} of the store's session frames of ``dev`` with seq in [first, last];
        InvalidProof when one's Partial IV is not its seq."""
        rows = self.store._query("SELECT s.seq, m.frame FROM frames.seq_index s JOIN messages m ON m.id = s.id "
                                 "WHERE s.device = ? AND s.seq BETWEEN ? AND ?", (dev, first, last))
        rows += self.store._query("SELECT seq, frame FROM messages WHERE id > " + SEQ_INDEXED_UPTO +
                                  " AND device = ? AND seq BETWEEN ? AND ?", (dev, first, last))
        out = {}
        for seq, frame in rows:
            found = session_chain.session_frame(frame) if frame is not None else None
            if found is None:
                continue
            if found[1] != seq:
                raise InvalidProof("frame stored at seq %d carries Partial IV %d" % (seq, found[1]))
            out[seq] = (found[0], hashlib.sha256(frame).digest())
        return out

    def check(self, accept: Any, earlier: list[Any]) -> list[tuple[bytes, int, bytes]]:
        """(device, seq, frame hash) of the frames the statement ``accept`` (an ``Accept`` with ``chain``) covers; InvalidProof
        when its session's frames in its range, stored or among the ``earlier`` accepts of its group, do not
        give its head."""
        sid, first, last, head = accept.chain
        dev = accept.device_id
        held = self.recent.get(dev, {})
        frames = {seq: f for seq, f in held.items() if first <= seq <= last}
        span = last - first + 1
        for e in earlier if len(frames) < span else ():      # a seq is accepted once: held and earlier are apart
            if getattr(e, "device_id", None) == dev and getattr(e, "mode", None) == "session" \
                    and first <= e.seq <= last:
                kid = session_id_of(e.frame)
                if kid is not None:
                    frames[e.seq] = (kid, e.frame_hash)
        try:
            if len(frames) < span:
                frames = {**self._stored(dev, first, last), **frames}
            chained = covered(sid, first, last, head, frames)
        except InvalidProof:
            self.refused += 1
            raise
        self.verified += 1
        for seq in [seq for seq in held if seq <= last]:
            del held[seq]
        return [(dev, seq, h) for seq, h in chained]


def covered(sid: bytes, first: int, last: int, head: bytes,
            frames: dict[int, tuple[bytes, bytes]]) -> list[tuple[int, bytes]]:
    """``session_chain.covered`` over {seq: (session id, frame hash)}: (seq, hash) of the frames of session ``sid``
    with seq in [first, last], in seq order, when they span the range and give ``head``; else InvalidProof."""
    chained = sorted((seq, h) for seq, (kid, h) in frames.items() if first <= seq <= last and kid == sid)
    if not chained or chained[0][0] != first or chained[-1][0] != last:
        raise InvalidProof("the frames of the session do not span the statement's range %d..%d" % (first, last))
    hashes = [h for _, h in chained]
    if session_chain.head_of(sid, hashes) != head:
        raise InvalidProof("the frames of session %s in %d..%d do not give the signed head" % (sid.hex(), first, last))
    return chained


def covering(store: Store, frame_hash: bytes, statements: dict[bytes, bool] | None = None,
             statement: bytes | None = None, frame_id: int = 0) -> bytes | None:
    """The frame hash of the stored, anchored chain statement that covers the frame ``frame_hash``, or None.
    ``statement``: the one ``chain_frames`` names, when the caller read it already, and ``frame_id`` the
    frame's message id (a statement is stored after the frames it covers); ``statements`` caches whether
    each statement is stored and anchored, for the receipts of one batch."""
    if statement is None:
        try:
            statement = store.covering(frame_hash)
        except sqlite3.OperationalError:        # a store of the layout before chain_frames
            return None
        if statement is None:
            return None
    ok = statements.get(statement) if statements is not None else None
    if ok is None:
        if frame_id:
            ok = store.anchored_by_hash(statement, frame_id)
        else:
            msg = store.message_by_hash(statement)
            ok = msg is not None and store.anchored_batch_of(msg) is not None
        if statements is not None:
            statements[statement] = ok
    return statement if ok else None
