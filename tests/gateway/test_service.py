"""GatewayService: durable append before the ack decision, and state restored after a restart."""

from __future__ import annotations

import sqlite3

import pytest

from ledgerlink.core import cbor, cose, ecqv
from ledgerlink.protocol import stored_ack
from ledgerlink.core.backend import get_backend
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.service import GatewayService, fetch_header, fetch_registry
from ledgerlink.gateway.store import Store
from tests.devnet import DevNet

from tests.gateway.fake_ledger import FakeLedgerAdapter
from tests.gateway.test_checks import NOW, SITE, _device_keys, reading, session_reading, up

CRYPTO = get_backend("cpython")


def make(ledger: FakeLedgerAdapter, path) -> GatewayService:
    net = ledger.net
    keys = c.GatewayKeys(net["gateway"].priv, net["gw-ca"].priv, net["gw-site"].priv)
    core = c.GatewayCore(SITE, keys, net.chain_id, ledger.keys, backend=CRYPTO)
    svc = GatewayService(core, Store(path))
    svc.restore(NOW)
    return svc


def run(svc: GatewayService, ledger: FakeLedgerAdapter, topic: str, frame: bytes):
    h = svc.handle_frame(topic, frame, NOW)
    for dev in h.fetch:
        more = svc.handle_registry(dev, fetch_registry(ledger, dev), NOW)
        h.outgoing += more.outgoing
        h.decided += more.decided
    return h


def test_accepted_frames_are_stored_before_they_are_decided(tmp_path):
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    svc = make(ledger, tmp_path / "gw.db")
    net = ledger.net
    frame = reading(net, "sensor", 1)
    h = run(svc, ledger, up(net["sensor"].id), frame)
    assert h.decided == [CRYPTO.sha256(frame)]
    assert svc.store.blob(CRYPTO.sha256(frame)) == frame and svc.store.stats()["unbatched"] == 1
    verified = [o for o in h.outgoing if o.topic == "ll/%s/verified/%s" % (SITE, net["sensor"].id.hex())]
    assert cbor.loads(verified[0].payload)[5] == CRYPTO.sha256(frame)
    # a refusal is decided too, queued as a warning, and answered on the down topic
    bad = reading(net, "sensor", 2, key="actuator")
    h = run(svc, ledger, up(net["sensor"].id), bad)
    assert h.decided == [CRYPTO.sha256(bad)] and svc.store.stats()["warnings"] == {"queued": 1}
    assert [cbor.loads(o.payload)[2] for o in h.outgoing if o.topic.endswith("/down")] == [c.BAD_SIGNATURE]
    # a frame waiting for the registry is not decided yet
    held = svc.handle_frame(up(net["actuator"].id), reading(net, "actuator", 1), NOW)
    assert held.decided == [] and held.fetch == [net["actuator"].id]


def test_restart_keeps_replay_windows_and_sessions(tmp_path):
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    svc = make(ledger, tmp_path / "gw.db")
    first = reading(net, "sensor", 5)
    run(svc, ledger, up(net["sensor"].id), first)
    secret, r_u = ecqv.create_request()
    dev = net["sensor"].id
    stopic = "ll/%s/dev/%s/session" % (SITE, dev.hex())
    req = cose.sign1(cbor.dumps({1: dev, 2: r_u, 3: b"z" * 16, 4: NOW}), net["sensor"].priv, dev, stopic.encode(),
                     CRYPTO)
    h = run(svc, ledger, stopic, req)
    assert h.decided == [CRYPTO.sha256(req)]
    reply = [o for o in h.outgoing if o.topic.endswith("/down")][0]
    svc.store.close()

    svc2 = make(ledger, tmp_path / "gw.db")
    assert fetch_header(ledger) is not None
    h = run(svc2, ledger, up(dev), first)                        # stored: answered with its ack, not stored again
    assert [cbor.loads(o.payload)[0] for o in h.outgoing if o.topic.endswith("/down")] == [stored_ack.KIND_STORED]
    h = run(svc2, ledger, up(dev), reading(net, "sensor", 5, meas={"other": 1}))
    assert [cbor.loads(o.payload)[2] for o in h.outgoing if o.topic.endswith("/down")] == [c.REPLAY]
    env = type("E", (), {"net": net, "core": svc2.core})
    keys = _device_keys(env, "sensor", secret, reply.payload)
    h = run(svc2, ledger, up(dev), session_reading(keys, dev, 6))
    assert len(h.decided) == 1 and svc2.store.stats()["unbatched"] == 2


def test_a_group_of_inputs_is_committed_in_one_transaction_before_it_is_decided(tmp_path):
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    svc = make(ledger, tmp_path / "gw.db")
    net = ledger.net
    dev = net["sensor"].id
    run(svc, ledger, up(dev), reading(net, "sensor", 1))
    statements: list[str] = []
    svc.store.db.set_trace_callback(statements.append)
    group = [reading(net, "sensor", s) for s in (2, 3, 4)] + [reading(net, "sensor", 5, key="actuator")]
    h = svc.handle_many([("frame", up(dev), f) for f in group] + [("tick",)], NOW)
    assert [s for s in statements if s.strip().upper() == "COMMIT"] == ["COMMIT"]
    assert h.decided == [CRYPTO.sha256(f) for f in group]
    assert svc.store.stats()["unbatched"] == 4 and svc.store.stats()["warnings"] == {"queued": 1}
    assert all(svc.store.blob(CRYPTO.sha256(f)) == f for f in group[:3])
    # when the store cannot commit, nothing of the group is decided (the transport acks nothing)
    svc.store.db.close()
    with pytest.raises(sqlite3.ProgrammingError):
        svc.handle_many([("frame", up(dev), reading(net, "sensor", 6))], NOW)
