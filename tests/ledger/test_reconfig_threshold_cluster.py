"""A 4-node site with threshold headers (FROST) on real processes replaces a validator killed for good
and keeps its threshold headers: the new set runs the DKG (``admin set-dkg``), the change carries its
group key, each node takes its new share at the switch, certificates under the new key continue from
the effective height (also with a node restored across the change signing), and a device that holds
the old group key follows the change with its proof and checks receipts before and after it with one
FROST verification each."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from ledgerlink.core import cbor, frost
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidMessage, InvalidProof
from ledgerlink.gateway.batcher import Batcher
from ledgerlink.gateway.store import Store
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster
from ledgerlink.ledger.consensus.reconfig import share_path
from ledgerlink.protocol import spv, validator_set
from ledgerlink.protocol.validator_set import TrustedSet
from ledgerlink.tools import admin

from tests.backends import CountingBackend
from tests.ledger.test_reconfig_cluster import heights, keep_committing, receipts, start_replacement

CRYPTO = get_backend("cpython")


def threshold_header(client, node, height, timeout=30.0):
    """``[header, threshold-certificate]`` of block ``height`` from ``node``, once it has one."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.request_to(node, "header", height=height)
        if answer.get("threshold_header") is not None:
            return answer["threshold_header"]
        assert time.monotonic() < deadline, "node %d: no threshold certificate at %d" % (node, height)
        time.sleep(0.05)


@pytest.mark.slow
def test_a_replaced_validator_set_keeps_threshold_headers(tmp_path):
    from ledgerlink.device.core import DeviceCore, MemoryCounter, SequenceCounter

    cluster = LocalCluster(tmp_path / "site", consensus={"view_change_timeout_ms": 800}, threshold=True)
    cluster.start()
    client = LedgerClient(cluster.config_path, timeout=3.0)
    try:
        chain = cluster.config.chain_id
        old = list(cluster.config.validators)
        old_group = bytes.fromhex(json.loads(cluster.config_path.read_text())["genesis"]["group_key"])
        store = Store(tmp_path / "gw.db")
        batcher = Batcher(store, client, "plant-1", chain, old, cluster.key("gateway"), group_key=old_group)
        sensor = CRYPTO.generate_private_key()
        counting = CountingBackend()
        device = DeviceCore(sensor, "plant-1", SequenceCounter(MemoryCounter()), chain, old, backend=counting,
                            group_key=old_group)
        before = receipts(batcher, store, sensor, [1, 2])
        for frame, r in before:
            assert len(r[7][1]) == 2                                   # a threshold certificate, not votes
            assert device.verify_receipt(r, frame).valid
        per_receipt = counting.verifies // len(before)                # ES256 checks beside the one FROST verify

        cluster.kill_node(3)                                           # lost for good
        keys_dir = cluster.data_dir / "keys"
        new_key_file, new_pub = start_replacement(cluster, 3)

        effective = max(heights(client, [0, 1, 2])) + 5
        change = ["--replace", "3=" + new_pub.hex(), "--height", str(effective)]
        cluster_arg = ["--cluster", str(cluster.config_path)]
        holders = [keys_dir / ("validator%d.key" % i) for i in range(3)] + [new_key_file]
        approve = sum((["--approve-key", str(keys_dir / ("validator%d.key" % i))] for i in range(3)), [])
        assert admin.main(cluster_arg + ["set-change"] + approve + change) == admin.EXIT_USAGE   # would drop the key
        assert admin.main(cluster_arg + ["set-dkg", "--out", str(tmp_path / "dkg.json")] + change
                          + sum((["--holder-key", str(k)] for k in holders[:3]), [])) == admin.EXIT_USAGE
        assert admin.main(cluster_arg + ["set-dkg", "--out", str(tmp_path / "dkg.json")] + change
                          + sum((["--holder-key", str(k)] for k in holders), [])) == 0
        dkg = json.loads((tmp_path / "dkg.json").read_text())
        new_group = bytes.fromhex(dkg["group_key"])
        for i, key_file in enumerate(holders):                         # each share beside its key, owner-only
            path = share_path(key_file, 1)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert frost.verifying_share(int(path.read_text().strip(), 16)).hex() == dkg["verifying_shares"][i]
        approval = tmp_path / "v0.json"
        assert admin.main(cluster_arg + ["approve-set", "--key", str(holders[0]), "--out", str(approval),
                                         "--dkg", str(tmp_path / "dkg.json")] + change) == 0
        assert admin.main(cluster_arg + ["set-change", "--approval", str(approval), "--dkg", str(tmp_path / "dkg.json")]
                          + approve[2:] + change) == 0

        top = max(keep_committing(cluster, client, [0, 1, 2, 3], effective + 3, timeout=90.0))
        for node in range(4):
            assert client.request_to(node, "validators")["group_key"] == new_group
        for height in range(effective, top + 1):                       # certificates under the new key from H
            certified = threshold_header(client, height % 4, height)
            assert spv.verify_certified_header(certified, chain, old[:3] + [new_pub], group_key=new_group).height \
                == height
            with pytest.raises(InvalidProof):
                spv.verify_certified_header(certified, chain, old, group_key=old_group)

        cluster.restart_node(0)                                        # restores across the change: epoch 1's share
        cluster.stop_node(1)                                           # t = 3: nodes 0, 2 and the new 3 all sign
        top2 = max(keep_committing(cluster, client, [0, 2, 3], top + 3, timeout=90.0))
        spv.verify_certified_header(threshold_header(client, 2, top2, timeout=60.0), chain,
                                    old[:3] + [new_pub], group_key=new_group)
        for node in (0, 3):
            text = (cluster.data_dir / ("node%d.log" % node if node == 0 else "node3-new.log")).read_text()
            assert "signing share" not in text, text[-2000:]
            for path in (share_path(holders[node], 1), share_path(holders[node], 0)):
                if path.exists():
                    assert path.read_text().strip() not in text
        cluster.start_node(1)

        answer = client.request_to(0, "set_change", epoch=1)
        trusted = validator_set.follow_set_change_proof(TrustedSet(chain, old, group_key=old_group), answer["proof"])
        assert trusted.group_key == new_group and trusted.from_height == effective
        batcher.validator_keys, batcher.group_key = list(trusted.keys), trusted.group_key
        after = receipts(batcher, store, sensor, [3, 4])
        frame, r = after[0]
        assert not device.verify_receipt(r, frame).valid              # signed by the new group key
        forged = cbor.loads(cbor.dumps(answer["proof"]))
        record = cbor.loads(forged[1])
        record[5] = old_group                                          # the old key kept across the change
        forged[1] = cbor.dumps(record)
        with pytest.raises((InvalidProof, InvalidMessage)):
            validator_set.follow_into(device, forged)
        assert device.group_key == old_group
        new = validator_set.follow_into(device, cbor.dumps(answer["proof"]))
        assert new.group_key == device.group_key == new_group and device.validator_epoch == 1
        counting.verifies = 0
        for frame, r in after:
            assert len(r[7][1]) == 2                                   # [view, signature]
            result = device.verify_receipt(r, frame)
            assert result.valid, result.reason
            assert result.height >= effective
        assert counting.verifies == per_receipt * len(after) < 3 * len(after)   # no 2f+1 vote checks
        assert admin.main(cluster_arg + ["follow-set"]) == 0
    finally:
        client.close()
        cluster.stop()
