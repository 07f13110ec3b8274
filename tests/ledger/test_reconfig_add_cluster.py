"""A 4-node site on real processes grows to 5: a new validator (new key, new index, an address the
running nodes learn from their operator's peers file) catches up by state transfer and votes from H;
then an old node is killed for good and the site keeps committing, which needs the new node's vote
(4 of 5). A light client follows the change with its proof."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster, free_base_port, write_key
from ledgerlink.ledger.transport import CLIENT_PORT_OFFSET, ClusterConfig, NodeAddress
from ledgerlink.protocol import spv, validator_set
from ledgerlink.protocol.validator_set import TrustedSet
from ledgerlink.tools import admin
from tests.ledger.test_reconfig_cluster import heights, keep_committing

CRYPTO = get_backend("cpython")


@pytest.mark.slow
def test_an_added_validator_joins_a_running_site_and_its_vote_carries_it(tmp_path):
    cluster = LocalCluster(tmp_path / "site", consensus={"view_change_timeout_ms": 800})
    cluster.start()
    client = LedgerClient(cluster.config_path, timeout=3.0)
    five = None
    try:
        chain = cluster.config.chain_id
        old = list(cluster.config.validators)
        keys_dir = cluster.data_dir / "keys"
        new_priv = CRYPTO.generate_private_key()
        new_key_file = keys_dir / "validator4.key"
        write_key(new_key_file, new_priv)
        new_pub = CRYPTO.public_key(new_priv, True)
        port = free_base_port(1)
        address = "127.0.0.1:%d:%d" % (port, port + CLIENT_PORT_OFFSET)

        start = max(keep_committing(cluster, client, [0, 1, 2, 3], 1))
        effective = start + 4
        change = ["--add", new_pub.hex(), "--add-address", address, "--height", str(effective)]
        code = admin.main(["--cluster", str(cluster.config_path), "set-change"] + change
                          + sum((["--approve-key", str(keys_dir / ("validator%d.key" % i))] for i in range(3)), []))
        assert code == 0
        peers = json.loads((cluster.data_dir / "peers.json").read_text())
        assert peers[new_pub.hex()] == {"host": "127.0.0.1", "peer_port": port, "client_port": port + 1000}

        # the new node: the chain's genesis config, its own key, its address from the same peers file
        log = open(cluster.data_dir / "node4.log", "ab")
        cluster.procs[4] = subprocess.Popen(
            [sys.executable, "-m", "ledgerlink.ledger.node", "--config", str(cluster.config_path), "--index", "4",
             "--data", str(cluster.data_dir / "node4"), "--key", str(new_key_file), "--log-level", "INFO"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        config5 = ClusterConfig.load(cluster.config_path)
        config5.nodes.append(NodeAddress(4, "127.0.0.1", port, port + CLIENT_PORT_OFFSET, new_pub))
        cluster.config = config5
        cluster.wait_ready(30.0, [4])
        five = LedgerClient(config5, timeout=3.0)

        keep_committing(cluster, client, [0, 1, 2, 3], effective + 2)
        caught_up = keep_committing(cluster, five, [0, 1, 2, 3, 4], effective + 4, timeout=90.0)
        for i in range(5):
            info = five.request_to(i, "validators")
            assert [bytes(k) for _, k in info["validators"]] == old + [new_pub], i
            assert info["f"] == 1

        cluster.kill_node(1)                                          # lost for good: 4 of 5 left, quorum 4
        top = keep_committing(cluster, five, [0, 2, 3, 4], max(caught_up) + 4, timeout=90.0)
        assert heights(five, [1]) == [-1]

        trusted = validator_set.follow_set_change_proof(TrustedSet(chain, old),
                                                        client.request_to(0, "set_change", epoch=1)["proof"])
        assert trusted.keys == old + [new_pub] and trusted.from_height == effective
        header = spv.verify_certified_header(five.request_to(4, "header", height=min(top))["certified_header"],
                                             chain, trusted.keys)
        assert header.height > max(caught_up) and header.validators_hash == validator_set.set_hash(trusted.keys)
        with pytest.raises(spv.InvalidProof):
            spv.verify_certified_header(five.request_to(0, "latest")["certified_header"], chain, old)
        assert admin.main(["--cluster", str(cluster.config_path), "follow-set"]) == 0
    finally:
        client.close()
        if five is not None:
            five.close()
        cluster.stop()
