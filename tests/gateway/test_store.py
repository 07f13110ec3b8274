"""Store layout: the shared per-device window against a model, frames found by hash before and after
batching, batches as id ranges, and a store of the earlier layout opened and carried on."""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.gateway import store as store_module
from ledgerlink.gateway.store import Store

DEVICES = [bytes([i]) * 16 for i in range(3)]


def row(dev: bytes, seq: int, tag: int = 0) -> tuple[bytes, bytes, int, int, str, int, bytes]:
    frame = b"frame-%s-%d-%d" % (dev.hex().encode(), seq, tag)
    return (frame, dev, seq, 1000 + seq, "ll/s/dev/%s/up" % dev.hex(), 2000 + seq, hashlib.sha256(frame).digest())


class WindowModel:
    """One replay window per device, shared by every process: a seq is taken once, and not below the
    ``window`` numbers under the highest taken."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.taken: dict[bytes, set[int]] = {}

    def take(self, dev: bytes, seq: int) -> bool:
        seen = self.taken.setdefault(dev, set())
        if seq in seen or (seen and seq <= max(seen) - self.window):
            return False
        seen.add(seq)
        return True


@settings(max_examples=150, deadline=None)
@given(window=st.sampled_from([1, 3, 8, 64, 70]),
       groups=st.lists(st.tuples(st.sampled_from(["a", "b"]),
                                 st.lists(st.tuples(st.sampled_from(DEVICES), st.integers(0, 40), st.integers(0, 1)),
                                          max_size=12)),
                       max_size=8))
def test_two_processes_take_each_seq_once_within_the_shared_window(window, groups):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "site.db"
        stores = {"a": Store(path, "a", window), "b": Store(path, "b", window)}
        model = WindowModel(window)
        stored: dict[bytes, str] = {}              # frame hash -> owner
        try:
            for owner, items in groups:
                rows = [row(dev, seq, tag) for dev, seq, tag in items]
                elsewhere: list[tuple[int, bool]] = []
                stores[owner].write_many(rows, stored_elsewhere=elsewhere)
                expect: list[tuple[int, bool]] = []
                for i, r in enumerate(rows):
                    if model.take(r[1], r[2]):
                        stored[r[6]] = owner
                    elif stored.get(r[6]) != owner:     # the owner's own frame again is not reported
                        expect.append((i, r[6] in stored))
                assert elsewhere == expect
            for s in stores.values():
                assert s.highest_seqs() == {dev: max(seqs) for dev, seqs in model.taken.items() if seqs}
                assert sorted(m.id for m in s.unbatched(1000)) == sorted(
                    m.id for m in s.unbatched(1000) if stored.get(m.frame_hash) == s.owner)
            for h in stored:
                assert hashlib.sha256(stores["a"].blob(h)).digest() == h
        finally:
            for s in stores.values():
                s.close()


def test_without_a_list_for_them_a_taken_seq_fails_the_whole_group(tmp_path):
    s = Store(tmp_path / "gw.db")
    s.write_many([row(DEVICES[0], 5)])
    with pytest.raises(sqlite3.IntegrityError):
        s.write_many([row(DEVICES[1], 1), row(DEVICES[0], 5, tag=1)])
    assert s.highest_seqs() == {DEVICES[0]: 5} and len(s.unbatched(10)) == 1


def test_frames_are_found_by_hash_before_and_after_they_are_indexed(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "FRAME_INDEX_STEP", 4)
    s = Store(tmp_path / "gw.db", "a")
    rows = [row(DEVICES[0], seq) for seq in range(1, 11)]
    s.write_many(rows[:3])
    assert all(s.blob(r[6]) == r[0] for r in rows[:3])             # unbatched, not indexed
    s.create_batch(b"b1", b"r" * 32, b"tx", [m.id for m in s.unbatched(10)], 5)
    assert s.reader.execute("SELECT COUNT(*) FROM frames.frame_index").fetchone()[0] == 0      # fewer than the step
    s.write_many(rows[3:])
    s.create_batch(b"b2", b"r" * 32, b"tx", [m.id for m in s.unbatched(1)], 6)
    assert s.reader.execute("SELECT COUNT(*) FROM frames.frame_index").fetchone()[0] == 4      # the step reached
    s.create_batch(b"b3", b"r" * 32, b"tx", [m.id for m in s.unbatched(3)], 7)
    assert s.reader.execute("SELECT COUNT(*) FROM frames.frame_index").fetchone()[0] == 4
    assert all(s.blob(r[6]) == r[0] for r in rows)                  # indexed, and the unindexed rest
    assert s.blob(hashlib.sha256(b"other").digest()) is None
    assert [leaf[2:] for leaf in s.batch_leaves(b"b3")] == [(5, 0), (6, 1), (7, 2)]
    assert [m.seq for m in s.unbatched(10)] == [8, 9, 10] and s.stats()["unbatched"] == 3
    s.create_batch(b"b4", b"r" * 32, b"tx", [m.id for m in s.unbatched(10)], 8)
    assert s.reader.execute("SELECT COUNT(*) FROM frames.frame_index").fetchone()[0] == 10
    assert all(s.blob(r[6]) == r[0] for r in rows)
    # a redelivery to another process is told apart from another frame under the seq, through the index too
    elsewhere: list[tuple[int, bool]] = []
    Store(tmp_path / "gw.db", "b").write_many([rows[0], row(DEVICES[0], 2, tag=1), rows[9]], stored_elsewhere=elsewhere)
    assert elsewhere == [(0, True), (1, False), (2, True)]


def test_the_window_has_at_least_one_number():
    with pytest.raises(ValueError):
        Store(":memory:", window=0)


def test_a_batch_is_the_owners_oldest_unbatched_messages(tmp_path):
    path = tmp_path / "site.db"
    a, b = Store(path, "a"), Store(path, "b")
    a.write_many([row(DEVICES[0], 1)])
    b.write_many([row(DEVICES[1], 1)])
    a.write_many([row(DEVICES[0], 2), row(DEVICES[0], 3)])
    ids = [m.id for m in a.unbatched(10)]
    for wrong in ([ids[1], ids[2]], [ids[0], ids[2]], []):
        with pytest.raises(ValueError):
            a.create_batch(b"x", b"r" * 32, b"tx", wrong, 5)
    a.create_batch(b"a1", b"r" * 32, b"tx", ids[:2], 5)
    assert [leaf[2:] for leaf in a.batch_leaves(b"a1")] == [(1, 0), (2, 1)]     # b's row between is not a leaf
    assert [m.seq for m in a.unbatched(10)] == [3] and [m.seq for m in b.unbatched(10)] == [1]


EARLIER_LAYOUT = """
CREATE TABLE blobs (hash BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, frame_hash BLOB NOT NULL, device BLOB NOT NULL, seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL, topic TEXT NOT NULL, received_ms INTEGER NOT NULL, batch BLOB, leaf INTEGER,
    owner TEXT NOT NULL DEFAULT '');
CREATE INDEX messages_batch ON messages (batch, leaf);
CREATE UNIQUE INDEX messages_device_seq ON messages (device, seq);
CREATE TABLE batches (
    id BLOB PRIMARY KEY, root BLOB NOT NULL, count INTEGER NOT NULL, tx BLOB NOT NULL,
    status TEXT NOT NULL, created_ms INTEGER NOT NULL, proof BLOB, owner TEXT NOT NULL DEFAULT '');
"""


def test_a_store_of_the_earlier_layout_is_carried_on(tmp_path):
    path = tmp_path / "gw.db"
    con = sqlite3.connect(path)
    con.executescript(EARLIER_LAYOUT)
    old = [row(DEVICES[0], seq) for seq in (1, 2, 3)] + [row(DEVICES[1], 7)]
    for i, (frame, dev, seq, t, topic, received, h) in enumerate(old):
        con.execute("INSERT INTO blobs VALUES (?, ?)", (h, frame))
        con.execute("INSERT INTO messages (frame_hash, device, seq, time_ms, topic, received_ms, batch, leaf, owner) "
                    "VALUES (?,?,?,?,?,?,?,?,'gw')", (h, dev, seq, t, topic, received, b"old" if i < 2 else None,
                                                      i if i < 2 else None))
    con.execute("INSERT INTO batches VALUES (?,?,?,?,?,?,?,?)", (b"old", b"r" * 32, 2, b"tx", "anchored", 1, None, "gw"))
    con.commit()
    con.close()

    s = Store(path, "gw")
    assert s.highest_seqs() == {DEVICES[0]: 3, DEVICES[1]: 7}
    assert [leaf[2:] for leaf in s.batch_leaves(b"old")] == [(1, 0), (2, 1)]
    assert [m.seq for m in s.unbatched(10)] == [3, 7]
    assert all(s.blob(r[6]) == r[0] for r in old)                   # from the earlier blobs table
    # every seq up to the highest counts as taken; the next ones are stored as usual
    elsewhere: list[tuple[int, bool]] = []
    new = [row(DEVICES[0], 2, tag=1), row(DEVICES[0], 4), row(DEVICES[1], 8)]
    s.write_many(new, stored_elsewhere=elsewhere)
    assert elsewhere == [(0, False)] and s.blob(new[1][6]) == new[1][0]
    s.create_batch(b"new", b"r" * 32, b"tx", [m.id for m in s.unbatched(10)], 5)
    assert [leaf[2] for leaf in s.batch_leaves(b"new")] == [3, 7, 4, 8]
    indexes = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "messages_device_seq" not in indexes and "messages_batch" not in indexes
    s.close()
    assert Store(path, "gw").highest_seqs() == {DEVICES[0]: 4, DEVICES[1]: 8}


def test_frames_whose_hashes_share_the_indexed_prefix_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "FRAME_PREFIX", 1)          # 300 frames, 256 prefixes: many shared
    monkeypatch.setattr(store_module, "FRAME_INDEX_STEP", 1)
    path = tmp_path / "site.db"
    a = Store(path, "a")
    rows = [row(DEVICES[i % 3], i // 3 + 1) for i in range(300)]
    a.write_many(rows)
    a.create_batch(b"b", b"r" * 32, b"tx", [m.id for m in a.unbatched(300)], 5)
    prefixes = [r[6][:1] for r in rows]
    assert len(set(prefixes)) < len(prefixes)
    assert a.reader.execute("SELECT COUNT(*) FROM frames.frame_index").fetchone()[0] == 300
    assert all(a.blob(r[6]) == r[0] for r in rows)
    missing = next(h for h in (hashlib.sha256(b"x%d" % i).digest() for i in range(1000)) if h[:1] in prefixes)
    assert a.blob(missing) is None
    elsewhere: list[tuple[int, bool]] = []
    Store(path, "b").write_many([rows[5], row(rows[7][1], rows[7][2], tag=1)], stored_elsewhere=elsewhere)
    assert elsewhere == [(0, True), (1, False)]


def test_the_frame_index_has_its_own_file_and_write_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "FRAME_INDEX_STEP", 2)
    path = tmp_path / "gw.db"
    s = Store(path, "a")
    rows = [row(DEVICES[0], seq) for seq in range(1, 7)]
    s.write_many(rows[:3])
    s.create_batch(b"b1", b"r" * 32, b"tx", [m.id for m in s.unbatched(3)], 5)
    assert s.reader.execute("SELECT COUNT(*) FROM frames.frame_index").fetchone()[0] == 3
    assert not s.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'frame_index'").fetchone()
    # a transaction on the index file (another process extending it) does not hold up group commits
    blocker = sqlite3.connect(str(path) + "-frames", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    s.db.execute("PRAGMA busy_timeout = 100")
    s.write_many(rows[3:5])
    assert s.blob(rows[4][6]) == rows[4][0]
    blocker.execute("ROLLBACK")
    blocker.close()
    s.close()
    # the index file lost: frames are still found (the scan past the mark), and the next step rebuilds it
    for suffix in ("-frames", "-frames-wal", "-frames-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    s = Store(path, "a")
    assert all(s.blob(r[6]) == r[0] for r in rows[:5])
    s.write_many(rows[5:])
    s.create_batch(b"b2", b"r" * 32, b"tx", [m.id for m in s.unbatched(3)], 6)
    assert s.reader.execute("SELECT COUNT(*) FROM frames.frame_index").fetchone()[0] == 6
    assert all(s.blob(r[6]) == r[0] for r in rows)


def test_an_index_file_ahead_of_a_restored_store_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "FRAME_INDEX_STEP", 2)
    path = tmp_path / "gw.db"
    s = Store(path, "a")
    s.write_many([row(DEVICES[0], 1)])
    s.close()
    copy = (path.read_bytes(), Path(str(path) + "-wal").read_bytes() if Path(str(path) + "-wal").exists() else b"")
    s = Store(path, "a")
    s.write_many([row(DEVICES[0], seq) for seq in (2, 3, 4)])
    s.create_batch(b"b1", b"r" * 32, b"tx", [m.id for m in s.unbatched(10)], 5)
    assert s.reader.execute("SELECT COUNT(*) FROM frames.frame_index").fetchone()[0] == 4
    s.close()
    path.write_bytes(copy[0])                                       # the store restored, its index not
    Path(str(path) + "-wal").write_bytes(copy[1])
    Path(str(path) + "-shm").unlink(missing_ok=True)
    s = Store(path, "a")
    assert s.reader.execute("SELECT COUNT(*) FROM frames.frame_index").fetchone()[0] == 0
    other = [row(DEVICES[1], seq) for seq in (1, 2, 3)]             # new messages take the ids again
    s.write_many(other)
    assert all(s.blob(r[6]) == r[0] for r in other)


def test_chain_frames_keyed_by_frame_hash_are_moved_to_the_device_seq_layout(tmp_path):
    path = tmp_path / "gw.db"
    s = Store(path, "gw")
    rows = [row(DEVICES[0], seq) for seq in (1, 2)] + [row(DEVICES[1], 5)]
    s.write_many(rows)
    s.db.execute("DROP TABLE chain_frames")                          # the layout before (device, seq) keys
    s.db.execute("CREATE TABLE chain_frames (frame_hash BLOB PRIMARY KEY, statement BLOB NOT NULL) WITHOUT ROWID")
    s.db.executemany("INSERT INTO chain_frames VALUES (?, ?)", [(r[6], b"s" * 32) for r in rows[:2]])
    s.close()
    s = Store(path, "gw")
    assert [s.covering(r[6]) for r in rows] == [b"s" * 32, b"s" * 32, None]
    assert [r[1] for r in s.db.execute("PRAGMA table_info(chain_frames)")][:2] == ["device", "seq"]
    s.write_many(chain_frames=[(b"t" * 32, [(DEVICES[1], 5, rows[2][6])])])
    assert s.covering(rows[2][6]) == b"t" * 32


def test_anchored_by_hash_agrees_with_the_message_and_its_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "FRAME_INDEX_STEP", 4)
    path = tmp_path / "site.db"
    a, b = Store(path, "a"), Store(path, "b")
    for seq in range(1, 7):
        a.write_many([row(DEVICES[0], seq)])
        b.write_many([row(DEVICES[1], seq)])
    for store, name, n in ((a, b"a1", 2), (b, b"b1", 3), (a, b"a2", 2), (b, b"b2", 1), (a, b"a3", 1)):
        store.create_batch(name, b"r" * 32, b"tx", [m.id for m in store.unbatched(n)], 5)
    for store, name in ((a, b"a1"), (b, b"b2"), (a, b"a3")):
        store.set_batch_status(name, "anchored", b"proof")
    assert 0 < a.reader.execute("SELECT COUNT(*) FROM frames.frame_index").fetchone()[0] < 12   # indexed and not
    messages = [a.message_by_hash(r[6]) for r in [row(DEVICES[0], s) for s in range(1, 7)]
                + [row(DEVICES[1], s) for s in range(1, 7)]]
    found = []
    for m in messages:
        assert m is not None
        expected = a.anchored_batch_of(m) is not None
        found.append(expected)
        for after in range(0, m.id):
            assert a.anchored_by_hash(m.frame_hash, after) is expected
            assert b.anchored_by_hash(m.frame_hash, after) is expected
    assert True in found and False in found
    assert not a.anchored_by_hash(hashlib.sha256(b"other").digest(), 0)
