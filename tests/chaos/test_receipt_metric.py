"""What ``chaos`` reports as the first new receipt after a gateway restart: from the supervisor's start of
the process to the first receipt a device checked for a reading that this new process stored. Receipts the
other gateway sent meanwhile, and those of readings stored before the restart, do not count (the first
version of the metric took any receipt checked after the restart, so with two gateways it mostly timed the
other one)."""

import sqlite3
import time

from ledgerlink.tools.chaos import Chaos, GatewayRestart


def _store(path, rows):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, frame_hash BLOB, owner TEXT, received_ms INTEGER)")
    con.execute("CREATE TABLE batches (owner TEXT, first_id INTEGER, last_id INTEGER, created_ms INTEGER)")
    con.executemany("INSERT INTO messages (frame_hash, owner, received_ms) VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()


def test_only_a_reading_the_restarted_process_stored_counts(tmp_path):
    t = time.time() - 100
    _store(tmp_path / "gw.db", [
        (b"old", "ll-gw-chaos-2", int((t - 1) * 1000)),       # stored by gateway 2 before it was killed
        (b"other", "ll-gw-chaos-1", int((t + 0.1) * 1000)),   # the other gateway, serving on
        (b"new", "ll-gw-chaos-2", int((t + 3.0) * 1000)),     # the restarted gateway's first reading
    ])
    c = Chaos(0, tmp_path, 1, 1.0, 0, None, lambda line: None)
    c.gateway_restarts = [GatewayRestart(2, t, t - 1.2, 0), GatewayRestart(1, t + 50, None, 0)]
    c.gateway_exits = {1: [t + 51]}                             # gateway 1 killed again before storing anything
    c._receipts_after_restarts(tmp_path / "gw.db", {b"old": t + 0.2, b"other": t + 0.3, b"new": t + 3.5})
    assert [round(x, 3) for x in c.result.receipt_after_restart_s] == [3.5]
    assert c.result.restarts_interrupted == 1
    assert "first new reading stored +3.00 s" in c.result.timelines[0] and "killed -1.20 s" in c.result.timelines[0]
