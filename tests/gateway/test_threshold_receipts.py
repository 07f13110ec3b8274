"""Receipts of a site with threshold headers: every one carries the header with its threshold
certificate, also when the certificate was not made yet when the gateway first asked for the proof."""

import hashlib
import json
import time

import pytest

from ledgerlink.core import cbor, cose
from ledgerlink.core.backend import get_backend
from ledgerlink.gateway.batcher import Batcher, verify_receipt
from ledgerlink.gateway.store import Store
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster
from ledgerlink.protocol import ledger_tx as enc, spv

CRYPTO = get_backend("cpython")
SITE = "plant-t"
THRESHOLD_CERT_ITEMS = 2           # [view, frost-signature]; a vote certificate has 4 items


class LateCertificates:
    """A ledger client whose first answer for each proof lacks the threshold header, as when the gateway
    asks before the validators have made the block's threshold certificate."""

    def __init__(self, client: LedgerClient) -> None:
        self.client = client
        self.asked: set[bytes] = set()

    def tx_proof(self, tx_hash: bytes) -> dict:
        answer = self.client.tx_proof(tx_hash)
        if tx_hash not in self.asked:
            self.asked.add(tx_hash)
            answer.pop("threshold_header", None)
        return answer

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("treceipts"), threshold=True) as c:
        yield c


def test_every_receipt_of_a_threshold_site_carries_a_threshold_header(cluster, tmp_path):
    group_key = bytes.fromhex(json.loads(cluster.config_path.read_text())["genesis"]["group_key"])
    keys = list(cluster.config.validators)
    chain_id = cluster.config.chain_id
    device_priv = CRYPTO.generate_private_key()
    device = enc.device_id(CRYPTO.public_key(device_priv, True))
    topic = "ll/%s/dev/%s/up" % (SITE, device.hex())
    store = Store(tmp_path / "gw.db")
    with LedgerClient(cluster.config_path) as client:
        ledger = LateCertificates(client)
        batcher = Batcher(store, ledger, SITE, chain_id, keys, cluster.key("gateway"), max_batch=3,
                          group_key=group_key)
        frames = {}
        seq = 0
        for _ in range(3):                 # three steps, each anchoring batches of new frames
            now = int(time.time() * 1000)
            for _ in range(5):
                seq += 1
                frame = cose.sign1(cbor.dumps({1: device, 2: seq, 3: now, 4: {"i": seq}}), device_priv, device,
                                   topic.encode(), CRYPTO)
                frames[hashlib.sha256(frame).digest()] = frame
                store.append_accepted(frame, device, seq, now, topic, now)
            out = batcher.step(now, force=True)
            receipts = [o for o in out if o.topic.endswith("/down")]
            assert len(receipts) == 5
            for o in receipts:
                receipt = cbor.loads(o.payload)
                assert len(receipt[7][1]) == THRESHOLD_CERT_ITEMS
                verify_receipt(o.payload, frames[receipt[1]], chain_id, spv.validators_hash(keys, group_key),
                               group_key=group_key)
        assert len(ledger.asked) == 6
    store.close()

