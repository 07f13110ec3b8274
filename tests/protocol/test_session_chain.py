"""Session chain statements: the device chains its session frames and signs the head; a verifier holding
only the device's public key tells the device's frames from ones sealed by whoever holds the session key."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor, cose
from ledgerlink.protocol import device_protocol as dp, session_chain as sc
from ledgerlink.core.errors import InvalidMessage, InvalidProof, InvalidSignature, LedgerlinkError
from ledgerlink.gateway import checks as c
from tests.protocol.test_device_protocol import protocol, session_reply
from tests.device.helpers import CRYPTO, NOW, Env


def session_device(env: Env) -> dp.DeviceProtocol:
    dev = protocol(env)
    assert isinstance(dev.handle_down(session_reply(env, dev), NOW), dp.SessionOpened)
    return dev


def forge(env: Env, dev: dp.DeviceProtocol, seq: int, meas: dict) -> bytes:
    """A session frame sealed by the gateway with the session key it derived itself."""
    gw = env.gw.sessions[dev.session.keys.session_id]
    body = cbor.dumps({1: dev.device_id, 2: seq, 3: NOW, 4: meas})
    return cose.encrypt0(body, gw.key, dp.partial_iv(seq), gw.base_iv, None, gw.session_id, dev.up_topic.encode(),
                         CRYPTO)


def test_a_statement_covers_exactly_the_devices_session_frames_not_a_forged_one():
    env = Env()
    dev = session_device(env)
    outs = [dev.reading({"i": i}, NOW, dp.MODE_SESSION) for i in range(sc.EVERY_FRAMES)]
    assert dev.chain_due(NOW)
    statement = dev.chain_statement(NOW)
    assert statement.topic == dev.up_topic and not dev.chain_due(NOW) and dev.chain_statement(NOW) is None
    [accept] = env.feed(statement.topic, statement.payload)       # the gateway takes it as a signed reading
    assert isinstance(accept, c.Accept) and accept.chain is not None
    got = sc.verify(statement.payload, dev.public_key, dev.up_topic, CRYPTO)
    assert (got.device_id, got.session_id, got.first, got.last) == (dev.device_id, dev.session.keys.session_id, 1, sc.EVERY_FRAMES)
    frames = [(o.seq, o.payload) for o in outs]
    assert sc.covered(got, frames) == [o.frame_hash for o in outs]
    # the gateway seals a reading of its own under a seq the device never used: no statement covers it,
    # and slipping it into a stated range gives another head
    forged = forge(env, dev, statement.seq + 1, {"i": 99})
    assert CRYPTO.sha256(forged) not in sc.covered(got, frames)
    with pytest.raises(InvalidProof):
        sc.covered(got, frames[:5] + [(6, forge(env, dev, 6, {"i": 99}))] + frames[6:])
    # only the device key signs statements
    with pytest.raises(InvalidSignature):
        sc.verify(statement.payload, CRYPTO.public_key(env.net["actuator"].priv, True), dev.up_topic, CRYPTO)


def test_a_dropped_or_reordered_frame_breaks_the_statement():
    env = Env()
    dev = session_device(env)
    outs = [dev.reading({"i": i}, NOW, dp.MODE_SESSION) for i in range(4)]
    statement = sc.verify(dev.chain_statement(NOW, close=True).payload, dev.public_key, dev.up_topic, CRYPTO)
    frames = [(o.seq, o.payload) for o in outs]
    for bad in (frames[:2] + frames[3:], frames[1:], frames[:3],
                [(frames[1][0], frames[2][1]), (frames[2][0], frames[1][1])] + frames[:1] + frames[3:]):
        with pytest.raises(InvalidProof):
            sc.covered(statement, bad)
    reordered = sc.head_of(statement.session_id, [outs[1].frame_hash, outs[0].frame_hash] +
                           [o.frame_hash for o in outs[2:]])
    assert reordered != statement.head
    assert sc.covered(statement, list(reversed(frames))) == [o.frame_hash for o in outs]   # delivery order is free


def test_statements_are_due_by_count_age_and_session_change_and_skip_signed_frames():
    env = Env()
    dev = session_device(env)
    first = dev.reading({"i": 0}, NOW, dp.MODE_SESSION)
    assert not dev.chain_due(NOW) and dev.chain_due(NOW + sc.EVERY_MS)
    signed = dev.reading({"s": 1}, NOW, dp.MODE_SIGNED)                # not a session frame: not chained
    second = dev.reading({"i": 1}, NOW, dp.MODE_SESSION)
    old = dev.session.keys.session_id
    dev.handle_down(session_reply(env, dev), NOW)                      # the next session
    third = dev.reading({"i": 2}, NOW, dp.MODE_SESSION)
    assert dev.chain_due(NOW)
    a = sc.verify(dev.chain_statement(NOW).payload, dev.public_key, dev.up_topic, CRYPTO)
    assert (a.session_id, a.first, a.last) == (old, first.seq, second.seq)
    frames = [(o.seq, o.payload) for o in (first, signed, second, third)]
    assert sc.covered(a, frames) == [first.frame_hash, second.frame_hash]
    assert not dev.chain_due(NOW) and dev.chain_statement(NOW) is None
    b = sc.verify(dev.chain_statement(NOW, close=True).payload, dev.public_key, dev.up_topic, CRYPTO)
    assert sc.covered(b, frames) == [third.frame_hash]


def test_a_device_that_lost_its_chain_starts_a_new_range():
    env = Env()
    dev = session_device(env)
    for i in range(3):
        dev.reading({"i": i}, NOW, dp.MODE_SESSION)
    dev.chains = None                                                   # memory lost (reset): never stated
    later = dev.reading({"i": 3}, NOW, dp.MODE_SESSION)
    s = sc.verify(dev.chain_statement(NOW, close=True).payload, dev.public_key, dev.up_topic, CRYPTO)
    assert (s.first, s.last) == (later.seq, later.seq)


session_ids = st.binary(min_size=8, max_size=8)
hashes = st.binary(min_size=32, max_size=32)
seqs = st.integers(1, sc.MAX_SEQ)


@settings(max_examples=100, deadline=None)
@given(session_ids, st.lists(hashes, min_size=1, max_size=20), st.integers(1, sc.MAX_SEQ - 40),
       st.integers(0, 2 ** 40), st.integers(0, 1 << 40))
def test_statement_reading_round_trip(sid, frame_hashes, first, t, extra_seq):
    chain = sc.Chain(sid, t)
    for i, h in enumerate(frame_hashes):
        chain.add(first + i, h)
    seq = first + len(frame_hashes) + extra_seq % 7
    if seq > sc.MAX_SEQ:
        seq = first - 1 or sc.MAX_SEQ
    reading = cbor.dumps({1: bytes(16), 2: seq, 3: t, 4: chain.measurements()})
    got = sc.decode(reading)
    assert (got.session_id, got.first, got.last, got.head, got.seq, got.time_ms) == \
        (sid, first, first + len(frame_hashes) - 1, sc.head_of(sid, frame_hashes), seq, t)
    assert cbor.dumps({1: bytes(16), 2: seq, 3: t, 4: {sc.STATEMENT_KEY: [got.session_id, got.first, got.last,
                                                                           got.head]}}) == reading


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=80),
                 st.builds(lambda body: cbor.dumps({1: bytes(16), 2: 9, 3: 1, 4: {sc.STATEMENT_KEY: body}}),
                           st.lists(st.one_of(session_ids, hashes, seqs, st.binary(max_size=40), st.text(max_size=3)),
                                    max_size=5))))
def test_malformed_statements_raise_only_our_errors(data):
    try:
        sc.decode(data)
    except LedgerlinkError:
        return
    got = sc.decode(data)                   # accepted: then it is well formed
    assert len(got.session_id) == 8 and len(got.head) == 32 and got.first <= got.last


@pytest.mark.parametrize("body", [
    [bytes(8), 5, 4, bytes(32)],                    # first > last
    [bytes(8), 0, 4, bytes(32)],                    # seq 0
    [bytes(7), 1, 4, bytes(32)],
    [bytes(8), 1, 4, bytes(31)],
    [bytes(8), 1, 2 + sc.MAX_SPAN, bytes(32)],       # too wide for the gateway to look up
    [bytes(8), 1, 20, bytes(32)],                   # covers its own seq (9)
])
def test_bad_statement_fields_are_refused(body):
    with pytest.raises(InvalidMessage):
        sc.decode(cbor.dumps({1: bytes(16), 2: 9, 3: 1, 4: {sc.STATEMENT_KEY: body}}))
