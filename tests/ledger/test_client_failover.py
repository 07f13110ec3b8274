"""The ledger client with one node of a real 4-node cluster stopped (SIGSTOP): the node accepts
connections (the kernel does) and answers nothing, and the client still answers reads and submits
well within its 5 s read and 15 s submit timeouts, and afterwards asks the other nodes first."""

import os
import signal
import time

import pytest

from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.state import encoding as enc

from tests.ledger.test_node_cluster import cluster  # noqa: F401 - the module's 4-node cluster fixture

READ_WITHIN_S = 2.0          # hedged after 0.5 s; the timeout it must not wait for is 5 s
SUBMIT_WITHIN_S = 4.0        # its node probed after 0.5 s for 0.5 s, then one commit; the timeout is 15 s


def anchor(cluster, batch_id):
    return enc.anchor_tx(cluster.config.chain_id, cluster.key("gateway"), batch_id, os.urandom(32), 3,
                         int(time.time() * 1000))


def timed(call, *args):
    t0 = time.monotonic()
    res = call(*args)
    return res, time.monotonic() - t0


@pytest.mark.slow
def test_stopped_node_is_passed_over_for_reads_and_submits(cluster):
    probe = LedgerClient(cluster.config_path)
    primary = probe.info()["primary"]
    probe.close()
    victim = next(i for i in (1, 2, 3, 0) if i != primary)       # a backup: the others go on committing
    with LedgerClient(cluster.config_path, prefer=victim) as client:
        assert client.request_to(victim, "info")["ok"]          # an open, used connection to the victim
        pid = cluster.procs[victim].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            info, took = timed(client.info)
            assert info["ok"] and took < READ_WITHIN_S, took

            res, took = timed(client.submit, anchor(cluster, 1))
            assert res["status"] == "committed" and res["code"] == 0, res
            assert took < SUBMIT_WITHIN_S, took

            # the stopped node is remembered as slow: five more reads do not wait for it again
            t0 = time.monotonic()
            for _ in range(5):
                assert client.info()["ok"]
            assert time.monotonic() - t0 < 5 * 0.5, "a read waited for the stopped node again"

            results, took = timed(client.submit_many, [anchor(cluster, 2), anchor(cluster, 3)])
            assert [r["status"] for r in results] == ["committed", "committed"], results
            assert took < SUBMIT_WITHIN_S, took
        finally:
            os.kill(pid, signal.SIGCONT)


@pytest.mark.slow
def test_stopped_node_first_for_a_submit_commits_once(cluster):
    """A submit asked of the stopped node and then of another: committed once, and the stopped node,
    continued, answers the same transaction with where it was committed."""
    probe = LedgerClient(cluster.config_path)
    primary = probe.info()["primary"]
    probe.close()
    victim = next(i for i in (3, 2, 1, 0) if i != primary)
    tx = anchor(cluster, 4)
    with LedgerClient(cluster.config_path, prefer=victim) as client:
        assert client.request_to(victim, "info")["ok"]
        pid = cluster.procs[victim].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            res, took = timed(client.submit, tx)
            assert res["status"] == "committed" and took < SUBMIT_WITHIN_S, (res, took)
        finally:
            os.kill(pid, signal.SIGCONT)
        again = client.request_to(victim, "submit", timeout=15.0, tx=tx, wait_ms=10000)
        assert again["status"] == "committed", again
        assert (again["height"], again["index"]) == (res["height"], res["index"])
