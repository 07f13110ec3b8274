"""The peers file that tells running nodes where a validator added by a set change listens: parsing
(bad files refused with a reason), writing, the transport linking to the new index, the new node's
own address, and ``admin --add-address``."""

from __future__ import annotations

import argparse
import json

import pytest

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.cluster import generate
from ledgerlink.ledger.node import Node
from ledgerlink.ledger.storage import BlockStore
from ledgerlink.ledger.transport import (
    ClusterConfig, HandshakeError, PeerNetwork, _parse_hello, default_peers_file, load_peer_addresses,
    write_peer_address,
)
from ledgerlink.tools import admin_validators
from ledgerlink.tools.admin import EXIT_USAGE, AdminError

CRYPTO = get_backend("cpython")


def _new_key() -> tuple[bytes, bytes]:
    priv = CRYPTO.generate_private_key()
    return priv, CRYPTO.public_key(priv, True)


def test_peers_file_round_trip_keeps_other_entries(tmp_path):
    path = tmp_path / "peers.json"
    assert load_peer_addresses(path) == {}
    _, a = _new_key()
    _, b = _new_key()
    write_peer_address(path, a, "10.0.0.5", 26604, 27604)
    write_peer_address(path, CRYPTO.public_key(_new_key()[0], False), "h", 1, 2)   # uncompressed: stored compressed
    write_peer_address(path, b, "node-b.plant", 26605, 27605)
    write_peer_address(path, a, "10.0.0.6", 26604, 27604)                         # moved
    got = load_peer_addresses(path)
    assert got[a.hex()] == ("10.0.0.6", 26604, 27604) and got[b.hex()] == ("node-b.plant", 26605, 27605)
    assert len(got) == 3 and all(len(bytes.fromhex(k)) == 33 for k in got)


@pytest.mark.parametrize("content, reason", [
    ("{", "Expecting"),
    ("[]", "not a JSON object"),
    (json.dumps({"02" + "11" * 32: {"host": "h", "peer_port": 1}}), "needs host, peer_port and client_port"),
    (json.dumps({"02" + "11" * 32: {"host": "h", "peer_port": 0, "client_port": 2}}), "bad address"),
    (json.dumps({"02" + "11" * 32: {"host": "h", "peer_port": "1", "client_port": 2}}), "bad address"),
    (json.dumps({"zz": {"host": "h", "peer_port": 1, "client_port": 2}}), "not a P-256 public key"),
    (json.dumps({"02" + "11" * 10: {"host": "h", "peer_port": 1, "client_port": 2}}), "not a P-256 public key"),
])
def test_a_malformed_peers_file_is_refused_with_its_reason(tmp_path, content, reason):
    path = tmp_path / "peers.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=reason):
        load_peer_addresses(path)


def test_the_transport_links_to_an_added_validator_only_once_its_address_is_named(tmp_path):
    config = ClusterConfig.load(generate(tmp_path, 4, base_port=20000))
    peers_file = default_peers_file(config)
    assert peers_file == tmp_path / "peers.json"
    _, new = _new_key()
    keys = config.validators + (new,)
    net = PeerNetwork(config, 0, 1 << 20, lambda *_: None, bytes(32))
    hello = cbor.dumps(["ledgerlink-peer-v2", config.chain_id, 4, 0, bytes(32)])
    assert not net.add_validators(keys, peers_file) and 4 not in net.links and config.n == 4
    with pytest.raises(HandshakeError, match="bad hello"):
        _parse_hello(hello, config.chain_id, config.n)           # index 4 unknown: its handshake is refused
    peers_file.write_text("{")
    assert not net.add_validators(keys, peers_file) and config.n == 4
    peers_file.unlink()
    write_peer_address(peers_file, new, "127.0.0.9", 20004, 21004)
    assert net.add_validators(keys, peers_file)
    assert config.n == 5 and config.nodes[4].pubkey == new and net.links[4].peer.peer_port == 20004
    assert _parse_hello(hello, config.chain_id, config.n) == (4, 0, bytes(32))
    assert net.add_validators(keys, peers_file) and len(net.links) == 4     # nothing more to add


def test_a_new_node_needs_its_own_address_in_the_peers_file(tmp_path):
    config = ClusterConfig.load(generate(tmp_path, 4, base_port=20000))
    genesis = config.genesis_hash()
    priv, pub = _new_key()
    with pytest.raises(RuntimeError, match="names no address for its key"):
        Node(config, 4, tmp_path / "node4", priv)
    write_peer_address(default_peers_file(config), pub, "127.0.0.1", 20004, 21004)
    with pytest.raises(RuntimeError, match="names no address"):
        Node(ClusterConfig.load(config.path), 5, tmp_path / "node5", priv)    # indices have no gaps
    node = Node(config, 4, tmp_path / "node4", priv)
    try:
        assert config.nodes[4].peer_port == 20004 and not node.replica.member
        assert sorted(node.net.links) == [0, 1, 2, 3]
    finally:
        node.store.close()
    BlockStore(tmp_path / "node4" / "blocks.sqlite", config.chain_id, genesis).close()   # the chain's genesis


def test_admin_add_address_pairs_with_add_and_refuses_bad_ones():
    _, a = _new_key()
    _, b = _new_key()
    args = argparse.Namespace(add=[a.hex(), b.hex()], add_address=["10.0.0.5:26604:27604", "[::1]:1:2"])
    assert admin_validators._addresses(args) == [(a, "10.0.0.5", 26604, 27604), (b, "[::1]", 1, 2)]
    for bad in (["10.0.0.5:26604"], ["h:0:1"], ["h:x:1"], [":1:2"], ["a:1:2", "b:1:2", "c:1:2"]):
        with pytest.raises(AdminError) as e:
            admin_validators._addresses(argparse.Namespace(add=[a.hex(), b.hex()], add_address=bad))
        assert e.value.status == EXIT_USAGE
