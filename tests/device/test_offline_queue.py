"""Offline queue: FIFO order, durability across reopen and a crashed writer, the bound and its drop count."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings, strategies as st

from ledgerlink.device.offline_queue import OfflineQueue


def drain(q: OfflineQueue) -> list:
    out = []
    while True:
        head = q.peek()
        if not head:
            return out
        out.append((head[0].topic, head[0].payload, head[0].seq))
        q.remove(head[0].id)


def test_fifo_and_reopen_after_close(tmp_path):
    path = tmp_path / "q.db"
    q = OfflineQueue(path, max_frames=100)
    frames = [("ll/s/dev/a/up", bytes([i]) * (i + 1), i + 1) for i in range(10)]
    for f in frames:
        q.put(*f)
    q.put("ll/s/dev/a/reg", b"reg", None)
    q.close()
    q = OfflineQueue(path, max_frames=100)
    assert len(q) == 11
    assert [f.seq for f in q.peek(3)] == [1, 2, 3]
    assert drain(q) == frames + [("ll/s/dev/a/reg", b"reg", None)]
    q.close()
    assert len(OfflineQueue(path)) == 0


def test_bound_drops_oldest_and_counts(tmp_path):
    path = tmp_path / "q.db"
    q = OfflineQueue(path, max_frames=5)
    for seq in range(1, 13):
        q.put("t", b"x%d" % seq, seq)
        assert len(q) == min(seq, 5)
    assert q.dropped == 7
    q.close()
    q = OfflineQueue(path, max_frames=5)
    assert q.dropped == 7
    assert [s for _, _, s in drain(q)] == [8, 9, 10, 11, 12]
    q.close()


def test_put_is_durable_when_the_writer_dies(tmp_path):
    path = tmp_path / "q.db"
    code = ("import os; from ledgerlink.device.offline_queue import OfflineQueue\n"
            "q = OfflineQueue(%r)\n"
            "[q.put('t', b'f%%d' %% i, i) for i in range(1, 21)]\n"
            "os._exit(9)\n" % str(path))
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == 9
    q = OfflineQueue(path)
    assert [s for _, _, s in drain(q)] == list(range(1, 21))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.lists(st.one_of(st.binary(max_size=40), st.none()), max_size=25))
def test_queue_model(bound, ops):
    """Against a list model: a payload is put, None removes the head."""
    q = OfflineQueue(":memory:", max_frames=bound)
    model: list = []
    dropped = 0
    for i, op in enumerate(ops):
        if op is None:
            head = q.peek()
            assert [h.payload for h in head] == model[:1]
            if head:
                q.remove(head[0].id)
                model.pop(0)
        else:
            q.put("t", op, i + 1)
            model.append(op)
            if len(model) > bound:
                model.pop(0)
                dropped += 1
    assert [p for _, p, _ in drain(q)] == model
    assert q.dropped == dropped


def test_stored_frames_await_their_receipts_across_reopen(tmp_path):
    path = tmp_path / "q.db"
    q = OfflineQueue(path, max_frames=3, max_receipts=2)
    for seq in range(1, 4):
        q.put("ll/s/dev/a/up", b"f%d" % seq, seq)
    q.put("ll/s/dev/a/reg", b"reg", None)                    # the oldest reading is dropped: full
    frames = q.peek(3)
    assert [f.seq for f in frames] == [2, 3, None] and q.dropped == 1
    for f in frames:
        q.stored(f, 1000 + (f.seq or 0))
    q.refuse(q.put("t", b"bad", 9))
    q.close()
    q = OfflineQueue(path, max_frames=3, max_receipts=2)
    assert len(q) == 0 and q.awaiting_count() == 2 and q.refused == 1     # the registration awaits no receipt
    a = q.awaiting(seq=2)
    assert a is not None and a.payload == b"f2" and q.awaiting(frames[1].hash).seq == 3
    assert [x.seq for x in q.due_for_asking(1100, 50, 16)] == [2, 3]
    q.asked([a.hash], 1100)
    assert [x.seq for x in q.due_for_asking(1120, 50, 16)] == [3]         # asked again only later
    assert [x.seq for x in q.due_for_asking(1300, 50, 16)] == [2, 3]
    assert q.not_stored(a.hash) and [f.seq for f in q.peek(5)] == [2] and q.awaiting_count() == 1
    q.receipt_received(frames[1].hash, 3, b"r3")
    for seq in (10, 11):
        q.receipt_received(bytes([seq]) * 32, seq, b"r%d" % seq)
    q.close()
    q = OfflineQueue(path, max_frames=3, max_receipts=2)
    assert q.awaiting_count() == 0 and q.receipt(seq=3) is None            # the oldest receipt made room
    assert q.receipt(bytes([11]) * 32) == b"r11" and q.receipt(seq=10) == b"r10"
