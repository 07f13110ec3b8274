"""Record proofs on a ledger with threshold headers: the node serves them against a header with its
threshold certificate, so a device checks one with one FROST verification and no vote."""

import json
import os
import time

import pytest

from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import RecordKind
from ledgerlink.protocol import spv

THRESHOLD_CERT_ITEMS = 2           # [view, frost-signature]; a vote certificate has 4 items


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("trecords"), threshold=True) as c:
        yield c


def test_record_proofs_carry_a_threshold_certificate_and_no_votes(cluster):
    genesis = json.loads(cluster.config_path.read_text())["genesis"]
    group_key = bytes.fromhex(genesis["group_key"])
    keys = list(cluster.config.validators)
    gateway = cluster.key("gateway")
    gateway_id = enc.device_id(get_backend(None).public_key(gateway, True))
    with LedgerClient(cluster.config_path) as client:
        for round_ in range(4):           # each record asked right after a fresh commit
            now = int(time.time() * 1000)
            res = client.submit(enc.anchor_tx(cluster.config.chain_id, gateway, round_ + 1, os.urandom(32), 1, now),
                                10000)
            assert res["status"] == "committed"
            for kind, rid in ((RecordKind.DEVICE, gateway_id), (RecordKind.DEVICE, os.urandom(16))):
                answer = client.record(kind, rid)
                assert answer["ok"]
                proof = answer["proof"]
                assert len(proof[1][1]) == THRESHOLD_CERT_ITEMS
                header, _, value = spv.verify_record_proof(proof, cluster.config.chain_id, keys, group_key=group_key)
                assert header.height == answer["height"]
                assert (value is not None) == (rid == gateway_id)
                by_anchor = spv.verify_record_proof(proof, cluster.config.chain_id,
                                                    spv.validators_hash(keys, group_key), group_key=group_key)
                assert by_anchor[0].height == header.height
