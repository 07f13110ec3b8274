"""A 4-node ledger cluster as real processes on loopback: commits, proofs, crashes, view change."""

import hashlib
import itertools
import os
import socket
import struct
import threading
import time

import pytest

from ledgerlink.core import cbor, smt
from ledgerlink.protocol import spv
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster
from ledgerlink.ledger.state import RecordKind, encoding as enc

_batch = itertools.count(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as c:
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


def h(tx):
    return hashlib.sha256(tx).digest()


def wait_heights(cluster, client, nodes, height, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        hs = [client.request_to(i, "info")["height"] for i in nodes]
        if min(hs) >= height:
            return hs
        assert time.monotonic() < deadline, "nodes stuck at %s, want %d" % (hs, height)
        time.sleep(0.1)


def assert_same_chain(client, nodes, upto):
    """Every node has byte-identical blocks (header, certificate, txs) up to ``upto``."""
    for height in range(upto + 1):
        blocks = [client.request_to(i, "block", height=height) for i in nodes]
        assert all(b["ok"] for b in blocks)
        headers = {cbor.dumps(b["certified_header"][0]) for b in blocks}
        txs = {cbor.dumps(b["txs"]) for b in blocks}
        assert len(headers) == 1 and len(txs) == 1, "divergence at height %d" % height


def assert_in_chain(client, node, acked):
    for tx, res in acked:
        st = client.request_to(node, "status", hash=h(tx))
        assert st["status"] == "committed" and (st["height"], st["index"]) == (res["height"], res["index"])


def test_commit_on_all_nodes_with_identical_headers(cluster, client):
    txs = anchors(cluster, 30)
    results = client.submit_many(txs)
    assert all(r["status"] == "committed" and r["code"] == 0 for r in results)
    top = max(r["height"] for r in results)
    wait_heights(cluster, client, range(4), top)
    assert_same_chain(client, range(4), top)
    for i in range(4):
        assert_in_chain(client, i, zip(txs, results))
    again = client.submit(txs[0])
    assert (again["status"], again["height"]) == ("committed", results[0]["height"])


def test_refused_tx_has_reason_code(cluster, client):
    stranger = get_backend("cpython").generate_private_key()
    tx = enc.anchor_tx(cluster.config.chain_id, stranger, 1, bytes(32), 1, int(time.time() * 1000))
    r = client.submit(tx)
    assert r["status"] == "refused" and r["code"] == 3          # unknown-device
    assert client.status(h(tx))["status"] in ("refused", "unknown")


def test_submit_many_answers_each_tx_in_order(cluster, client):
    stranger = get_backend("cpython").generate_private_key()
    bad = enc.anchor_tx(cluster.config.chain_id, stranger, 1, bytes(32), 1, int(time.time() * 1000))
    good = anchors(cluster, 3)
    results = client.submit_many([good[0], bad, good[1], good[0], b"junk", good[2]])
    assert [r["status"] for r in results] == ["committed", "refused", "committed", "committed", "refused",
                                              "committed"]
    assert results[1]["code"] == 3 and results[4]["code"] == 1
    assert results[3]["height"] == results[0]["height"]
    for args in ({"txs": []}, {"txs": b"x"}, {"txs": [b"x"] * 1025}):
        r = client.request_to(0, "submit_many", **args)
        assert not r["ok"] and "txs must be" in r["error"]


def test_record_proof_and_certificate(cluster, client):
    vals = client.validators()
    keys = [k for _, k in vals["validators"]]
    assert keys == list(cluster.config.validators)
    tx = anchors(cluster, 1)[0]
    res = client.submit(tx)
    assert res["status"] == "committed"
    gw_id = enc.device_id(get_backend("cpython").public_key(cluster.key("gateway"), True))
    ans = client.record(RecordKind.DEVICE, gw_id)
    assert ans["ok"]
    proof = ans["proof"]
    header = spv.verify_certified_header(proof[1], cluster.config.chain_id, keys, get_backend("cpython"))
    assert len(proof[1][1][3]) >= 3                             # 2f+1 votes
    smt.verify(header.state_root, proof[2], proof[3], proof[4])
    assert cbor.loads(proof[3])[1] == gw_id
    spv.verify_record_proof(proof, cluster.config.chain_id, keys, get_backend("cpython"))
    bad = dict(proof)
    bad[3] = proof[3][:-1] + bytes([proof[3][-1] ^ 1])
    with pytest.raises(Exception):
        spv.verify_record_proof(bad, cluster.config.chain_id, keys, get_backend("cpython"))
    absent = client.record(RecordKind.DEVICE, bytes(16))["proof"]
    assert absent[3] is None
    spv.verify_record_proof(absent, cluster.config.chain_id, keys, get_backend("cpython"))
    forged = list(proof[1])
    forged[1] = list(forged[1])
    forged[1][3] = forged[1][3][:2]                             # below the quorum
    with pytest.raises(Exception):
        spv.verify_certified_header(forged, cluster.config.chain_id, keys, get_backend("cpython"))
    # transaction inclusion against the certified header's tx root
    tp = client.tx_proof(h(tx))
    assert tp["ok"] and tp["tx"] == tx
    th = spv.verify_certified_header(tp["certified_header"], cluster.config.chain_id, keys, get_backend("cpython"))
    spv.verify_tx_inclusion(th, tx, tp["index"], tp["size"], tp["proof"])
    with pytest.raises(Exception):
        spv.verify_tx_inclusion(th, tx + b"x", tp["index"], tp["size"], tp["proof"])


def test_junk_on_peer_and_client_ports_is_dropped(cluster, client):
    a = cluster.config.nodes[1]
    for payload in (b"\xff\xff\xff\xff" + b"x" * 64,                        # oversized length
                    struct.pack(">I", 5) + b"hello",                       # bad hello
                    struct.pack(">I", 3) + cbor.dumps([1, 2]) + b"zz"):     # truncated
        with socket.create_connection((a.host, a.peer_port)) as s:
            s.sendall(payload)
    with socket.create_connection((a.host, a.peer_port)) as s:            # valid hello, junk messages
        hello = cbor.dumps(["ledgerlink-peer-v1", cluster.config.chain_id, 2])
        s.sendall(struct.pack(">I", len(hello)) + hello)
        for junk in (b"", b"\x00", cbor.dumps([99, 2, b"x"]), os.urandom(300)):
            s.sendall(struct.pack(">I", len(junk)) + junk)
    with socket.create_connection((a.host, a.client_port)) as s:
        s.sendall(struct.pack(">I", 4) + b"\xa1\x01\x02\x03")
        s.sendall(struct.pack(">I", 9) + cbor.dumps({"id": 1, "op": 5})[:9])
        s.sendall(struct.pack(">I", 1 << 30))
    unknown = client.request_to(1, "no-such-op")
    assert unknown["ok"] is False
    assert client.request_to(1, "header", height=10 ** 9)["ok"] is False
    assert cluster.alive(1)
    res = client.submit(anchors(cluster, 1)[0])
    assert res["status"] == "committed"
    wait_heights(cluster, client, [1], res["height"])


class Load:
    """Background submitter; remembers every acknowledged commit."""

    def __init__(self, cluster, batch=20):
        self.cluster = cluster
        self.batch = batch
        self.client = LedgerClient(cluster.config_path, prefer=3, timeout=3.0)
        self.acked = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            txs = anchors(self.cluster, self.batch)
            try:
                results = self.client.submit_many(txs, wait_ms=20000)
            except Exception:
                continue
            self.acked += [(tx, r) for tx, r in zip(txs, results) if r.get("status") == "committed"]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)
        self.client.close()

    def wait_acked(self, more, timeout=30.0):
        target = len(self.acked) + more
        deadline = time.monotonic() + timeout
        while len(self.acked) < target:
            assert time.monotonic() < deadline, "commits stalled at %d" % len(self.acked)
            time.sleep(0.05)


@pytest.mark.slow
def test_backup_killed_under_load_then_catches_up(cluster, client):
    primary = client.info()["primary"]
    victim = next(i for i in (3, 2, 1) if i != primary)
    others = [i for i in range(4) if i != victim]
    with Load(cluster) as load:
        load.wait_acked(40)
        cluster.kill_node(victim)
        load.wait_acked(150)                                   # the others keep committing
        down_height = wait_heights(cluster, client, others, 0)[0]
        cluster.start_node(victim)
        cluster.wait_ready(30, [victim])
        load.wait_acked(40)
    top = min(wait_heights(cluster, client, others, 0))
    wait_heights(cluster, client, [victim], top, timeout=40)
    assert top > down_height
    assert_same_chain(client, range(4), top)
    for i in range(4):
        assert_in_chain(client, i, [a for a in load.acked if a[1]["height"] <= top])


@pytest.mark.slow
def test_primary_killed_view_change_resumes(cluster, client):
    info = client.request_to(0, "info")
    primary = info["primary"]
    view = info["view"]
    others = [i for i in range(4) if i != primary]
    with Load(cluster) as load:
        load.wait_acked(40)
        cluster.kill_node(primary)
        load.wait_acked(100, timeout=40)                       # after the view change
        views = [client.request_to(i, "info")["view"] for i in others]
        assert min(views) > view
        cluster.start_node(primary)
        cluster.wait_ready(30, [primary])
        load.wait_acked(40)
    top = min(wait_heights(cluster, client, others, 0))
    wait_heights(cluster, client, [primary], top, timeout=40)
    assert_same_chain(client, range(4), top)
    for i in range(4):
        assert_in_chain(client, i, [a for a in load.acked if a[1]["height"] <= top])
