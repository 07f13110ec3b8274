"""VerifyAhead: signatures checked ahead on threads change no decision of the gateway checks."""

from __future__ import annotations

import os

from hypothesis import given, settings, strategies as st

from ledgerlink.core.backend import get_backend
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.service import GatewayService
from ledgerlink.gateway.store import Store
from ledgerlink.gateway.verify_ahead import VerifyAhead
from tests.devnet import DevNet

from tests.gateway.fake_ledger import FakeLedgerAdapter
from tests.gateway.test_checks import NOW, SITE, reading, up
from tests.gateway.test_service import run

CRYPTO = get_backend("cpython")


def _service(ledger: FakeLedgerAdapter, threads: int) -> GatewayService:
    net = ledger.net
    keys = c.GatewayKeys(net["gateway"].priv, net["gw-ca"].priv, net["gw-site"].priv)
    limits = c.Limits(rate_per_s=1e6, burst=1e6)
    core = c.GatewayCore(SITE, keys, net.chain_id, ledger.keys, limits, backend=CRYPTO)
    svc = GatewayService(core, Store(":memory:"), verify_threads=threads)
    svc.restore(NOW)
    return svc


def _outcome(h) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """Everything published (republished readings, refusals with their codes) and the frames decided."""
    return [(o.topic, o.payload) for o in h.outgoing], h.decided


def test_answers_only_the_exact_check_it_was_primed_with():
    priv = CRYPTO.generate_private_key()
    pub = CRYPTO.public_key(priv, True)
    msgs = [os.urandom(40) for _ in range(8)]
    sigs = [CRYPTO.sign(priv, m) for m in msgs]
    va = VerifyAhead(CRYPTO, 2)
    try:
        bad = bytes([sigs[1][0] ^ 1]) + sigs[1][1:]
        va.prime([(pub, m, s) for m, s in zip(msgs, sigs)] + [(pub, msgs[1], bad)])
        assert va.primed == 9
        assert va.verify(pub, msgs[0], sigs[0]) is True
        assert va.verify(pub, msgs[1], bad) is False
        # same key and signature, another message: not answered from the primed result
        assert va.verify(pub, msgs[3], sigs[2]) is False
        assert va.answered == 2
        # a result is used once; the next call verifies for itself
        assert va.verify(pub, msgs[0], sigs[0]) is True and va.answered == 2
        # the next group's prime drops what the last one left
        va.prime([])
        assert va.verify(pub, msgs[4], sigs[4]) is True and va.answered == 2
        assert va.public_key(priv, True) == pub                      # everything else is the backend's
    finally:
        va.close()


def test_signed_readings_are_checked_ahead_and_decided_as_without_it():
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    plain, ahead = _service(ledger, 1), _service(ledger, 2)
    assert ahead.verifier is not None and plain.verifier is None
    sensor, actuator = net["sensor"].id, net["actuator"].id
    for svc in (plain, ahead):                 # first contact: registry proofs fetched, frames decided
        run(svc, ledger, up(sensor), reading(net, "sensor", 1))
        run(svc, ledger, up(actuator), reading(net, "actuator", 1))
    frames = []
    for seq in range(2, 12):
        frames.append(("frame", up(sensor), reading(net, "sensor", seq)))
        frames.append(("frame", up(actuator), reading(net, "actuator", seq)))
    altered = bytearray(reading(net, "sensor", 20))
    altered[-70] ^= 1
    frames += [("frame", up(sensor), bytes(altered)),                              # bad signature
               ("frame", up(sensor), reading(net, "sensor", 21, key="actuator")),  # another device's key
               ("frame", up(actuator), reading(net, "sensor", 22)),                # kid is not the topic's
               ("frame", up(sensor), reading(net, "sensor", 5, meas={"x": 1})),    # replay of a taken seq
               ("frame", up(sensor), b"\xd2\x84junk")]
    a, b = plain.handle_many(frames, NOW), ahead.handle_many(frames, NOW)
    assert _outcome(a) == _outcome(b)
    assert [cbor_code(o) for o in a.outgoing if o.topic.endswith("/down") and o.payload[:3] == b"\xa4\x00\x02"] == \
        [c.BAD_SIGNATURE, c.BAD_SIGNATURE, c.WRONG_TOPIC, c.REPLAY, c.MALFORMED]
    # checked ahead: all but the junk and the kid mismatch (the replay is another frame under seq 5)
    assert ahead.verifier.primed == 23 and ahead.verifier.answered == 23
    # a ban in the registry cache: that device's frames are no longer checked ahead
    ahead.core.registry[actuator].record = None
    before = ahead.verifier.primed
    ahead.handle_many([("frame", up(actuator), reading(net, "actuator", 30)),
                       ("frame", up(sensor), reading(net, "sensor", 30))], NOW)
    assert ahead.verifier.primed == before + 1


def cbor_code(o) -> int:
    from ledgerlink.core import cbor
    return cbor.loads(o.payload)[2]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 40), st.integers(-1, 120)), min_size=1, max_size=12))
def test_mutated_groups_decide_the_same(plan):
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    plain, ahead = _service(ledger, 1), _service(ledger, 3)
    sensor = net["sensor"].id
    for svc in (plain, ahead):
        run(svc, ledger, up(sensor), reading(net, "sensor", 1))
    frames = []
    for kind, seq, flip in plan:
        f = bytearray(reading(net, "sensor", seq + 1, key="sensor" if kind else "actuator"))
        if 0 <= flip < len(f) and kind == 2:
            f[flip] ^= 0x40
        frames.append(("frame", up(sensor), bytes(f)))
    assert _outcome(plain.handle_many(frames, NOW)) == _outcome(ahead.handle_many(frames, NOW))
