"""A 4-node cluster as real processes: every block gets a threshold certificate, a follower checks the
chain with one verification per header, and certificates continue after one node is SIGKILLed."""

import itertools
import json
import os
import stat
import time

import pytest

from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.protocol import spv
from tests.backends import CountingBackend

_batch = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("tcluster"), threshold=True) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    cl = LedgerClient(cluster.config_path)
    yield cl
    cl.close()


def anchors(cluster, n):
    gw = cluster.key("gateway")
    now = int(time.time() * 1000)
    return [enc.anchor_tx(cluster.config.chain_id, gw, next(_batch), os.urandom(32), 3, now) for _ in range(n)]


def group_key(cluster):
    genesis = json.loads(cluster.config_path.read_text())["genesis"]
    return bytes.fromhex(genesis["group_key"])


def follow(cluster, client, node, start, top, timeout=20.0):
    """Check headers start..top from ``node`` by their threshold certificates alone (one FROST verify
    each) and their links; return the last header."""
    keys = list(cluster.config.validators)
    gk = group_key(cluster)
    previous = None
    for height in range(start, top + 1):
        deadline = time.monotonic() + timeout
        while True:
            answer = client.request_to(node, "header", height=height)
            if answer.get("threshold_header") is not None:
                break
            assert time.monotonic() < deadline, "no threshold certificate at %d" % height
            time.sleep(0.05)
        header = spv.verify_certified_header(answer["threshold_header"], cluster.config.chain_id, keys,
                                             group_key=gk)
        assert len(answer["threshold_header"][1]) == 2               # [view, signature], not the vote list
        if previous is not None:
            spv.verify_header_link(previous, header)
        previous = header
    return previous


def test_shares_are_owner_only_and_the_genesis_holds_the_group_key(cluster):
    for i in range(cluster.config.n):
        mode = stat.S_IMODE(os.stat(cluster.data_dir / "keys" / ("validator%d.share" % i)).st_mode)
        assert mode == 0o600
    assert len(group_key(cluster)) == 33
    with LedgerClient(cluster.config_path) as cl:
        assert cl.validators()["group_key"] == group_key(cluster)
    for i in range(cluster.config.n):
        log = (cluster.data_dir / ("node%d.log" % i)).read_text()
        share = (cluster.data_dir / "keys" / ("validator%d.share" % i)).read_text().strip()
        assert share not in log


def test_follower_checks_threshold_certificates_and_they_continue_after_a_sigkill(cluster, client):
    results = client.submit_many(anchors(cluster, 10))
    assert all(r["status"] == "committed" for r in results)
    top = max(r["height"] for r in results)
    last = follow(cluster, client, 0, 0, top)
    cluster.kill_node(3)
    results = client.submit_many(anchors(cluster, 10), wait_ms=20000)
    assert all(r["status"] == "committed" for r in results)
    new_top = max(r["height"] for r in results)
    assert new_top > top
    header = follow(cluster, client, 1, top + 1, new_top)
    assert header.height == new_top and last.height == top


def test_gateway_follows_the_chain_with_one_frost_verification_per_header(cluster, client):
    from ledgerlink.gateway.checks import GatewayCore, GatewayKeys
    from ledgerlink.gateway.mqtt_adapter import served_header

    results = client.submit_many(anchors(cluster, 4))
    top = max(r["height"] for r in results)
    key = cluster.key("gateway")
    backend = CountingBackend()
    core = GatewayCore("site", GatewayKeys(key, key, key), cluster.config.chain_id, list(cluster.config.validators),
                       backend=backend, group_key=group_key(cluster))
    votes = GatewayCore("site", GatewayKeys(key, key, key), cluster.config.chain_id, list(cluster.config.validators),
                        backend=CountingBackend(), group_key=group_key(cluster))
    votes_only = votes.group_key
    votes.group_key = None                      # chooses the 2f+1-vote header, still checked with the group key
    for height in range(top + 1):
        deadline = time.monotonic() + 20
        while True:
            res = client.request_to(0, "block", height=height)
            if res.get("threshold_header") is not None:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert core.check_block(served_header(core, res), res["txs"]).height == height
        certified = served_header(votes, res)
        votes.group_key = votes_only
        assert votes.check_block(certified, res["txs"]).height == height
        votes.group_key = None
    assert backend.verifies == 0                # no ES256 vote checked: one FROST verification a header
    assert votes.crypto.verifies >= 3 * (top + 1)
