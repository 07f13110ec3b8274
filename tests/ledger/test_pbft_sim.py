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
