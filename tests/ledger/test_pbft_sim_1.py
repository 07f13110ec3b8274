"""Seeded adversarial PBFT schedules 250..499: safety and liveness invariants hold."""

import pytest

from ledgerlink.ledger.consensus.simulator import run_seed

BASE = 250


@pytest.mark.parametrize("start", range(BASE, BASE + 250, 50))
def test_seeded_schedules(start):
    failures = {}
    for seed in range(start, start + 50):
        result = run_seed(seed)
        if not result.ok:
            failures[seed] = result.violations
        assert max(result.heights) >= 0
    assert not failures, failures
