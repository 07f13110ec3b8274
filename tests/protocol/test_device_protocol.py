"""The portable device protocol under CPython: against the gateway's own checks and real certified headers.

Receipts, session responses and headers come from ``GatewayCore`` over a ``FakeLedgerAdapter`` chain
signed by real validator keys (tests/device/helpers.py). Bad input (forged receipts, wrong header
signatures, tampered session responses, junk replies and session records) must be refused with the
errors of ``ledgerlink.core.errors``.
"""

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor, ecqv, p256, session_keys
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.core.errors import (DecodeError, InvalidCertificate, InvalidMessage, InvalidPoint, InvalidProof,
                                    LedgerlinkError)
from ledgerlink.device.core import MemoryCounter, SequenceCounter
from ledgerlink.gateway import checks as c
from tests.backends import CountingBackend
from tests.device.helpers import CRYPTO, NOW, Env


_ENV: list = []


def shared_env() -> Env:
    if not _ENV:
        _ENV.append(Env())
    return _ENV[0]


def protocol(env: Env, backend=CRYPTO, **kw) -> dp.DeviceProtocol:
    return dp.DeviceProtocol(env.net["sensor"].priv, env.gw.site, SequenceCounter(MemoryCounter()), env.net.chain_id,
                             env.ledger.keys, env.ca_public, backend=backend, **kw)


def session_reply(env: Env, dev: dp.DeviceProtocol) -> bytes:
    req = dev.session_request(NOW)
    [reply] = [e for e in env.feed(req.topic, req.payload, NOW) if isinstance(e, c.Reply)]
    return reply.payload


def batch(env: Env, dev: dp.DeviceProtocol, n: int):
    outs = [dev.reading({"i": i}, NOW) for i in range(n)]
    return outs, env.receipts([o.frame_hash for o in outs], [o.seq for o in outs])


def _flip(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


# --- sessions ----------------------------------------------------------------------------------------


def test_session_from_the_gateway_and_sealed_readings_it_accepts():
    env = Env()
    dev = protocol(env)
    opened = dev.handle_down(session_reply(env, dev), NOW)
    assert isinstance(opened, dp.SessionOpened) and not dev.session_pending
    gw = env.gw.sessions[opened.session_id]
    assert (gw.key, gw.base_iv) == (dev.session.keys.key, dev.session.keys.base_iv)
    assert dev.session_valid(NOW, 3600) and not dev.session_valid(opened.valid_until_s * 1000)
    out = dev.reading({"t": 1}, NOW, dp.MODE_SESSION)
    [accept] = env.feed(out.topic, out.payload, NOW)
    assert isinstance(accept, c.Accept) and accept.mode == "session" and accept.seq == out.seq == 1


@pytest.mark.parametrize("field, mutate, error", [
    (1, lambda v: bytes(16), InvalidMessage),                  # another request's nonce
    (2, _flip, (InvalidPoint, InvalidCertificate)),            # altered certificate (P_U)
    (3, lambda v: bytes(31) + b"\x01", InvalidCertificate),   # wrong reconstruction value
    (4, lambda v: b"\x05" + v[1:], InvalidPoint),             # gateway key not a point encoding
    (5, lambda v: b"", InvalidMessage),
    (7, lambda v: b"x", InvalidMessage),                       # unknown field
])
def test_tampered_session_responses_are_refused(field, mutate, error):
    env = Env()
    dev = protocol(env)
    msg = cbor.loads(session_reply(env, dev))
    resp = dict(msg[1])
    resp[field] = mutate(resp.get(field, b""))
    with pytest.raises(error):
        dev.check_session_response(resp, NOW)
    result = dev.handle_down(cbor.dumps({0: 3, 1: resp}), NOW)
    assert isinstance(result, dp.Ignored) and dev.session is None and dev.session_pending
    assert isinstance(dev.handle_down(cbor.dumps(msg), NOW), dp.SessionOpened)


def test_man_in_the_middle_cannot_swap_the_gateway_key():
    """The certificate names the gateway's key: a swapped key in the response, or in the
    certificate too, is refused, so nobody between device and gateway learns the session key."""
    env = Env()
    dev = protocol(env)
    resp = dict(cbor.loads(session_reply(env, dev))[1])
    attacker = CRYPTO.public_key(CRYPTO.generate_private_key(), True)
    with pytest.raises(InvalidMessage, match="not the one the certificate names"):
        dev.check_session_response({**resp, 4: attacker}, NOW)
    cert = ecqv.decode_cert(resp[2])
    assert cert.peer == p256.decode_point(resp[4])
    cert.peer = p256.decode_point(attacker)
    with pytest.raises(InvalidCertificate):
        dev.check_session_response({**resp, 2: cert.encode(), 4: attacker}, NOW)
    with pytest.raises(InvalidMessage, match="another gateway"):
        dev.check_session_response({**resp, 5: b"other-gateway"}, NOW)
    cert.peer = None                              # a certificate that names no key
    with pytest.raises(InvalidMessage, match="not the one the certificate names"):
        dev.check_session_response({**resp, 2: cert.encode()}, NOW)
    dev.check_session_response(resp, NOW)


def test_certificate_for_another_device_or_time_is_refused():
    env = Env()
    dev = protocol(env)
    reply = session_reply(env, dev)
    other = dp.DeviceProtocol(env.net["actuator"].priv, env.gw.site, SequenceCounter(MemoryCounter()),
                              env.net.chain_id, env.ledger.keys, env.ca_public, backend=CRYPTO)
    other._pending_session = dev._pending_session
    with pytest.raises(InvalidMessage, match="another device"):
        other.check_session_response(cbor.loads(reply)[1], NOW)
    with pytest.raises(InvalidMessage, match="not valid now"):
        dev.check_session_response(cbor.loads(reply)[1], NOW + 2 * 24 * 3600 * 1000)
    dev.cancel_session_request()
    with pytest.raises(dp.DeviceError):
        dev.check_session_response(cbor.loads(reply)[1], NOW)


def test_refused_session_request_clears_the_pending_request():
    env = Env()
    dev = protocol(env)
    req = dev.session_request(NOW + 60_000)                                   # outside the gateway's skew
    [refuse] = [e for e in env.feed(req.topic, req.payload, NOW) if isinstance(e, c.Refuse)]
    result = dev.handle_down(refuse.reply(), NOW)
    assert isinstance(result, dp.Refused) and result.seq is None and result.code == c.CLOCK_SKEW
    assert not dev.session_pending


_CERT: list = []


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=13, max_size=13), st.binary(min_size=1, max_size=64))
def test_session_record_round_trip_and_tampering(key, base_iv, gateway_id):
    env = shared_env()
    dev = protocol(env)
    if not _CERT:
        assert isinstance(dev.handle_down(session_reply(env, dev), NOW), dp.SessionOpened)
        _CERT.append(dev.session)
    cert = _CERT[0].cert
    s = dp.Session(session_keys.SessionKeys(key, base_iv, session_keys.session_id(cert)), gateway_id,
                   _CERT[0].valid_until_s, cert, len(gateway_id))
    raw = dp.encode_session(s)
    back = dp.decode_session(raw, dev.device_id)
    assert (back.keys.key, back.keys.base_iv, back.keys.session_id, back.gateway_id, back.cert, back.valid_until_s,
            back.mark) == (key, base_iv, s.keys.session_id, gateway_id, cert, s.valid_until_s, s.mark)
    with pytest.raises(InvalidMessage):
        dp.decode_session(raw, bytes(16))                                      # another device's record
    for i in (0, len(raw) // 2, len(raw) - 1):
        bad = raw[:i] + bytes([raw[i] ^ 0x40]) + raw[i + 1:]
        with pytest.raises(LedgerlinkError):
            dp.decode_session(bad, dev.device_id)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_junk_session_records_raise_our_errors(data):
    with pytest.raises(LedgerlinkError):
        dp.decode_session(data, bytes(16))


# --- receipts ----------------------------------------------------------------------------------------


def test_receipts_of_one_batch_check_the_header_once():
    env = Env()
    backend = CountingBackend(CRYPTO)
    gw = env.net["gateway"]
    dev = protocol(env, backend, gateway_keys={gw.id: gw.pub})
    outs, receipts = batch(env, dev, 3)
    first = dev.check_receipt(receipts[0])
    once = backend.verifies
    assert first.valid and first.seq == 1 and first.gateway_id == gw.id and once >= 3 + 1
    assert all(dev.check_receipt(cbor.dumps(r)).valid for r in receipts[1:])
    assert backend.verifies == once and dev.sent == {}
    with pytest.raises(InvalidProof, match="not for a frame"):
        dev.check_receipt(receipts[0])                                          # already taken
    assert dev.verify_receipt(receipts[0], outs[0].payload).valid
    dev.validator_keys = dev.validator_keys[:3]                                 # the cache is bound to the set
    with pytest.raises(InvalidProof, match="validator set"):
        dev.check_receipt(receipts[1], outs[1].payload)


@pytest.mark.parametrize("name, mutate, error", [
    ("frame hash", lambda r: r.__setitem__(1, _flip(r[1])), InvalidProof),
    ("batch index", lambda r: r.__setitem__(3, (r[3] + 1) % r[4]), InvalidProof),
    ("batch path", lambda r: r.__setitem__(5, [_flip(r[5][0])] + r[5][1:]), InvalidProof),
    ("batch size", lambda r: r.__setitem__(4, r[4] + 1), InvalidProof),
    ("anchor tx", lambda r: r[6].__setitem__(1, _flip(r[6][1])), InvalidProof),
    ("anchor index", lambda r: r[6].__setitem__(2, r[6][2] + 1), InvalidProof),
    ("header state root", lambda r: r[7][0].__setitem__(5, bytes(32)), InvalidProof),
    ("vote signature", lambda r: r[7][1][3][0].__setitem__(1, _flip(r[7][1][3][0][1])), InvalidProof),
    ("vote by another validator", lambda r: r[7][1][3][0].__setitem__(0, (r[7][1][3][0][0] + 1) % 4), InvalidProof),
    ("too few votes", lambda r: r[7][1].__setitem__(3, r[7][1][3][:2]), InvalidProof),
    ("duplicate vote", lambda r: r[7][1].__setitem__(3, [r[7][1][3][0]] * 3), InvalidProof),
    ("missing field", lambda r: r.pop(6), InvalidMessage),
    ("path of junk", lambda r: r.__setitem__(5, [1, 2]), InvalidMessage),
    ("certificate of junk", lambda r: r.__setitem__(7, [1, 2]), InvalidMessage),
])
def test_forged_receipts_are_refused_with_our_errors(name, mutate, error):
    env = shared_env()
    dev = protocol(env)
    outs, receipts = batch(env, dev, 3)
    bad = copy.deepcopy(receipts[1])
    mutate(bad)
    with pytest.raises(error):
        dev.check_receipt(bad)
    result = dev.handle_down(cbor.dumps(bad), NOW)
    assert isinstance(result, dp.ReceiptResult) and not result.valid, name
    assert dev.sent.get(outs[1].seq) == outs[1].frame_hash                    # still waiting for the real one
    assert dev.check_receipt(receipts[1]).valid


def test_anchor_from_an_unknown_gateway_or_with_a_bad_signature():
    env = shared_env()
    other = env.net["gateway2"]
    dev = protocol(env, gateway_keys={other.id: other.pub})
    outs, [r] = batch(env, dev, 1)
    with pytest.raises(InvalidProof, match="known gateway"):
        dev.check_receipt(r)
    dev.gateway_keys = {env.net["gateway"].id: other.pub}
    with pytest.raises(InvalidProof, match="signature"):
        dev.check_receipt(r)
    assert dev.update_gateway(env.ledger.device_proof(env.net["gateway"].id)) == env.net["gateway"].id
    assert dev.check_receipt(r).valid


def test_no_trust_anchors_no_receipts():
    env = shared_env()
    dev = dp.DeviceProtocol(env.net["sensor"].priv, "s", SequenceCounter(MemoryCounter()), backend=CRYPTO)
    out = dev.reading({"t": 1}, NOW)
    [r] = env.receipts([out.frame_hash], [out.seq])
    with pytest.raises(dp.DeviceError):
        dev.check_receipt(r)
    assert not dev.verify_receipt(r).valid


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.integers(1, 255))
def test_any_changed_byte_of_a_receipt_is_refused(at, x):
    env = shared_env()
    dev = protocol(env)
    outs, [r] = batch(env, dev, 1)
    raw = cbor.dumps(r)
    i = at % len(raw)
    bad = raw[:i] + bytes([raw[i] ^ x]) + raw[i + 1:]
    result = dev.handle_down(bad, NOW)
    assert isinstance(result, (dp.Ignored, dp.ReceiptResult, dp.Refused))
    assert not (isinstance(result, dp.ReceiptResult) and result.valid)
    assert dev.handle_down(raw, NOW).valid


# --- decoders ----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_reply_raises_only_our_errors(data):
    dev = dp.DeviceProtocol(bytes(31) + b"\x01", "s", SequenceCounter(MemoryCounter()), backend=CRYPTO)
    try:
        msg = dev.decode_reply(data)
    except LedgerlinkError:
        assert isinstance(dev.handle_down(data, NOW), dp.Ignored)
        return
    assert isinstance(msg, dict) and msg[0] in (1, 2, 3)
    assert isinstance(dev.handle_down(data, NOW), (dp.Ignored, dp.ReceiptResult, dp.Refused))


replies = st.recursive(
    st.none() | st.integers(-2**64, 2**64) | st.binary(max_size=40) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.integers(0, 8), inner, max_size=4),
    max_leaves=8)


_PENDING: list = []


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([1, 2, 3]), st.dictionaries(st.integers(1, 8), replies, max_size=7))
def test_well_formed_replies_of_any_shape_never_raise(kind, fields):
    if not _PENDING:
        _PENDING.append(protocol(shared_env()))
        _PENDING[0].session_request(NOW)
    dev = _PENDING[0]
    msg = dict(fields)
    msg[0] = kind
    assert dev.decode_reply(cbor.dumps(msg)) == msg
    result = dev.handle_reply(msg, NOW)
    assert isinstance(result, (dp.Ignored, dp.ReceiptResult, dp.Refused))
    assert not getattr(result, "valid", False)
    with pytest.raises(LedgerlinkError):
        dev.check_receipt(msg)


def test_oversized_and_unknown_replies():
    dev = dp.DeviceProtocol(bytes(31) + b"\x01", "s", SequenceCounter(MemoryCounter()), backend=CRYPTO)
    with pytest.raises(InvalidMessage):
        dev.decode_reply(cbor.dumps({0: 1, 1: bytes(dp.MAX_REPLY)}))
    with pytest.raises(InvalidMessage):
        dev.decode_reply(cbor.dumps({0: 9}))
    with pytest.raises(DecodeError):
        dev.decode_reply(b"\xa1\x00")
    with pytest.raises(ValueError):                     # no device without its identity key
        dp.DeviceProtocol(None, "s", SequenceCounter(MemoryCounter()), device_id=bytes(16), backend=CRYPTO)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, dp.MAX_SEQ))
def test_partial_iv_is_minimal_big_endian(seq):
    piv = dp.partial_iv(seq)
    assert int.from_bytes(piv, "big") == seq and 1 <= len(piv) <= 4 and (len(piv) == 1 or piv[0] != 0)
    for bad in (0, dp.MAX_SEQ + 1):
        with pytest.raises(ValueError):
            dp.partial_iv(bad)
