"""Transport: frame limits, cluster config files, client port answers and peer reconnection."""

import asyncio
import json
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.ledger.cluster import free_base_port
from ledgerlink.ledger.transport import (CLIENT_PORT_OFFSET, HELLO, ClientServer, ClusterConfig, FrameError,
                                         FrameSplitter, HandshakeError, PeerNetwork, frame, handshake_dial,
                                         peek_kind, peek_op, read_frame)

CRYPTO = get_backend("cpython")
PRIVS = [CRYPTO.generate_private_key() for _ in range(4)]
KEYS = [CRYPTO.public_key(k, True) for k in PRIVS]


def _reader(data: bytes) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    r.feed_eof()
    return r


def test_read_frame_limits():
    async def run():
        assert await read_frame(_reader(frame(b"abc") + frame(b"")), 10) == b"abc"
        assert await read_frame(_reader(b""), 10) is None
        for bad in (frame(b"x" * 11), b"\x00\x00", frame(b"abcdef")[:-1]):
            with pytest.raises(FrameError):
                await read_frame(_reader(bad), 10)
    asyncio.run(run())


async def _read_all(data: bytes, limit: int) -> tuple[list[bytes], str | None]:
    r = _reader(data)
    out = []
    try:
        while True:
            f = await read_frame(r, limit)
            if f is None:
                return out, None
            out.append(f)
    except FrameError as exc:
        return out, exc.reason


def _split_all(data: bytes, limit: int, cuts: list[int]) -> tuple[list[bytes], str | None]:
    s = FrameSplitter(limit)
    out = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for a, b in zip(bounds, bounds[1:]):
            out += s.feed(data[a:b])
            if s.error is not None:
                raise s.error
        s.end()
    except FrameError as exc:
        return out, exc.reason
    return out, None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(0, 8), st.lists(st.integers(0, 400), max_size=12),
       st.one_of(st.none(), st.integers(0, 400)), st.binary(max_size=6))
def test_frame_splitter_agrees_with_read_frame(payloads, oversized_at, cuts, truncate, junk):
    """Any chunking of any stream (valid frames, an oversized one, a cut, junk) gives read_frame's frames and error."""
    frames = [frame(p) for p in payloads]
    limit = 32
    if oversized_at < 4:
        frames.insert(min(oversized_at, len(frames)), frame(b"o" * 33))
    data = b"".join(frames) + junk
    if truncate is not None:
        data = data[:truncate]
    assert _split_all(data, limit, cuts) == asyncio.run(_read_all(data, limit))


def test_config_json_and_toml(tmp_path):
    data = {"chain_id": "c", "base_port": 30000, "validators": [k.hex() for k in KEYS],
            "nodes": [{}, {"host": "10.0.0.2", "peer_port": 1, "key_file": "k1"}],
            "consensus": {"max_batch": 7}}
    p = tmp_path / "c.json"
    p.write_text(json.dumps(data))
    c = ClusterConfig.load(p)
    assert [(a.host, a.peer_port, a.client_port) for a in c.nodes] == [
        ("127.0.0.1", 30000, 31000), ("10.0.0.2", 1, 31001), ("127.0.0.1", 30002, 31002),
        ("127.0.0.1", 30003, 31003)]
    assert c.nodes[1].key_file == str(tmp_path / "k1")
    assert c.replica_config().max_batch == 7 and c.validators == tuple(KEYS)
    t = tmp_path / "c.toml"
    t.write_text('chain_id = "c"\nbase_port = 30000\nvalidators = [%s]\n[consensus]\nmax_batch = 7\n'
                 % ", ".join('"%s"' % k.hex() for k in KEYS))
    ct = ClusterConfig.load(t)
    assert ct.validators == c.validators and ct.genesis_hash() == ClusterConfig.load(p).genesis_hash()


def test_client_port_pipelines_and_survives_junk():
    async def handler(req):
        await asyncio.sleep(0.05 if req["op"] == "slow" else 0)
        return {"ok": True, "echo": req["op"]}

    async def run():
        port = free_base_port(1)
        server = ClientServer("127.0.0.1", port, handler)
        await server.start()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(frame(b"\xff") + frame(cbor.dumps({"id": 1, "op": "slow"})) + frame(cbor.dumps({"id": 2, "op": "fast"})))
        answers = [cbor.loads(await read_frame(r, 1 << 20)) for _ in range(3)]
        assert answers[0] == {"ok": False, "error": "malformed request"}
        assert [a["id"] for a in answers[1:]] == [2, 1]           # out of order
        w.write(b"\xff\xff\xff\xff")                              # oversized: connection closed
        assert await read_frame(r, 1 << 20) is None
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)   # server still serves
        w2.write(frame(cbor.dumps({"id": 3, "op": "x"})))
        assert cbor.loads(await read_frame(r2, 1 << 20))["echo"] == "x"
        w.close()
        w2.close()
        await server.stop()
    asyncio.run(run())


def test_peers_exchange_and_reconnect():
    base = free_base_port(2)
    cfg = ClusterConfig.from_dict({"chain_id": "c", "base_port": base, "validators": [k.hex() for k in KEYS[:2]]})

    async def run():
        got: list[tuple[int, bytes]] = []
        a = PeerNetwork(cfg, 0, 1000, lambda s, d: got.append((s, d)), PRIVS[0])
        b = PeerNetwork(cfg, 1, 1000, lambda s, d: None, PRIVS[1])
        await a.start()
        b.send(0, b"before start")             # queued until the link is up
        await b.start()
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        assert got == [(1, b"before start")]
        await a.stop()
        await asyncio.sleep(0.1)
        got.clear()
        a = PeerNetwork(cfg, 0, 1000, lambda s, d: got.append((s, d)), PRIVS[0])
        await a.start()
        for k in range(150):                   # the link comes back with backoff
            b.broadcast(b"m%d" % k)
            await asyncio.sleep(0.02)
            if any(s == 1 and d.startswith(b"m") for s, d in got):
                break
        assert any(d.startswith(b"m") for _, d in got)
        assert all(s == 1 for s, _ in got)
        await a.stop()
        await b.stop()
    asyncio.run(run())


def test_free_base_ports_are_free_and_below_the_ephemeral_range():
    from ledgerlink.ledger.cluster import _ephemeral_low
    low = _ephemeral_low()
    for _ in range(20):
        base = free_base_port(4)
        ports = [base + i for i in range(4)] + [base + CLIENT_PORT_OFFSET + i for i in range(4)]
        assert 10000 <= base and max(ports) < low
        for p in ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))


def _two_node_config(**ports):
    return ClusterConfig.from_dict({"chain_id": "c", "base_port": free_base_port(2),
                                    "validators": [k.hex() for k in KEYS[:2]], "ports": ports})


def test_handshake_proves_keys_before_any_frame_is_read():
    """Only a dialer that signs with the key of the validator it claims gets its frames read; a wrong
    key, a replayed hello and a stall are closed without a signature from the node."""
    cfg = _two_node_config(handshake_timeout_s=0.5)

    async def run():
        got: list[tuple[int, bytes]] = []
        a = PeerNetwork(cfg, 0, 1000, lambda s, d: got.append((s, d)), PRIVS[0])
        await a.start()
        port = cfg.nodes[0].peer_port
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await handshake_dial(r, w, cfg, 1, PRIVS[1], 0)            # right key: the node proves its own
        w.write(frame(b"\x83\x01\x01\x00"))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [(1, b"\x83\x01\x01\x00")]
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises((HandshakeError, FrameError, ConnectionError)):
            await handshake_dial(r, w, cfg, 1, CRYPTO.generate_private_key(), 0)
        r, w = await asyncio.open_connection("127.0.0.1", port)     # stranger: junk after a v1 hello
        w.write(frame(cbor.dumps(["ledgerlink-peer-v1", "c", 1])) + frame(b"\x00" * 900))
        assert await asyncio.wait_for(r.read(), 2) == b""
        r, w = await asyncio.open_connection("127.0.0.1", port)     # stall in the hello: closed in time
        w.write(frame(cbor.dumps([HELLO, "c", 1, 0, bytes(32)]))[:-3])
        start = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(r.read(), 3) == b""
        assert asyncio.get_running_loop().time() - start < 1.5
        await asyncio.sleep(0.05)
        assert len(got) == 1
        assert a.limited["peer_handshake_failed"] >= 2 and a.limited["peer_handshake_timeout"] == 1
        await a.stop()
    asyncio.run(run())


def test_slow_peer_is_cut_off_not_queued_for():
    cfg = _two_node_config(peer_queue_bytes=10000)

    async def run():
        b = PeerNetwork(cfg, 1, 1000, lambda s, d: None, PRIVS[1])
        for _ in range(100):                      # peer 0 is down: its queue stays below the byte cap
            b.send(0, b"x" * 300)
        assert b.links[0].queued_bytes <= 10000
        assert b.limited["peer_queue_bytes"] >= 1
    asyncio.run(run())


def test_peeks_read_kind_and_op_without_decoding():
    assert peek_kind(cbor.dumps([8, 1, 0, 10 ** 6, bytes(64)])) == 8
    assert peek_kind(b"\xff\x00") is None
    for rid in (0, 23, 24, 300, 70000, 2 ** 40):
        assert peek_op(cbor.dumps({"id": rid, "op": "submit_many", "txs": [b"x"]})) == "submit_many"
    assert peek_op(cbor.dumps({"id": 1, "ab": 0, "op": "status"})) is None
    assert peek_op(b"\xa2") is None


def test_client_port_caps_request_size_per_op():
    async def handler(req):
        return {"ok": True}

    async def run():
        port = free_base_port(1)
        server = ClientServer("127.0.0.1", port, handler)
        await server.start()
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(frame(cbor.dumps({"id": 1, "op": "status", "hash": bytes(8000)})))
        w.write(frame(cbor.dumps({"id": 2, "op": "submit", "tx": bytes(8000)})))
        answers = [cbor.loads(await read_frame(r, 1 << 20)) for _ in range(2)]
        assert answers == [{"ok": False, "error": "malformed request"}, {"ok": True, "id": 2}]
        assert server.limited["client_request_size"] == 1
        w.close()
        await server.stop()
    asyncio.run(run())


def test_connections_beyond_the_accept_rate_are_reset_as_accepted():
    """A connect flood from many addresses (which per-address limits do not see): beyond
    ``client_accept_rate`` a connection is reset at once, no stream or task made for it, and once
    the flood stops new clients are served again."""
    from ledgerlink.ledger.transport import PortLimits

    served = []

    async def handler(req):
        served.append(req["id"])
        return {"ok": True}

    async def ask(port, i):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            w.write(frame(cbor.dumps({"id": i, "op": "x"})))
            return await asyncio.wait_for(read_frame(r, 1 << 20), 5)
        except (ConnectionError, FrameError):
            return None
        finally:
            w.close()

    async def run():
        port = free_base_port(1)
        server = ClientServer("127.0.0.1", port, handler, limits=PortLimits(client_accept_rate=5.0))
        await server.start()
        answers = [await ask(port, i) for i in range(40)]           # burst 10, then 5 a second
        refused = server.limited["client_accept_rate"]
        await asyncio.sleep(1.0)
        later = await ask(port, 99)
        await server.stop()
        return answers, refused, later

    answers, refused, later = asyncio.run(run())
    assert refused >= 20 and sum(a is None for a in answers) == refused, (refused, answers)
    assert 10 <= len([a for a in answers if a is not None]) <= 20
    assert later is not None and cbor.loads(later)["ok"] and 99 in served
