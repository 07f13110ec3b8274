"""The scale table (ledgerlink.ledger.scale) run small: its columns agree with each other and with
PBFT's message pattern, and every replica of the simulation commits the same chain."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings, strategies as st

from ledgerlink.ledger import scale

MIN_MESSAGE_BYTES = 66          # any consensus message carries a 64-byte signature and CBOR heads


def _rows(output: str, label: str) -> dict[int, dict[str, str]]:
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] == label:
            rows[int(cells[1])] = dict(zip(scale.COLUMNS, cells))
    return rows


def test_table_columns_are_consistent():
    out = subprocess.run([sys.executable, "-m", "ledgerlink.ledger.scale", "--sizes", "4,7", "--blocks", "2",
                          "--rounds", "2", "--network", "lan"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "CHAINS DIFFER" not in out.stdout
    rows = _rows(out.stdout, "sim-lan")
    assert sorted(rows) == [4, 7]
    for n, r in rows.items():
        msgs, phase = float(r["msgs/blk"]), float(r["3phase/blk"])
        # pre-prepare to n-1, prepares from n-1 backups to n-1, commits from n to n-1
        assert 2 * n * (n - 1) <= phase <= 1.5 * 2 * n * (n - 1)
        assert phase <= msgs <= phase + 2 * (n - 1)          # plus the forwarded request
        assert float(r["KB/blk"]) * 1024 > msgs * MIN_MESSAGE_BYTES
        assert float(r["lat_p99_ms"]) >= float(r["lat_p50_ms"]) > 3 * scale.ONE_WAY_MS["lan"]
        assert float(r["cpu_ms/blk/rep"]) > float(r["verif_ms/blk/rep"]) > 0
        assert float(r["verif/blk/rep"]) >= 2 * ((n - 1) // 3)       # at least the 2f prepares it needs
        assert r["view"] == "0"
    growth = float(rows[7]["msgs/blk"]) / float(rows[4]["msgs/blk"])
    assert 0.75 < growth / (7 * 6 / (4 * 3)) < 1.33                 # ~N^2
    ratio = float(rows[7]["lat_p50_ms"]) / float(rows[4]["lat_p50_ms"])
    assert abs(float(rows[7]["ratio_vs_4"]) - ratio) <= 0.01 + ratio * 0.01
    assert rows[4]["ratio_vs_4"] == "1.00"
    assert "sim-lan: latency(7)/latency(4) = %s" % rows[7]["ratio_vs_4"] in out.stdout


def test_wan_latency_holds_the_network_delays():
    row = scale.simulate(4, "wan", blocks=2, seed=1)
    # request to the primary (unless submitted there), pre-prepare, prepare, commit: three or four one-way delays
    assert min(row.latencies_ms) >= 3 * scale.ONE_WAY_MS["wan"]
    assert row.latency_p50_ms < 4 * scale.ONE_WAY_MS["wan"] + 50


def test_uplink_serializes_each_copy_in_turn():
    sim = scale.ScaleSimulation(4, "wan", seed=0)
    size = int(scale.BANDWIDTH_MBIT_S * 1000 / 8)        # bytes the uplink carries in 1 ms
    data = bytes([0x85, 3]) + bytes(size - 2)
    sim._send(0, [1, 2, 3], data, at=5.0)
    sim._send(0, [2], data, at=5.5)                       # waits behind the broadcast's copies
    arrivals = sorted((t, dst) for t, _, _, (_, dst, _) in sim.queue)
    one_way = scale.ONE_WAY_MS["wan"]
    assert [(round(t - one_way, 6), d) for t, d in arrivals] == [(6.0, 1), (7.0, 2), (8.0, 3), (9.0, 2)]
    assert (sim.messages, sim.bytes, sim.phase_messages) == (4, 4 * size, 4)
    unlimited = scale.ScaleSimulation(4, "lan", seed=0, bandwidth_mbit_s=0)
    unlimited._send(0, [1, 2, 3], data, at=5.0)
    assert {t for t, *_ in unlimited.queue} == {5.0 + scale.ONE_WAY_MS["lan"]}


def test_node_cpu_runs_handlers_in_turn_for_their_measured_time(monkeypatch):
    """Two messages reach a node at once: the second waits for the first's CPU time, and each one's
    effects (here a broadcast) leave when its handler is done."""
    clock = [0]
    monkeypatch.setattr(scale.time, "thread_time_ns", lambda: clock[0])
    sim = scale.ScaleSimulation(4, "lan", seed=0, bandwidth_mbit_s=0)

    class TwoMsReplica:
        def receive(self, sender, data, now_ms):
            clock[0] += 2_000_000
            return [scale.Broadcast(b"\x85\x03" + data)]

    sim.nodes[1].replica = TwoMsReplica()
    sim._enqueue(1, (scale._DELIVER, (0, b"a")))
    sim._enqueue(1, (scale._DELIVER, (2, b"b")))
    delivered = []
    while sim.queue:
        t, _, kind, data = scale.heapq.heappop(sim.queue)
        sim.now = t
        if kind == scale._WAKE:
            sim._run_handler(data)
        else:
            delivered.append((t, data[0], data[1], data[2][2:]))
    lan = scale.ONE_WAY_MS["lan"]
    assert delivered == [(2.0 + lan, 1, d, b"a") for d in (2, 3, 0)] + [(4.0 + lan, 1, d, b"b") for d in (2, 3, 0)]
    assert sim.nodes[1].cpu_ns == 4_000_000 and sim.nodes[1].cpu_free_ms == 4.0


@settings(max_examples=4, deadline=None)
@given(n=st.sampled_from([4, 7]), network=st.sampled_from(sorted(scale.ONE_WAY_MS)), seed=st.integers(0, 1000))
def test_replicas_commit_identical_chains(n, network, seed):
    row = scale.simulate(n, network, blocks=2, seed=seed)
    assert len(row.chains) == n
    assert all(len(c) == 3 for c in row.chains)
    assert all(c == row.chains[0] for c in row.chains)
    assert len(row.latencies_ms) == 2 * n
    f = (n - 1) // 3
    per_replica = {k: v / row.blocks / n for k, v in row.verifies_by_kind.items()}
    # the votes a quorum needs besides its own: 2f commits; 2f prepares (2f-1 for a backup, which prepares itself)
    assert 2 * f <= per_replica["commit"] <= 2 * f + 1
    assert 2 * f - 1 <= per_replica["prepare"] <= 2 * f + 1
    pooled = scale.combine([row, scale.simulate(n, network, blocks=1, seed=seed + 1)])
    assert pooled.blocks == 3 and len(pooled.latencies_ms) == 3 * n
    assert pooled.chains_identical and len(pooled.chains[0]) == 5


def test_a_replica_verifies_only_the_votes_a_quorum_needs():
    """At N=10 every prepare used to be verified (about n-1 a block and replica, 8.1): now the 2f that
    prepare a block, and 2f commits; later votes for the block are dropped before the signature check."""
    n = 10
    f = (n - 1) // 3
    row = scale.simulate(n, "lan", blocks=2, seed=3)
    assert row.chains_identical and len(row.chains[0]) == 3
    per_replica = {k: v / row.blocks / n for k, v in row.verifies_by_kind.items()}
    # at most one vote beyond the quorum's (votes logged before the replica's own): 8.1 prepares before
    assert per_replica["prepare"] <= 2 * f + 1, per_replica
    assert per_replica["commit"] <= 2 * f + 1, per_replica
    assert row.drops["prepared already"] > 0 and row.drops["stale height"] > 0


def test_forwarded_transactions_reach_the_primary_first():
    """A validator that takes client transactions sends its request to the primary before the other
    validators: at N=100 the last of 99 copies leaves about 11 ms after the first."""
    sim = scale.ScaleSimulation(7, "lan", seed=0)
    submitter = 3
    effects = sim.nodes[submitter].replica.submit_many(
        [scale.make_tx(sim.backend, sim.client_key, bytes(15) + b"\x01", b"k", b"v")], 0)
    requests = [e for e in effects if isinstance(e, scale.Broadcast)]
    assert len(requests) == 1 and requests[0].first == sim.config.primary(0) == 0
    sim._effects(submitter, requests, 5.0)
    arrivals = sorted((t, dst) for t, _, _, (_, dst, _) in sim.queue)
    assert [d for _, d in arrivals] == [0, 4, 5, 6, 1, 2]
