"""A 4-node site on real processes replaces a validator killed for good: a new node with a new key
catches up by state transfer across the change, the site keeps committing, and a device checks a
receipt from before and one from after the change."""

from __future__ import annotations

import os
import subprocess
import time
from types import SimpleNamespace

import pytest

from ledgerlink.core import cbor, cose
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidMessage, InvalidProof
from ledgerlink.gateway.batcher import Batcher
from ledgerlink.gateway.checks import GatewayCore, GatewayKeys
from ledgerlink.gateway.mqtt_adapter import MqttGateway
from ledgerlink.gateway.store import Store
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster, write_key
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.protocol import spv, validator_set
from ledgerlink.protocol.validator_set import TrustedSet
from ledgerlink.tools import admin

CRYPTO = get_backend("cpython")
SITE = "plant-1"


def start_replacement(cluster, i):
    """A new machine in the place of node ``i`` (stopped): a fresh key ``keys/validator<i>-new.key`` and an
    empty data folder ``node<i>-new`` (log ``node<i>-new.log``); (its key file, its compressed public key),
    once its client port answers."""
    priv = CRYPTO.generate_private_key()
    key_file = cluster.data_dir / "keys" / ("validator%d-new.key" % i)
    write_key(key_file, priv)
    args = cluster.node_args(i)
    args[args.index("--data") + 1] = str(cluster.data_dir / ("node%d-new" % i))
    log = open(cluster.data_dir / ("node%d-new.log" % i), "ab")
    cluster.procs[i] = subprocess.Popen(args + ["--key", str(key_file)], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
    log.close()
    cluster.wait_ready(30.0, [i])
    return key_file, CRYPTO.public_key(priv, True)


def heights(client, nodes):
    out = []
    for i in nodes:
        try:
            out.append(client.request_to(i, "info")["height"])
        except Exception:  # noqa: BLE001 - a node still starting
            out.append(-1)
    return out


def keep_committing(cluster, client, nodes, height, timeout=60.0):
    """Submit anchors until every node in ``nodes`` is at ``height`` or above; return their heights."""
    gw = cluster.key("gateway")
    deadline = time.monotonic() + timeout
    batch = int(time.time() * 1000)
    while True:
        hs = heights(client, nodes)
        if min(hs) >= height:
            return hs
        assert time.monotonic() < deadline, "nodes %s stuck at %s, want %d" % (nodes, hs, height)
        batch += 1
        res = client.submit(enc.anchor_tx(cluster.config.chain_id, gw, batch, os.urandom(32), 1,
                                          int(time.time() * 1000)), wait_ms=3000)
        assert res.get("ok"), res
        time.sleep(0.05)


def receipts(batcher, store, device_priv, seqs):
    """Frames ``seqs`` of the device, batched and anchored; [(frame, receipt)]."""
    dev = enc.device_id(CRYPTO.public_key(device_priv, True))
    topic = "ll/%s/dev/%s/up" % (SITE, dev.hex())
    now = int(time.time() * 1000)
    frames = [cose.sign1(cbor.dumps({1: dev, 2: s, 3: now, 4: {"i": s}}), device_priv, dev, topic.encode(), CRYPTO)
              for s in seqs]
    for frame, seq in zip(frames, seqs):
        store.append_accepted(frame, dev, seq, now, topic, now)
    out = [o for o in batcher.step(now + 10_000) if o.topic.endswith("/down")]
    assert len(out) == len(frames), out
    return [(f, cbor.loads(o.payload)) for f, o in zip(frames, out)]


@pytest.mark.slow
def test_a_killed_validator_is_replaced_and_the_site_keeps_committing(tmp_path):
    from ledgerlink.device.core import DeviceCore, MemoryCounter, SequenceCounter

    cluster = LocalCluster(tmp_path / "site", consensus={"view_change_timeout_ms": 800})
    cluster.start()
    client = LedgerClient(cluster.config_path, timeout=3.0)
    try:
        chain = cluster.config.chain_id
        old = list(cluster.config.validators)
        store = Store(tmp_path / "gw.db")
        batcher = Batcher(store, client, SITE, chain, old, cluster.key("gateway"))
        sensor = CRYPTO.generate_private_key()
        device = DeviceCore(sensor, SITE, SequenceCounter(MemoryCounter()), chain, old, backend="cpython")
        before = receipts(batcher, store, sensor, [1, 2])
        for frame, r in before:
            assert device.verify_receipt(r, frame).valid

        cluster.kill_node(3)                                          # lost for good
        new_key_file, new_pub = start_replacement(cluster, 3)

        start = max(heights(client, [0, 1, 2]))
        effective = start + 4
        keys_dir = cluster.data_dir / "keys"
        change = ["--replace", "3=" + new_pub.hex(), "--height", str(effective)]
        cluster_arg = ["--cluster", str(cluster.config_path)]
        approval = tmp_path / "v0.json"                              # validator 0's operator signs elsewhere
        assert admin.main(cluster_arg + ["approve-set", "--key", str(keys_dir / "validator0.key"), "--out",
                                         str(approval)] + change) == 0
        short = admin.main(cluster_arg + ["set-change", "--approval", str(approval), "--approve-key",
                                          str(keys_dir / "validator1.key")] + change)
        assert short == admin.EXIT_USAGE                              # 2 of 4 approvals: 2f+1 = 3 needed
        code = admin.main(cluster_arg + ["set-change", "--approval", str(approval)] + change
                          + sum((["--approve-key", str(keys_dir / ("validator%d.key" % i))] for i in (1, 2)), []))
        assert code == 0
        keep_committing(cluster, client, [0, 1, 2], effective + 3)
        caught_up = keep_committing(cluster, client, [0, 1, 2, 3], effective + 5, timeout=90.0)
        assert min(caught_up) >= effective + 5                      # the new node took the blocks and votes
        cluster.restart_node(0)                                     # restores across the change and rejoins
        keep_committing(cluster, client, [0, 1, 2, 3], max(caught_up) + 3, timeout=90.0)
        for i in range(4):                                            # every node names the set in force
            info = client.request_to(i, "validators")
            assert [bytes(k) for _, k in info["validators"]] == old[:3] + [new_pub], i
            state = client.request_to(i, "info")
            assert state["primary"] == state["view"] % 4

        answer = client.request_to(0, "set_change", epoch=1)
        trusted = validator_set.follow_set_change_proof(TrustedSet(chain, old), answer["proof"])
        assert trusted.keys[:3] == old[:3] and trusted.keys[3] == new_pub and trusted.from_height == effective
        latest = client.latest()
        assert spv.verify_certified_header(latest["certified_header"], chain, trusted.keys).height > effective
        with pytest.raises(InvalidProof):
            spv.verify_certified_header(latest["certified_header"], chain, old)

        core = GatewayCore(SITE, GatewayKeys(*(CRYPTO.generate_private_key() for _ in range(3))), chain, old)
        gateway = SimpleNamespace(service=SimpleNamespace(core=core), ledger=client, batcher=batcher)
        with pytest.raises(InvalidProof):
            core.check_header(latest["certified_header"])
        assert MqttGateway._follow_validators(gateway)                 # the gateway follows the change
        assert core.validator_keys == batcher.validator_keys == trusted.keys
        assert core.check_header(latest["certified_header"]).height > effective
        assert not MqttGateway._follow_validators(gateway)             # nothing more to follow
        after = receipts(batcher, store, sensor, [3, 4])
        frame, r = after[0]
        assert not device.verify_receipt(r, frame).valid             # a block of the new set
        forged = cbor.loads(cbor.dumps(answer["proof"]))
        forged[1] = cbor.dumps({**cbor.loads(forged[1]), 3: effective + 1})
        with pytest.raises((InvalidProof, InvalidMessage)):
            validator_set.follow_into(device, forged)
        assert device.validator_keys == old
        validator_set.follow_into(device, cbor.dumps(answer["proof"]))      # the device follows it with the proof
        assert device.validator_keys == trusted.keys and device.validator_epoch == 1
        for frame, r in after:
            result = device.verify_receipt(r, frame)
            assert result.valid, result.reason
            assert result.height >= effective
        assert code == 0 and admin.main(["--cluster", str(cluster.config_path), "follow-set"]) == 0
    finally:
        client.close()
        cluster.stop()


@pytest.mark.slow
def test_a_removed_validator_is_no_longer_needed(tmp_path):
    cluster = LocalCluster(tmp_path / "site", consensus={"view_change_timeout_ms": 800})
    cluster.start()
    client = LedgerClient(cluster.config_path, timeout=3.0)
    try:
        chain = cluster.config.chain_id
        old = list(cluster.config.validators)
        start = max(keep_committing(cluster, client, [0, 1, 2, 3], 1))
        effective = start + 4
        keys_dir = cluster.data_dir / "keys"
        assert admin.main(["--cluster", str(cluster.config_path), "set-change", "--remove-last", "1",
                           "--height", str(effective)]
                          + sum((["--approve-key", str(keys_dir / ("validator%d.key" % i))] for i in range(3)), [])) == 0
        keep_committing(cluster, client, [0, 1, 2], effective + 2)
        cluster.kill_node(3)                                          # removed: the three go on without it
        top = keep_committing(cluster, client, [0, 1, 2], effective + 6, timeout=90.0)
        trusted = validator_set.follow_set_change_proof(TrustedSet(chain, old),
                                                        client.request_to(0, "set_change", epoch=1)["proof"])
        assert trusted.keys == old[:3] and trusted.from_height == effective
        header = spv.verify_certified_header(client.request_to(0, "header", height=min(top))["certified_header"],
                                             chain, trusted.keys)
        assert header.height >= effective and header.validators_hash == validator_set.set_hash(old[:3])
        assert [bytes(k) for _, k in client.request_to(0, "validators")["validators"]] == old[:3]
    finally:
        client.close()
        cluster.stop()
