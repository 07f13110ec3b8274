"""End-to-end delivery of the MicroPython client (micropython/ledgerlink_client), run under CPython against
the real gateway service (checks, store with stored-acks and receipts on demand) through a fake MQTT link:
a frame leaves the flash queue only when the gateway stored it, a backlog drains under the gateway's rate
limit, and frames awaiting receipts are kept on the storage, beyond the RAM list and across a reset."""

from __future__ import annotations

import os
import sys

from ledgerlink.core import cbor, merkle
from ledgerlink.protocol import stored_ack
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.service import GatewayService, fetch_registry, sign_statement
from ledgerlink.gateway.store import Store

from tests.conftest import PROJECT_ROOT
from tests.device.helpers import CRYPTO, NOW, BoardLink, Clock, Env

sys.path.insert(0, str(PROJECT_ROOT / "micropython"))

from ledgerlink_client import device  # noqa: E402
from ledgerlink_client.queue import MemoryStorage  # noqa: E402


class Link(BoardLink):
    """The broker and the gateway service: a publish gets its PUBACK (when ``gateway_up``: the gateway
    checks and stores it, and its replies come back on the next poll). Time is the test's clock."""

    def __init__(self, env: Env, service: GatewayService, clock: Clock) -> None:
        super().__init__(clock)
        self.env = env
        self.service = service
        self.gateway_up = True
        self.published: list = []

    def deliver(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))            # the broker takes it either way
        if self.gateway_up:
            now = NOW + self.clock.now
            h = self.service.handle_frame(topic, payload, now)
            for dev in h.fetch:
                more = self.service.handle_registry(dev, fetch_registry(self.env.ledger, dev), now)
                h.outgoing += more.outgoing
            self.events += [("msg", o.topic, o.payload) for o in h.outgoing if o.topic.endswith("/down")]


def setup(tmp_path, limits: c.Limits | None = None):
    env = Env()
    net = env.net
    keys = c.GatewayKeys(net["gateway"].priv, net["gw-ca"].priv, net["gw-site"].priv)
    core = c.GatewayCore(env.gw.site, keys, net.chain_id, env.ledger.keys, limits or c.Limits(), backend=CRYPTO)
    service = GatewayService(core, Store(tmp_path / "gw.db"))
    service.restore(NOW)
    return env, service


def board(env: Env, service: GatewayService, storage, clock: Clock, link: list, **cfg):
    gw = env.net["gateway"]
    config = {"site": env.gw.site, "identity_key": env.net["sensor"].priv, "mode": "signed",
              "chain_id": env.net.chain_id, "validators": list(env.ledger.keys),
              "gateway_keys": {gw.id: CRYPTO.public_key(gw.priv, True)}, "backoff_min_ms": 100,
              "backoff_max_ms": 400, "keepalive_s": 60}
    config.update(cfg)

    def factory():
        link.append(Link(env, service, clock))
        return link[-1]

    return device.DeviceClient(config, factory, storage=storage, ticks_ms=clock.ticks, ticks_diff=lambda a, b: a - b,
                               time_ms=lambda: NOW + clock.now, sleep_ms=clock.sleep, rng=os.urandom, backend=CRYPTO)


def ack_reply(device_id: bytes, site: str, seq: int, frame_hash: bytes, gateway_priv: bytes | None = None) -> bytes:
    """A gateway's stored-ack of one frame (a commit group of one), signed by ``gateway_priv`` (a fixed test
    key by default: for clients that know no gateway keys)."""
    priv = gateway_priv or bytes(31) + b"\x07"
    gateway_id = CRYPTO.sha256(CRYPTO.public_key(priv, True))[:16]
    root = merkle.leaf_hash(stored_ack.entry(device_id, seq, frame_hash))
    statement = sign_statement(root, 1, NOW, priv, gateway_id, site, CRYPTO)
    return cbor.dumps({0: stored_ack.KIND_STORED, 1: frame_hash, 2: seq, 3: 0, 4: [], 5: statement})


def stored_seqs(service: GatewayService) -> list[int]:
    return sorted(m.seq for m in service.store.unbatched(10_000))


def test_a_frame_the_broker_took_stays_queued_until_the_gateway_stores_it(tmp_path):
    env, service = setup(tmp_path)
    clock, link = Clock(), []
    client = board(env, service, MemoryStorage(), clock, link, ack_timeout_ms=2000)
    client.step(0)
    link[0].gateway_up = False                        # broker up, no gateway subscribed: PUBACK, then nothing
    for i in range(3):
        client.publish({"i": i})
    for _ in range(5):
        client.step(50)
    assert client.stats["acked"] == 3 and client.pending() == 3
    link[0].gateway_up = True
    assert client.flush(20_000)
    assert stored_seqs(service) == [1, 2, 3] and client.stats["stored"] == 3 and client.stats["resent"] >= 3


def test_a_backlog_drains_under_the_gateway_rate_limit(tmp_path):
    env, service = setup(tmp_path)                    # the default limit: 10/s, burst 20
    clock, link = Clock(), []
    client = board(env, service, MemoryStorage(), clock, link, queue_frames=64)
    for i in range(40):
        client.publish({"i": i})
    assert client.flush(60_000)
    assert stored_seqs(service) == list(range(1, 41)) and client.stats["refused_for_good"] == 0


def test_awaiting_frames_outlast_the_ram_list_and_a_reset(tmp_path):
    env, service = setup(tmp_path)
    storage, clock, link = MemoryStorage(), Clock(), []
    client = board(env, service, storage, clock, link)
    for i in range(80):                               # more than max_tracked (64)
        client.publish({"i": i})
    assert client.flush(60_000)
    frames = [payload for topic, payload in link[-1].published if topic == client.topic_up]
    client = board(env, service, storage, clock, link)   # a reset: RAM is gone, the storage stays
    client.step(0)
    receipts = env.receipts([CRYPTO.sha256(f) for f in frames[:80]], list(range(1, 81)))
    for r in receipts:
        link[-1].events.append(("msg", client.topic_down, cbor.dumps(r)))
    while link[-1].events:
        client.step(0)
    assert client.stats["receipts_valid"] == 80 and client.stats["receipts_invalid"] == 0
    assert len(client.delivery.queue) == 0 and len(client.delivery.kept) == 32


def test_an_ack_made_for_one_frame_is_checked_like_the_gateways(tmp_path):
    env, _ = setup(tmp_path)
    gw = env.net["gateway"]
    dev, site = env.net["sensor"].id, env.gw.site
    ack = cbor.loads(ack_reply(dev, site, 3, bytes(32), gw.priv))
    assert stored_ack.check(ack, dev, site, {gw.id: CRYPTO.public_key(gw.priv, True)}, CRYPTO).seq == 3
