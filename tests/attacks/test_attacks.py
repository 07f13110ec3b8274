"""Attacks on a live site: the attacker publishes straight to the broker (MQTT 5) and the gateway refuses.

Each test checks the reason code of the refusal on the device's down topic, that the bad frame was not
republished on the verified topic, got no receipt and is not in the gateway's store (so it is in no
anchored batch), that ``/metrics`` counted it under its reason, and that a good device is still served
(republished reading with a receipt that verifies as a device checks it).
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor, cose
from ledgerlink.protocol import stored_ack
from ledgerlink.gateway import checks as c
from tests.attacks.conftest import CRYPTO, LIMITS, SITE, Dev, now_ms, sha256


@pytest.fixture(scope="module")
def devs(register):
    names = ["good", "victim", "other", "replayer", "banned", "flooder", "bystander", "malformed", "big", "fuzz"]
    return dict(zip(names, register(len(names))))


def _delta(before: dict[int, float], after: dict[int, float], code: int) -> float:
    return after.get(code, 0) - before.get(code, 0)


def test_good_device_served(net, devs):
    net.assert_served(devs["good"], 2)


def test_altered_payload_and_swapped_topic(net, devs):
    victim, other = devs["victim"], devs["other"]
    net.assert_served(victim)
    before = net.refused_counts()
    frame = victim.reading({"t": 1000})
    flipped = bytearray(frame)
    flipped[frame.index(b"\x19\x03\xe8") + 2] ^= 0x01          # t = 1000 -> 1001, CBOR still valid
    net.publish(victim.up, bytes(flipped))
    net.assert_refused(bytes(flipped), c.BAD_SIGNATURE)
    sig_flipped = bytearray(frame)
    sig_flipped[-1] ^= 0x80
    net.publish(victim.up, bytes(sig_flipped))
    net.assert_refused(bytes(sig_flipped), c.BAD_SIGNATURE)
    net.publish(other.up, frame)                                 # the real frame moved to another device
    r = net.assert_refused(frame, c.WRONG_TOPIC)
    assert r in net.replies(other.down)
    moved = victim.reading({"t": 5})
    session_topic = victim.up[:-len("up")] + "session"
    net.publish(session_topic, moved)                            # the signature covers the topic
    net.assert_refused(moved, c.BAD_SIGNATURE)
    after = net.wait(lambda: (lambda a: a if _delta(before, a, c.BAD_SIGNATURE) >= 3 else None)(net.refused_counts()))
    assert _delta(before, after, c.WRONG_TOPIC) >= 1
    net.publish(victim.up, frame)                               # the untouched frame on its own topic is fine
    net.wait(lambda: net.verified_of(frame), what="original frame accepted")
    net.assert_served(victim)


def test_replayed_frames(net, devs):
    d = devs["replayer"]
    frames = [d.reading({"n": i}) for i in range(3)]
    for f in frames:
        net.publish(d.up, f)
    for f in frames:
        net.wait(lambda: net.receipt_of(f), 15, "receipt")
    acks = lambda f: [x for x in net.replies(d.down) if x[0] == stored_ack.KIND_STORED and x[1] == sha256(f)]  # noqa: E731
    net.publish(d.up, frames[0])                                 # the same frame again: stored once, its ack again
    net.wait(lambda: len(acks(frames[0])) >= 2)
    newer = [d.reading({"n": 10 + i}) for i in range(2)]
    for f in newer:
        net.publish(d.up, f)
    net.wait(lambda: net.verified_of(newer[-1]))
    net.publish(d.up, frames[1])                                 # an old frame after newer ones
    net.wait(lambda: len(acks(frames[1])) >= 2)
    assert not [x for x in net.replies(d.down) if x[0] == 2 and x[1] in (sha256(frames[0]), sha256(frames[1]))]
    # a frame never sent but below the sliding window
    old = d.reading({"n": "old"})
    d.core.counter.last = d.core.counter.mark = d.core.counter.last + LIMITS_WINDOW + 10
    jump = d.reading({"n": "jump"})
    net.publish(d.up, jump)
    net.wait(lambda: net.verified_of(jump))
    net.publish(d.up, old)
    net.assert_refused(old, c.REPLAY)
    assert net.refused_counts().get(c.REPLAY, 0) >= 1
    net.assert_served(d)


LIMITS_WINDOW = 64


def test_wrong_key_impersonation(net, devs):
    victim = devs["victim"]
    attacker = CRYPTO.generate_private_key()
    body = {1: victim.id, 2: 10_000, 3: now_ms(), 4: {"t": -40}}
    forged = victim.signed(body, priv=attacker)                  # victim's kid and topic, attacker's key
    net.publish(victim.up, forged)
    net.assert_refused(forged, c.BAD_SIGNATURE)
    session_topic = victim.up[:-len("up")] + "session"
    req = victim.signed({1: victim.id, 2: CRYPTO.public_key(attacker, True), 3: os.urandom(16), 4: now_ms()},
                        session_topic, priv=attacker)
    net.publish(session_topic, req)                              # a session for the victim, asked with another key
    net.assert_refused(req, c.BAD_SIGNATURE)
    assert not any(x[0] == 3 for x in net.replies(victim.down))
    net.assert_served(victim)


def test_unregistered_device(net, stack, devs):
    stranger = Dev(stack)
    before = net.refused_counts()
    frames = [stranger.reading() for _ in range(2)]
    for f in frames:
        net.publish(stranger.up, f)
    for f in frames:
        net.assert_refused(f, c.UNKNOWN_DEVICE)
    net.wait(lambda: _delta(before, net.refused_counts(), c.UNKNOWN_DEVICE) >= 2)
    net.assert_served(devs["good"])


def test_banned_device(net, stack, devs):
    d = devs["banned"]
    net.assert_served(d)
    stack.ban(d.id, "attack suite: tampering")
    deadline = time.monotonic() + 10
    refused = None
    while refused is None and time.monotonic() < deadline:       # the gateway refetches within registry_ttl_ms
        f = d.reading()
        net.publish(d.up, f)
        got = net.wait(lambda: net.refusal_of(f) or net.verified_of(f), 10)
        if got.get(0) == 2:
            refused = f
        time.sleep(LIMITS["registry_ttl_ms"] / 2000)
    assert refused is not None, "ban did not take effect"
    net.assert_refused(refused, c.BANNED_DEVICE)
    later = [d.reading() for _ in range(3)]
    for f in later:
        net.publish(d.up, f)
    for f in later:
        net.assert_refused(f, c.BANNED_DEVICE)
    net.assert_served(devs["good"])


def test_flood_from_one_device(net, devs):
    flooder, other = devs["flooder"], devs["bystander"]
    net.assert_served(flooder)                                   # registry cached; bucket partly used
    time.sleep(LIMITS["burst"] / LIMITS["rate_per_s"])           # full bucket again
    flood = [flooder.reading({"i": i}) for i in range(60)]
    calm = [other.reading({"i": i}) for i in range(4)]
    started = time.monotonic()
    for i, f in enumerate(flood):
        net.publish(flooder.up, f, wait=False)
        if i % 15 == 0:
            net.publish(other.up, calm[i // 15], wait=False)
    for f in flood:
        net.wait(lambda: net.refusal_of(f) or net.verified_of(f), 20, "flood frame decided")
    elapsed = time.monotonic() - started
    accepted = [f for f in flood if net.verified_of(f)]
    refused = [net.refusal_of(f) for f in flood if not net.verified_of(f)]
    assert {r[2] for r in refused} == {c.RATE_LIMITED}
    assert len(accepted) <= LIMITS["burst"] + LIMITS["rate_per_s"] * elapsed + 1
    assert len(refused) >= len(flood) - LIMITS["burst"] - LIMITS["rate_per_s"] * elapsed - 1
    for f in flood:
        if not net.verified_of(f):
            assert net.receipt_of(f) is None and not net.stored(f)
    for f in calm:                                               # the other device kept its budget
        net.wait(lambda: net.receipt_of(f), 15, "bystander receipt")
        assert other.core.verify_receipt(net.receipt_of(f), f).valid
    assert not [x for x in net.replies(other.down) if x[0] == 2]


def test_malformed_frames(net, devs):
    d = devs["malformed"]
    net.assert_served(d)
    before = net.refused_counts()
    bad = [
        b"",
        b"\x00hello",
        cbor.dumps({1: 2}),
        cbor.dumps(cbor.Tag(18, [b"", {}, b"x", b"y"])),
        d.signed([1, 2, 3]),                                     # signed, but not a reading
        d.signed({1: d.id, 2: 0, 3: now_ms(), 4: {}}),           # seq 0
        d.signed({1: d.id, 2: 5000, 3: now_ms(), 4: {"t": 1}, 5: 0}),   # extra key
        d.signed(b"\xa1\x01\x01\x00"),                           # trailing byte in the payload
        d.reading()[:-10],                                       # truncated
        cose.sign1(cbor.dumps({1: d.id, 2: 5001, 3: now_ms(), 4: {}}), d.priv, d.id[:8], d.up.encode(), CRYPTO),
    ]
    for f in bad:
        net.publish(d.up, f)
    for f in bad:
        net.assert_refused(f, c.MALFORMED)
    net.wait(lambda: _delta(before, net.refused_counts(), c.MALFORMED) >= len(set(bad)))
    net.assert_served(d)


def test_oversized_frames(net, devs):
    d = devs["big"]
    before = net.refused_counts()
    fits = d.reading({"pad": "x" * 3900})
    assert len(fits) <= 4096
    big = _sign1_unlimited(d, {1: d.id, 2: 9000, 3: now_ms(), 4: {"pad": "x" * 4100}})
    assert len(big) > 4096
    noise = os.urandom(64 * 1024)
    for f in (big, noise):
        net.publish(d.up, f)
        net.assert_refused(f, c.OVERSIZED)
    net.wait(lambda: _delta(before, net.refused_counts(), c.OVERSIZED) >= 2)
    net.publish(d.up, fits)                                      # the limit is 4096, not less
    net.wait(lambda: net.receipt_of(fits), 15, "receipt of a 4 KB frame")
    net.assert_served(d)


def _sign1_unlimited(d: Dev, reading: dict) -> bytes:
    """A correctly signed COSE_Sign1 reading of any size (``cose.sign1`` itself stops at 4096 bytes)."""
    protected, payload = cbor.dumps({1: -7}), cbor.dumps(reading)
    tbs = cbor.dumps(["Signature1", protected, d.up.encode(), payload])
    return cbor.dumps(cbor.Tag(18, [protected, {4: d.id}, payload, CRYPTO.sign(d.priv, tbs)]))


def _mutate(frame: bytes, data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
    b = bytearray(frame)
    i = data.draw(st.integers(0, len(b) - 1))
    if kind == "flip":
        b[i] ^= data.draw(st.integers(1, 255))
    elif kind == "insert":
        b[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    elif kind == "delete":
        del b[i:i + data.draw(st.integers(1, 8))]
    elif kind == "truncate":
        b = b[:i]
    else:
        b[i:i + 4] = data.draw(st.binary(min_size=5, max_size=12))
    return bytes(b)


def test_fuzzed_stream(net, stack, devs):
    d, good = devs["fuzz"], devs["good"]
    seeds = [d.reading({"f": i}) for i in range(4)]              # real frames, never published as they are
    targets = [d.id, devs["victim"].id, devs["other"].id]
    sent: list[tuple[str, bytes]] = []

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.data())
    def run(data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(["random", "mutated", "moved"]))
        if kind == "random":
            payload = data.draw(st.binary(max_size=600))
        else:
            payload = data.draw(st.sampled_from(seeds))
            if kind == "mutated":
                payload = _mutate(payload, data)
        dev = data.draw(st.one_of(st.sampled_from(targets), st.binary(min_size=16, max_size=16)))
        leaf = data.draw(st.sampled_from(["up", "session"]))
        topic = "ll/%s/dev/%s/%s" % (SITE, dev.hex(), leaf)
        if payload in seeds and topic == d.up:
            topic = "ll/%s/dev/%s/up" % (SITE, devs["other"].id.hex())
        sent.append((topic, payload))
        net.publish(topic, payload, wait=False)

    run()
    assert len(sent) >= 200
    hashes = {sha256(p) for _, p in sent}
    for _, p in sent:
        net.wait(lambda: net.refusal_of(p), 30, "a refusal of every fuzzed frame")
    assert stack.gateway.poll() is None
    snapshot = net.snapshot()
    assert not [1 for t, p in snapshot if "/verified/" in t and cbor.loads(p)[5] in hashes]
    assert not [1 for t, p in snapshot if t.endswith("/down") and cbor.loads(p).get(0) == 1 and cbor.loads(p)[1] in hashes]
    assert not any(net.stored(p) for _, p in sent)
    net.assert_served(good)
    net.assert_served(d)
