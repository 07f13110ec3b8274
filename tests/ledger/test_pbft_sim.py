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
