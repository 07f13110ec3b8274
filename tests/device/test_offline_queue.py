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
