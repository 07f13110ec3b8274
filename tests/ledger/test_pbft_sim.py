"""1,000 seeded adversarial PBFT schedules: safety and liveness invariants hold on every one.

A failing seed replays exactly: ``python3 -m ledgerlink.ledger.consensus.simulator --seed N``.
"""

import pytest

from ledgerlink.ledger.consensus.simulator import run_seed


@pytest.mark.parametrize("start", range(0, 1000, 50))
def test_seeded_schedules(start):
    failures = {}
    for seed in range(start, start + 50):
        result = run_seed(seed)
        if not result.ok:
            failures[seed] = result.violations
    assert not failures, failures


# seeds that once failed, each with what failed
REGRESSIONS = {
    2951: "liveness: the primary of view 1 moved on to a view change to 2 and stopped re-sending its view-1 "
          "new-view, so the two replicas that missed it waited in their view change to 1 below quorum",
}


@pytest.mark.parametrize("seed", sorted(REGRESSIONS))
def test_seeds_that_once_failed(seed):
    result = run_seed(seed)
    assert result.ok, (REGRESSIONS[seed], result.violations)


def test_an_honest_primary_under_load_keeps_its_view():
    """Transactions offered above what the replicas can execute (1 ms of CPU each, charged by the
    cost model, so the primary's share of each block grows with the batch like everyone's): the pool
    fills, blocks are full, and no backup demands a view change from the honest primary."""
    from ledgerlink.ledger.consensus.simulator import Costs, Scenario, Simulation
    sc = Scenario(n=4, faults={}, drop=0.0, dup=0.0, delay=(2, 10), partitions=[], down={}, heal_ms=300,
                  txs=[(0, 1)], replays=[])
    sim = Simulation(0, scenario=sc, config_overrides={"max_batch": 32, "view_change_timeout_ms": 1000},
                     costs=Costs(execute_per_tx=1.0), stream=(400, 3000))
    result = sim.run()
    assert result.ok, result.violations
    reps = [n.replicas[0] for n in sim.nodes]
    assert [r.view for r in reps] == [0, 0, 0, 0]
    assert not any(r.slow_primary_demands for r in reps)
    assert max(len(r.block(h)[0].txs) for r in reps[:1] for h in range(r.height + 1)) == 32   # saturated
