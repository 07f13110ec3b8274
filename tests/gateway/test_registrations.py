"""Registration requests on the ``reg`` topic: checked like the register contract, held durably for an
admin, answered with ``registration-held``, refused with their reason codes, bounded, settled once the
device is on the ledger, restored after a restart."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ledgerlink.core import cbor, cose
from ledgerlink.protocol.device_protocol import RegistrationHeld
from ledgerlink.device.core import DeviceCore, MemoryCounter, Refused, SequenceCounter
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.service import GatewayService
from ledgerlink.gateway.store import Store
from ledgerlink.ledger.state import encoding as enc
from tests.gateway.test_checks import CRYPTO, NOW, SITE, Env, refused


def reg_topic(dev: bytes) -> str:
    return "ll/%s/dev/%s/reg" % (SITE, dev.hex())


def request(env: Env, name: str, t: int = NOW, attrs: dict | None = None, role: int = 1) -> tuple[bytes, bytes]:
    """(device id, the device's own registration request)."""
    m = env.net[name]
    return m.id, enc.registration_request(m.priv, role, attrs or {"name": name}, t, CRYPTO)


def held(effects: list) -> c.RegistrationReceived:
    [rec, reply] = effects
    assert isinstance(rec, c.RegistrationReceived) and isinstance(reply, c.Reply)
    assert reply.topic == "ll/%s/dev/%s/down" % (SITE, rec.device_id.hex())
    assert cbor.loads(reply.payload) == {0: c.KIND_REGISTRATION, 1: c.sha256(rec.request)}
    assert reply.frame_hash == c.sha256(rec.request)
    return rec


def test_a_valid_request_is_held_and_the_device_hears_so():
    e = Env()
    core = DeviceCore(e.net["newbie"].priv, SITE, SequenceCounter(MemoryCounter()), e.net.chain_id, e.ledger.keys,
                      backend="cpython")
    out = core.registration_request(NOW, attributes={"name": "newbie", "location": "hall 3"})
    assert out.topic == reg_topic(core.device_id)
    effects = e.core.on_frame(out.topic, out.payload, NOW)
    rec = held(effects)
    assert (rec.device_id, rec.request, rec.role, rec.attributes, rec.time_ms) == (
        core.device_id, out.payload, 1, {"name": "newbie", "location": "hall 3"}, NOW)
    assert list(e.core.registrations) == [core.device_id]
    event = core.handle_down(effects[1].payload, NOW)
    assert isinstance(event, RegistrationHeld) and event.frame_hash == out.frame_hash
    other = cbor.dumps({0: c.KIND_REGISTRATION, 1: bytes(32)})
    assert type(core.handle_down(other, NOW)).__name__ == "Ignored"


def test_refusals_with_their_codes():
    e = Env()
    dev, req = request(e, "newbie")
    other, _ = request(e, "other")
    refused(e.core.on_frame(reg_topic(other), req, NOW)[0], c.WRONG_TOPIC)
    refused(e.core.on_frame(reg_topic(dev), b"\xd2\x84", NOW)[0], c.MALFORMED)
    refused(e.core.on_frame(reg_topic(dev), b"\x00" * 5000, NOW)[0], c.OVERSIZED)
    refused(e.core.on_frame("ll/%s/dev/%s/regs" % (SITE, dev.hex()), req, NOW)[0], c.WRONG_TOPIC)
    altered = bytearray(req)
    altered[altered.index(b"newbie") + 1] ^= 1
    refused(e.core.on_frame(reg_topic(dev), bytes(altered), NOW)[0], c.BAD_SIGNATURE)
    # signed with another key than the one it registers: no proof of possession
    m = e.net["newbie"]
    body = cbor.dumps({1: dev, 2: m.pub, 3: 1, 4: {}, 5: NOW})
    refused(e.core.on_frame(reg_topic(dev), cose.sign1(body, e.net["other"].priv, dev, b"", CRYPTO), NOW)[0],
            c.BAD_SIGNATURE)
    # bound to the topic instead of an empty external_aad: not what tx-register can carry
    bound = cose.sign1(body, m.priv, dev, reg_topic(dev).encode(), CRYPTO)
    refused(e.core.on_frame(reg_topic(dev), bound, NOW)[0], c.BAD_SIGNATURE)
    bad_role = cose.sign1(cbor.dumps({1: dev, 2: m.pub, 3: 9, 4: {}, 5: NOW}), m.priv, dev, b"", CRYPTO)
    refused(e.core.on_frame(reg_topic(dev), bad_role, NOW)[0], c.MALFORMED)
    refused(e.core.on_frame(reg_topic(dev), request(e, "newbie", t=NOW + 31_000)[1], NOW)[0], c.CLOCK_SKEW)
    refused(e.core.on_frame(reg_topic(dev), request(e, "newbie", t=NOW - 25 * 3600_000)[1], NOW)[0], c.CLOCK_SKEW)
    assert not e.core.registrations


def test_newer_request_replaces_and_older_is_a_replay():
    e = Env()
    dev, first = request(e, "newbie", t=NOW - 10)
    held(e.core.on_frame(reg_topic(dev), first, NOW))
    refused(e.core.on_frame(reg_topic(dev), first, NOW)[0], c.REPLAY)
    refused(e.core.on_frame(reg_topic(dev), request(e, "newbie", t=NOW - 20)[1], NOW)[0], c.REPLAY)
    rec = held(e.core.on_frame(reg_topic(dev), request(e, "newbie", t=NOW, attrs={"name": "renamed"})[1], NOW))
    assert rec.attributes == {"name": "renamed"} and len(e.core.registrations) == 1


def test_capacity_and_rate_are_bounded():
    e = Env(c.Limits(max_registrations=2))
    for name in ("d1", "d2"):
        held(e.core.on_frame(reg_topic(e.net[name].id), request(e, name)[1], NOW))
    r = e.core.on_frame(reg_topic(e.net["d3"].id), request(e, "d3")[1], NOW)[0]
    refused(r, c.RATE_LIMITED)
    assert "wait for an admin" in r.text
    held(e.core.on_frame(reg_topic(e.net["d1"].id), request(e, "d1", t=NOW + 1)[1], NOW))   # replacing is fine

    e = Env(c.Limits(registration_burst=2, registration_rate_per_s=1.0))
    for name in ("d1", "d2"):
        held(e.core.on_frame(reg_topic(e.net[name].id), request(e, name)[1], NOW))
    refused(e.core.on_frame(reg_topic(e.net["d3"].id), request(e, "d3")[1], NOW)[0], c.RATE_LIMITED)
    held(e.core.on_frame(reg_topic(e.net["d3"].id), request(e, "d3")[1], NOW + 1000))      # a token later


def test_settled_when_registered_on_the_ledger_or_expired():
    e = Env()
    dev, req = request(e, "newbie")
    held(e.core.on_frame(reg_topic(dev), req, NOW))
    absent = e.core.on_registry_proof(e.ledger.device_proof(dev), NOW, dev)
    assert not any(isinstance(x, c.RegistrationSettled) for x in absent) and dev in e.core.registrations
    e.ledger.register("newbie")
    effects = e.core.on_registry_proof(e.ledger.device_proof(dev), NOW + 1, dev)
    assert [x.device_id for x in effects if isinstance(x, c.RegistrationSettled)] == [dev]
    assert not e.core.registrations

    dev2, req2 = request(e, "late")
    held(e.core.on_frame(reg_topic(dev2), req2, NOW))
    ttl = e.core.limits.registration_ttl_ms
    assert not any(isinstance(x, c.RegistrationSettled) for x in e.core.tick(NOW + ttl))
    assert [x.device_id for x in e.core.tick(NOW + ttl + 1) if isinstance(x, c.RegistrationSettled)] == [dev2]


def test_held_requests_are_durable_and_restored(tmp_path):
    e = Env()
    store = Store(tmp_path / "gw.db")
    svc = GatewayService(e.core, store)
    dev, req = request(e, "newbie", attrs={"name": "newbie", "model": "m1"})
    out = svc.handle_frame(reg_topic(dev), req, NOW)
    assert out.decided == [c.sha256(req)]                        # acknowledged only after the store write
    assert [o.topic for o in out.outgoing] == ["ll/%s/dev/%s/down" % (SITE, dev.hex())]
    store.close()

    again = Store(tmp_path / "gw.db")
    [row] = again.registrations()
    assert (row.device, row.request, row.role, row.attributes, row.time_ms, row.held_ms) == (
        dev, req, 1, {"name": "newbie", "model": "m1"}, NOW, NOW)
    e2 = Env()
    svc2 = GatewayService(e2.core, again)
    svc2.restore(NOW)
    assert e2.core.registrations[dev] == (NOW, NOW)
    refused(e2.core.on_frame(reg_topic(dev), req, NOW)[0], c.REPLAY)
    e2.ledger.register("newbie")
    svc2.handle_registry(dev, e2.ledger.device_proof(dev), NOW)
    assert again.registrations() == []


def test_device_hears_a_refusal_of_its_registration():
    e = Env()
    core = DeviceCore(e.net["newbie"].priv, SITE, SequenceCounter(MemoryCounter()), e.net.chain_id, e.ledger.keys,
                      backend="cpython")
    out = core.registration_request(NOW + 60_000)
    r = e.core.on_frame(out.topic, out.payload, NOW)[0]
    refused(r, c.CLOCK_SKEW)
    event = core.handle_down(r.reply(), NOW)
    assert isinstance(event, Refused) and event.seq is None and event.code == c.CLOCK_SKEW


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), cut=st.integers(0, 400), flip=st.integers(0, 4000))
def test_fuzzed_registration_frames_never_raise_and_are_never_held(data, cut, flip):
    e = _FUZZ_ENV
    dev, req = _FUZZ_REQ
    mutated = bytearray(req[:cut] + data)
    if mutated:
        mutated[flip % len(mutated)] ^= 1 + flip % 255
    effects = e.core.on_frame(reg_topic(dev), bytes(mutated), NOW)
    assert all(isinstance(x, (c.Refuse, c.RegistrationReceived, c.Reply)) for x in effects)
    if any(isinstance(x, c.RegistrationReceived) for x in effects):
        assert c.sha256(bytes(mutated)) != c.sha256(req)
        payload = cbor.loads(cose.decode_sign1(bytes(mutated)).payload)     # a valid request of its own
        assert payload[1] == dev
    e.core.registrations.clear()


_FUZZ_ENV = Env(c.Limits(registration_burst=1e9, registration_rate_per_s=1e9))
_FUZZ_REQ = request(_FUZZ_ENV, "fuzzed")


@pytest.mark.parametrize("level", ["up", "session", "reg"])
def test_every_device_topic_level_is_checked(level):
    e = Env()
    dev, req = request(e, "newbie")
    effects = e.core.on_frame("ll/%s/dev/%s/%s" % (SITE, dev.hex(), level), req, NOW)
    assert effects, level
    assert not any(isinstance(x, c.Accept) for x in effects)
