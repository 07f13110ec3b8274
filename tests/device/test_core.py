"""DeviceCore against the gateway's checks, COSE verification, ledger proofs and certified headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor, cose, ecqv, session_keys
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.core.errors import InvalidProof
from ledgerlink.device import core as dc
from ledgerlink.gateway import checks as c
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import Role

from tests.device.helpers import CRYPTO, NOW, SITE, Env


@pytest.fixture()
def env() -> Env:
    return Env()


def test_device_id_and_topics(env):
    dev = env.device()
    assert dev.device_id == env.net["sensor"].id == enc.device_id(dev.public_key)
    assert dev.up_topic == "ll/%s/dev/%s/up" % (SITE, env.net["sensor"].id.hex())
    assert dev.cmd_topic.endswith("/cmd") and dev.down_topic.endswith("/down")


def test_signed_reading_verifies_on_the_gateway_side(env):
    dev = env.device()
    out = dev.reading({"t": 21.5, "rh": 40}, NOW)
    payload = cose.verify_sign1(out.payload, env.net["sensor"].pub, out.topic.encode(), CRYPTO)
    assert cbor.loads(payload) == {1: dev.device_id, 2: 1, 3: NOW, 4: {"t": 21.5, "rh": 40}}
    assert cose.sign1_kid(out.payload) == dev.device_id
    with pytest.raises(Exception):
        cose.verify_sign1(out.payload, env.net["sensor"].pub, b"ll/other/topic", CRYPTO)
    [accept] = env.feed(out.topic, out.payload)
    assert isinstance(accept, c.Accept) and accept.seq == 1 and accept.mode == "sign1"
    assert accept.frame_hash == out.frame_hash


def test_registration_request_matches_the_ledger_builder(env):
    dev = env.device("new-sensor")
    out = dev.registration_request(NOW, Role.SENSOR, {"name": "new-sensor"})
    assert out.payload == enc.registration_request(env.net["new-sensor"].priv, Role.SENSOR,
                                                   {"name": "new-sensor"}, NOW, CRYPTO)
    assert out.topic.endswith("/reg")
    tx = env.net.tx("admin", 1, {4: out.payload}, time_ms=NOW)
    assert env.ledger.submit(tx)["status"] == "committed"
    assert env.ledger.device_proof(dev.device_id)[3] is not None


def test_sequence_numbers_are_monotonic_across_restarts(env):
    storage = dc.MemoryCounter()
    seen = []
    for _restart in range(5):
        dev = env.device(counter=storage)
        for _ in range(3):
            seen.append(dev.reading({"t": 1}, NOW).seq)
    assert seen == sorted(set(seen)) and seen[0] == 1
    # reserve=4: one store per block of four, and a restart skips the rest of its block
    assert storage.stores <= len(seen)
    assert storage.value >= seen[-1]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64), st.lists(st.integers(0, 20), min_size=1, max_size=6))
def test_counter_never_repeats(reserve, runs):
    storage = dc.MemoryCounter()
    seen: list[int] = []
    for n in runs:
        counter = dc.SequenceCounter(storage, reserve)
        seen.extend(counter.next() for _ in range(n))
        assert storage.value >= (seen[-1] if seen else 0)
    assert seen == sorted(set(seen))


def test_counter_exhaustion_and_bad_mark():
    counter = dc.SequenceCounter(dc.MemoryCounter(dc.MAX_SEQ - 1))
    assert counter.next() == dc.MAX_SEQ
    with pytest.raises(dc.DeviceError):
        counter.next()
    with pytest.raises(dc.DeviceError):
        dc.SequenceCounter(dc.MemoryCounter(-1))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, dc.MAX_SEQ))
def test_partial_iv_is_minimal_big_endian(seq):
    piv = dc.partial_iv(seq)
    assert int.from_bytes(piv, "big") == seq and 1 <= len(piv) <= 4 and (len(piv) == 1 or piv[0] != 0)


def open_session(env: Env, dev: dc.DeviceCore, now: int = NOW):
    req = dev.session_request(now)
    effects = env.feed(req.topic, req.payload, now)
    [reply] = [e for e in effects if isinstance(e, c.Reply)]
    assert reply.topic == dev.down_topic
    return dev.handle_down(reply.payload, now)


def test_session_keys_agree_with_the_gateway(env):
    dev = env.device()
    opened = open_session(env, dev)
    assert isinstance(opened, dc.SessionOpened), getattr(opened, "reason", opened)
    gw_session = env.gw.sessions[opened.session_id]
    assert gw_session.key == dev.session.keys.key and gw_session.base_iv == dev.session.keys.base_iv
    # independent gateway-side derivation from the certificate alone
    q_u = ecqv.public_key(dev.session.cert, env.ca_public)
    sk = session_keys.derive(env.net["gw-site"].priv, q_u, dev.session.cert, dev.device_id, env.gw.gateway_id)
    assert (sk.key, sk.base_iv, sk.session_id) == (dev.session.keys.key, dev.session.keys.base_iv, opened.session_id)

    out = dev.reading({"t": 22.0}, NOW, mode=dc.MODE_SESSION)
    msg = cose.decode_encrypt0(out.payload)
    assert msg.kid == sk.session_id and msg.partial_iv == dc.partial_iv(out.seq)
    body = cose.decrypt0(out.payload, sk.key, sk.base_iv, out.topic.encode(), CRYPTO)
    assert cbor.loads(body)[2] == out.seq
    [accept] = env.feed(out.topic, out.payload)
    assert isinstance(accept, c.Accept) and accept.mode == "session" and accept.seq == out.seq


def test_session_response_checks(env):
    dev = env.device()
    assert isinstance(dev.handle_down(cbor.dumps({0: 3, 1: {}}), NOW), dc.Ignored)      # nothing pending
    req = dev.session_request(NOW)
    [reply] = [e for e in env.feed(req.topic, req.payload) if isinstance(e, c.Reply)]
    resp = cbor.loads(reply.payload)[1]
    for mutate in (lambda r: r.__setitem__(1, bytes(16)),                  # other nonce
                   lambda r: r.__setitem__(3, bytes(31) + b"\x01"),        # wrong r
                   lambda r: r.__setitem__(2, r[2][:-1] + bytes([r[2][-1] ^ 1])),   # altered cert
                   lambda r: r.pop(4)):
        bad = dict(resp)
        mutate(bad)
        result = dev.handle_down(cbor.dumps({0: 3, 1: bad}), NOW)
        assert isinstance(result, dc.Ignored) and dev.session is None, result
    late = dev.handle_down(reply.payload, NOW + 2 * 24 * 3600 * 1000)
    assert isinstance(late, dc.Ignored) and "not valid" in late.reason
    dev.ca_public = env.net["admin"].pub                                    # not the issuing CA
    assert isinstance(dev.handle_down(reply.payload, NOW), dc.Ignored)
    dev.ca_public = env.ca_public
    assert isinstance(dev.handle_down(reply.payload, NOW), dc.SessionOpened)
    assert isinstance(dev.handle_down(reply.payload, NOW), dc.Ignored)      # not pending any more


def test_session_mode_needs_a_session(env):
    with pytest.raises(dc.DeviceError):
        env.device().reading({"t": 1}, NOW, mode=dc.MODE_SESSION)


def sent_frames(env: Env, dev: dc.DeviceCore, n: int) -> list:
    return [dev.reading({"i": i}, NOW) for i in range(n)]


def test_valid_receipts(env):
    dev = env.device()
    outs = sent_frames(env, dev, 3)
    receipts = env.receipts([o.frame_hash for o in outs], [o.seq for o in outs])
    for o, r in zip(outs, receipts):
        result = dev.handle_down(cbor.dumps(r), NOW)
        assert isinstance(result, dc.ReceiptResult) and result.valid, result
        assert result.seq == o.seq and result.gateway_id == env.net["gateway"].id and result.height >= 2
    assert dev.sent == {}
    again = dev.verify_receipt(receipts[0])
    assert not again.valid and "did not send" not in again.reason and "not for a frame" in again.reason
    assert dev.verify_receipt(receipts[1], outs[1].payload).valid


def _flip(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


@pytest.mark.parametrize("name, mutate", [
    ("frame hash", lambda r: r.__setitem__(1, _flip(r[1]))),
    ("seq", lambda r: r.__setitem__(2, r[2] + 1)),
    ("index", lambda r: r.__setitem__(3, (r[3] + 1) % r[4])),
    ("size", lambda r: r.__setitem__(4, r[4] + 1)),
    ("batch path", lambda r: r.__setitem__(5, [_flip(r[5][0])] + r[5][1:])),
    ("anchor tx", lambda r: r[6].__setitem__(1, _flip(r[6][1]))),
    ("anchor index", lambda r: r[6].__setitem__(2, r[6][2] + 1)),
    ("header state root", lambda r: r[7][0].__setitem__(5, bytes(32))),
    ("too few votes", lambda r: r[7][1].__setitem__(3, r[7][1][3][:2])),
    ("missing field", lambda r: r.pop(7)),
    ("junk certificate", lambda r: r.__setitem__(7, [1, 2])),
])
def test_forged_receipts_are_refused(env, name, mutate):
    import copy

    dev = env.device()
    outs = sent_frames(env, dev, 3)
    receipts = env.receipts([o.frame_hash for o in outs], [o.seq for o in outs])
    bad = copy.deepcopy(receipts[1])
    mutate(bad)
    result = dev.handle_down(cbor.dumps(bad), NOW)
    assert isinstance(result, dc.ReceiptResult) and not result.valid, name
    assert 2 in dev.sent                                                     # still waiting for a real receipt
    assert dev.handle_down(cbor.dumps(receipts[1]), NOW).valid


def test_receipt_from_another_validator_set_or_gateway(env):
    dev = env.device()
    out = dev.reading({"t": 1}, NOW)
    [r] = env.receipts([out.frame_hash], [out.seq])
    dev.validator_keys = dev.validator_keys[:3]
    assert not dev.verify_receipt(r).valid
    dev.validator_keys = list(env.ledger.keys)
    dev.gateway_keys = {env.net["gateway2"].id: env.net["gateway2"].pub}
    result = dev.verify_receipt(r)
    assert not result.valid and "known gateway" in result.reason
    dev.gateway_keys = {env.net["gateway"].id: env.net["gateway2"].pub}        # wrong key for the id
    assert "signature" in dev.verify_receipt(r).reason
    gw = dev.update_gateway(env.ledger.device_proof(env.net["gateway"].id))
    assert gw == env.net["gateway"].id
    assert dev.verify_receipt(r).valid


def test_refusal_reply_names_the_sent_frame(env):
    dev = env.device()
    out = dev.reading({"t": 1}, NOW + 60_000)                                 # clock skew at the gateway
    [refuse] = env.feed(out.topic, out.payload)
    assert isinstance(refuse, c.Refuse) and refuse.code == c.CLOCK_SKEW
    result = dev.handle_down(refuse.reply(), NOW)
    assert isinstance(result, dc.Refused) and result.seq == out.seq and result.code == c.CLOCK_SKEW
    assert isinstance(dev.handle_down(refuse.reply(), NOW), dc.Ignored)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_junk_replies_and_commands_never_raise(data):
    dev = _shared_env().device()
    assert isinstance(dev.handle_down(data, NOW), (dc.Ignored, dc.ReceiptResult, dc.Refused))
    result = dev.handle_command(dev.cmd_topic, data, NOW)
    assert not result.accepted


_ENV: list = []


def _shared_env() -> Env:
    if not _ENV:
        _ENV.append(Env())
    return _ENV[0]


def test_commands_from_listed_and_unlisted_controllers(env):
    dev = env.device("actuator")
    dev.open_commands(dp.MemoryRecord(), NOW - dp.COMMAND_AHEAD_MAX_MS)
    target = dev.device_id
    cmd = env.command("controller", target, 1, "open-valve", {"pct": 30}, NOW + 5000)
    refused = dev.handle_command(dev.cmd_topic, cmd, NOW)
    assert not refused.accepted and "not a controller listed" in refused.reason

    assert dev.update_controller(env.ledger.device_proof(env.net["controller"].id)) == env.net["controller"].id
    ok = dev.handle_command(dev.cmd_topic, cmd, NOW)
    assert ok.accepted and ok.action == "open-valve" and ok.args == {"pct": 30} and ok.seq == 1
    assert not dev.handle_command(dev.cmd_topic, cmd, NOW).accepted                    # replay

    cases = [
        (env.command("controller", target, 2, "x", None, NOW - 1), "expired"),
        (env.command("controller", env.net["sensor"].id, 3, "x", None, NOW + 5000, topic=dev.cmd_topic),
         "another device"),
        (env.command("controller", target, 4, "x", None, NOW + 5000, topic="ll/other/dev/x/cmd"), "signature"),
        (env.command("sensor", target, 5, "x", None, NOW + 5000), "not a controller listed"),
    ]
    for frame, why in cases:
        result = dev.handle_command(dev.cmd_topic, frame, NOW)
        assert not result.accepted and why in result.reason, (why, result)
    assert dev.handle_command(dev.cmd_topic, env.command("controller", target, 9, "y", [], NOW + 5000), NOW).accepted
    assert not dev.handle_command(dev.up_topic, cmd, NOW).accepted


def test_non_controllers_and_forged_proofs_are_not_listed(env):
    dev = env.device("actuator")
    with pytest.raises(dc.DeviceError):
        dev.update_controller(env.ledger.device_proof(env.net["sensor"].id))
    proof = env.ledger.device_proof(env.net["controller"].id)
    forged = dict(proof)
    record = cbor.loads(proof[3])
    record[3] = Role.CONTROLLER
    record[2] = env.net["sensor"].pub
    forged[3] = cbor.dumps(record)
    with pytest.raises(InvalidProof):
        dev.update_controller(forged)
    assert dev.controllers == {}


def test_banned_controller_is_removed(env):
    dev = env.device("actuator")
    dev.update_controller(env.ledger.device_proof(env.net["controller"].id))
    old = env.ledger.device_proof(env.net["controller"].id)
    env.ledger.ban("controller")
    dev.update_controller(env.ledger.device_proof(env.net["controller"].id))
    assert dev.controllers == {}
    with pytest.raises(dc.DeviceError):
        dev.update_controller(env.ledger.device_proof(env.net["sensor"].id))
    with pytest.raises(dc.DeviceError):
        dev.update_controller(old)                           # an older proof cannot list it again
    assert dev.controllers == {}
    cmd = env.command("controller", dev.device_id, 1, "x", None, NOW + 5000)
    dev.open_commands(dp.MemoryRecord(), NOW - dp.COMMAND_AHEAD_MAX_MS)
    dev.update_controller(env.ledger.device_proof(env.net["controller"].id))
    assert "not a controller listed" in dev.handle_command(dev.cmd_topic, cmd, NOW).reason
