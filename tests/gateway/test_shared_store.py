"""Two gateway processes of one site sharing one store file: sessions known to both, a sequence
number accepted once across both, each process batching only its own messages."""

from __future__ import annotations

from ledgerlink.core import cbor, cose, ecqv, session_keys
from ledgerlink.protocol import stored_ack
from ledgerlink.core.backend import get_backend
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.batcher import Batcher
from ledgerlink.gateway.service import GatewayService
from ledgerlink.gateway.store import Store
from tests.devnet import DevNet

from tests.gateway.fake_ledger import FakeLedgerAdapter
from tests.gateway.test_checks import NOW, SITE, _device_keys, reading, session_reading, up
from tests.gateway.test_service import run

CRYPTO = get_backend("cpython")


def process(ledger: FakeLedgerAdapter, path, owner: str) -> GatewayService:
    net = ledger.net
    keys = c.GatewayKeys(net["gateway"].priv, net["gw-ca"].priv, net["gw-site"].priv)
    svc = GatewayService(c.GatewayCore(SITE, keys, net.chain_id, ledger.keys, backend=CRYPTO), Store(path, owner))
    svc.restore(NOW)
    return svc


def codes(h) -> list[int]:
    """Reason codes of the refusals among the replies."""
    return [m[2] for m in (cbor.loads(o.payload) for o in h.outgoing if o.topic.endswith("/down")) if m[0] == c.KIND_REFUSAL]


def acked(h) -> list[int]:
    """Seqs of the stored-acks among the replies."""
    return [m[2] for m in (cbor.loads(o.payload) for o in h.outgoing if o.topic.endswith("/down"))
            if m[0] == stored_ack.KIND_STORED]


def verified(h) -> list[bytes]:
    return [o.payload for o in h.outgoing if "/verified/" in o.topic]


def test_session_opened_through_one_process_is_known_to_the_other(tmp_path):
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    a, b = process(ledger, tmp_path / "site.db", "gw-a"), process(ledger, tmp_path / "site.db", "gw-b")
    dev = net["sensor"].id
    secret, r_u = ecqv.create_request()
    stopic = "ll/%s/dev/%s/session" % (SITE, dev.hex())
    req = cose.sign1(cbor.dumps({1: dev, 2: r_u, 3: b"n" * 16, 4: NOW}), net["sensor"].priv, dev, stopic.encode(),
                     CRYPTO)
    reply = [o for o in run(a, ledger, stopic, req).outgoing if o.topic.endswith("/down")][0]
    keys = _device_keys(type("E", (), {"net": net, "core": a.core}), "sensor", secret, reply.payload)
    assert keys.session_id not in b.core.sessions
    h = run(b, ledger, up(dev), session_reading(keys, dev, 1))
    assert len(verified(h)) == 1 and codes(h) == []
    assert keys.session_id in b.core.sessions
    # an unknown session id is still refused
    other = session_keys.SessionKeys(keys.key, keys.base_iv, b"\x00" * 8)
    assert codes(run(b, ledger, up(dev), session_reading(other, dev, 2))) == [c.UNKNOWN_SESSION]


def test_a_sequence_number_is_accepted_once_across_processes(tmp_path):
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    a, b = process(ledger, tmp_path / "site.db", "gw-a"), process(ledger, tmp_path / "site.db", "gw-b")
    dev = net["sensor"].id
    frame = reading(net, "sensor", 7)
    assert len(verified(run(a, ledger, up(dev), frame))) == 1
    # the same frame replayed to the other process: answered with its ack, not republished, decided
    h = run(b, ledger, up(dev), frame)
    assert verified(h) == [] and codes(h) == [] and acked(h) == [7] and h.decided == [CRYPTO.sha256(frame)]
    assert b.store.stats()["warnings"] == {}                  # a redelivery of a stored frame: not reported
    # another frame under the taken sequence number: refused and reported
    forged = reading(net, "sensor", 7, meas={"t": 99})
    c2 = process(ledger, tmp_path / "site.db", "gw-c")
    h = run(c2, ledger, up(dev), forged)
    assert verified(h) == [] and codes(h) == [c.REPLAY] and c2.store.stats()["warnings"] == {"queued": 1}
    # both processes take the same new number in one group each: one is accepted
    n8a, n8b = reading(net, "sensor", 8), reading(net, "sensor", 8, meas={"x": 1})
    ha, hb = run(a, ledger, up(dev), n8a), run(b, ledger, up(dev), n8b)
    assert len(verified(ha)) + len(verified(hb)) == 1


def test_each_process_batches_only_its_own_messages(tmp_path):
    ledger = FakeLedgerAdapter(clock=lambda: NOW)
    net = ledger.net
    a, b = process(ledger, tmp_path / "site.db", "gw-a"), process(ledger, tmp_path / "site.db", "gw-b")
    dev = net["sensor"].id
    for seq, svc in ((1, a), (2, b), (3, a)):
        run(svc, ledger, up(dev), reading(net, "sensor", seq))
    assert [m.seq for m in a.store.unbatched(10)] == [1, 3] and [m.seq for m in b.store.unbatched(10)] == [2]
    batcher = Batcher(a.store, ledger, SITE, ledger.chain_id, ledger.keys, net["gateway"].priv)
    batcher.step(NOW + 1000)
    batcher.step(NOW + 2000)
    assert a.store.unbatched(10) == [] and [m.seq for m in b.store.unbatched(10)] == [2]
    assert [x.count for x in a.store.batches("anchored")] == [2] and b.store.batches("anchored") == []
    # a restarted process with the same owner name finds its rows again
    b2 = process(ledger, tmp_path / "site.db", "gw-b")
    assert [m.seq for m in b2.store.unbatched(10)] == [2]
