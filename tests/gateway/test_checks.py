"""GatewayCore: one test per refusal reason, registry proofs and bans, sessions, fuzzed frames."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ledgerlink.core import cbor, cose, ecqv, session_keys
from ledgerlink.core.backend import get_backend
from ledgerlink.gateway import checks as c
from tests.devnet import DevNet

from tests.gateway.fake_ledger import FakeLedgerAdapter

CRYPTO = get_backend("cpython")
SITE = "plant-1"
NOW = DevNet().time_ms + 50_000


def up(dev: bytes) -> str:
    return "ll/%s/dev/%s/up" % (SITE, dev.hex())


def reading(net: DevNet, name: str, seq: int, t: int = NOW, meas: dict | None = None,
            topic: str | None = None, key: str | None = None) -> bytes:
    dev = net[name].id
    body = cbor.dumps({1: dev, 2: seq, 3: t, 4: meas if meas is not None else {"t": 21.5}})
    return cose.sign1(body, net[key or name].priv, dev, (topic or up(dev)).encode(), CRYPTO)


class Env:
    def __init__(self, limits: c.Limits | None = None) -> None:
        self.ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
        self.net = self.ledger.net
        keys = c.GatewayKeys(self.net["gateway"].priv, self.net["gw-ca"].priv, self.net["gw-site"].priv)
        self.core = c.GatewayCore(SITE, keys, self.net.chain_id, self.ledger.keys, limits, backend=CRYPTO)

    def feed(self, topic: str, frame: bytes, now: int = NOW) -> list:
        """Deliver a frame, answering registry fetches from the ledger like the adapter does."""
        effects = self.core.on_frame(topic, frame, now)
        out = []
        for e in effects:
            if isinstance(e, c.FetchRegistry):
                out.extend(self.core.on_registry_proof(self.ledger.device_proof(e.device_id), now, e.device_id))
            else:
                out.append(e)
        return [e for e in out if not isinstance(e, (c.HeaderUpdated, c.Ignored))]

    def one(self, topic: str, frame: bytes, now: int = NOW):
        effects = self.feed(topic, frame, now)
        assert len(effects) == 1, effects
        return effects[0]


@pytest.fixture(scope="module")
def env() -> Env:
    return Env()


def refused(effect, code: int) -> None:
    assert isinstance(effect, c.Refuse), effect
    assert effect.code == code, effect
    reply = cbor.loads(effect.reply())
    assert reply[0] == 2 and reply[1] == effect.warning_id and len(reply[1]) == 32
    assert reply[2] == code and isinstance(reply[3], str)


def test_signed_reading_is_accepted_and_republished():
    e = Env()
    frame = reading(e.net, "sensor", 1, meas={"t": 21.5, "rh": 40})
    acc = e.one(up(e.net["sensor"].id), frame)
    assert isinstance(acc, c.Accept)
    assert (acc.device_id, acc.seq, acc.measurements, acc.frame_hash) == (
        e.net["sensor"].id, 1, {"t": 21.5, "rh": 40}, c.sha256(frame))
    verified = cbor.loads(acc.verified_reading(e.core.gateway_name))
    assert verified == {1: e.net["sensor"].id, 2: 1, 3: NOW, 4: {"t": 21.5, "rh": 40}, 5: c.sha256(frame),
                        6: e.core.gateway_id.hex()}


def test_altered_payload_is_bad_signature(env: Env):
    frame = bytearray(reading(env.net, "sensor", 100, meas={"t": 1000}))
    i = frame.index(b"\x19\x03\xe8")        # the measurement 1000
    frame[i + 2] ^= 1
    r = env.one(up(env.net["sensor"].id), bytes(frame))
    refused(r, c.BAD_SIGNATURE)
    assert r.offender == env.net["sensor"].id and r.warning_id == c.sha256(bytes(frame))
    assert r.reply_topic == "ll/%s/dev/%s/down" % (SITE, env.net["sensor"].id.hex())


def test_impersonation_with_another_key_is_bad_signature(env: Env):
    refused(env.one(up(env.net["sensor"].id), reading(env.net, "sensor", 101, key="actuator")), c.BAD_SIGNATURE)


def test_frame_moved_to_another_topic(env: Env):
    sensor, actuator = env.net["sensor"].id, env.net["actuator"].id
    refused(env.one(up(actuator), reading(env.net, "sensor", 102)), c.WRONG_TOPIC)
    # same device, signature bound to another site's topic
    other = "ll/other/dev/%s/up" % sensor.hex()
    refused(env.one(up(sensor), reading(env.net, "sensor", 103, topic=other)), c.BAD_SIGNATURE)
    refused(env.one("ll/%s/verified/%s" % (SITE, sensor.hex()), reading(env.net, "sensor", 104)), c.WRONG_TOPIC)


def test_replay_and_window():
    e = Env()
    topic = up(e.net["sensor"].id)
    first = reading(e.net, "sensor", 10)
    assert isinstance(e.one(topic, first), c.Accept)
    refused(e.one(topic, first), c.REPLAY)
    assert isinstance(e.one(topic, reading(e.net, "sensor", 8)), c.Accept)      # late but inside the window
    refused(e.one(topic, reading(e.net, "sensor", 8, meas={"x": 1})), c.REPLAY)
    assert isinstance(e.one(topic, reading(e.net, "sensor", 100, t=NOW + 1), NOW + 1), c.Accept)
    refused(e.one(topic, reading(e.net, "sensor", 36, t=NOW + 2), NOW + 2), c.REPLAY)  # 64 below the highest
    assert isinstance(e.one(topic, reading(e.net, "sensor", 37, t=NOW + 3), NOW + 3), c.Accept)


def test_window_restored_after_restart():
    e = Env()
    e.core.restore_window(e.net["sensor"].id, 100, NOW, 0b101)         # 100 and 98 stored, 99 not
    topic = up(e.net["sensor"].id)
    refused(e.one(topic, reading(e.net, "sensor", 98)), c.REPLAY)
    refused(e.one(topic, reading(e.net, "sensor", 100)), c.REPLAY)
    refused(e.one(topic, reading(e.net, "sensor", 100 - 64)), c.REPLAY)   # below the window
    assert isinstance(e.one(topic, reading(e.net, "sensor", 99)), c.Accept)
    assert isinstance(e.one(topic, reading(e.net, "sensor", 101)), c.Accept)


def test_clock_skew(env: Env):
    topic = up(env.net["sensor"].id)
    refused(env.one(topic, reading(env.net, "sensor", 200, t=NOW - 24 * 3600 * 1000 - 1)), c.CLOCK_SKEW)
    refused(env.one(topic, reading(env.net, "sensor", 201, t=NOW + 30_001)), c.CLOCK_SKEW)
    # a reading queued offline for an hour is accepted in order; a replay of it is not
    late = reading(env.net, "sensor", 202, t=NOW - 3600 * 1000)
    assert isinstance(env.one(topic, late), c.Accept)
    refused(env.one(topic, late), c.REPLAY)


def test_unregistered_device():
    e = Env()
    r = e.one(up(e.net["stranger"].id), reading(e.net, "stranger", 1))
    refused(r, c.UNKNOWN_DEVICE)
    # the absence is cached: the next frame is refused without a new fetch
    assert [type(x) for x in e.core.on_frame(up(e.net["stranger"].id), reading(e.net, "stranger", 2), NOW)] == [c.Refuse]


def test_registration_seen_in_a_newer_proof():
    e = Env()
    dev = e.net["newbie"].id
    refused(e.one(up(dev), reading(e.net, "newbie", 1)), c.UNKNOWN_DEVICE)
    e.ledger.register("newbie")
    e.core.on_registry_proof(e.ledger.device_proof(dev), NOW)
    assert isinstance(e.one(up(dev), reading(e.net, "newbie", 2)), c.Accept)


def test_ban_takes_effect_with_the_newer_proof_and_old_proofs_do_not_undo_it():
    e = Env()
    dev = e.net["sensor"].id
    old_proof = e.ledger.device_proof(dev)
    assert isinstance(e.one(up(dev), reading(e.net, "sensor", 1)), c.Accept)
    e.ledger.ban("sensor")
    effects = e.core.on_registry_proof(e.ledger.device_proof(dev), NOW)
    assert [type(x) for x in effects] == [c.HeaderUpdated]
    refused(e.one(up(dev), reading(e.net, "sensor", 2)), c.BANNED_DEVICE)
    assert isinstance(e.core.on_registry_proof(old_proof, NOW)[-1], c.Ignored)
    refused(e.one(up(dev), reading(e.net, "sensor", 3)), c.BANNED_DEVICE)


def test_forged_registry_proofs_are_ignored():
    e = Env()
    dev = e.net["sensor"].id
    e.ledger.votes = 2                                    # 2 < 2f+1 = 3
    e.ledger.ban("sensor")
    short = e.ledger.device_proof(dev)
    assert isinstance(e.core.on_registry_proof(short, NOW)[0], c.Ignored)
    e.ledger.votes = 3
    e.ledger.commit_block([])
    good = e.ledger.device_proof(dev)
    tampered = dict(good)
    rec = cbor.loads(good[3])
    rec[5] = 1                                            # claim "active"
    tampered[3] = cbor.dumps(rec)
    assert isinstance(e.core.on_registry_proof(tampered, NOW)[0], c.Ignored)
    absent_for_other = e.ledger.device_proof(e.net["nobody"].id)
    assert isinstance(e.core.on_registry_proof(absent_for_other, NOW, dev)[0], c.Ignored)
    assert isinstance(e.core.on_registry_proof(b"\xff\x00", NOW)[0], c.Ignored)
    assert dev not in e.core.registry
    e.core.on_registry_proof(good, NOW)
    assert e.core.registry[dev].banned


def test_header_quorum_checked_once_per_exact_header_bytes():
    e = Env()
    calls = []
    real = e.core.crypto

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def verify(self, pub, msg, sig):
            calls.append(pub)
            return real.verify(pub, msg, sig)

    e.core.crypto = Counting()
    s, a = e.net["sensor"].id, e.net["actuator"].id
    good_s, good_a = e.ledger.device_proof(s), e.ledger.device_proof(a)
    assert good_s[1] == good_a[1]                         # the same certified header
    quorum = len(good_s[1][1][3])
    e.core.on_registry_proof(good_s, NOW)
    assert len(calls) == quorum
    e.core.on_registry_proof(good_a, NOW)
    assert len(calls) == quorum and a in e.core.registry  # the second proof's header was not re-verified
    # a header differing in one signature bit is checked again (and refused)
    header = cbor.loads(cbor.dumps(good_s[1]))
    sig = bytearray(header[1][3][0][1])
    sig[5] ^= 1
    header[1][3][0][1] = bytes(sig)
    del e.core.registry[s]
    assert isinstance(e.core.on_registry_proof({**good_s, 1: header}, NOW)[0], c.Ignored)
    assert s not in e.core.registry and len(calls) > quorum
    # the cached header does not admit a record that is not under its state root
    rec = cbor.loads(good_s[3])
    rec[5] = 2
    assert isinstance(e.core.on_registry_proof({**good_s, 3: cbor.dumps(rec)}, NOW)[0], c.Ignored)
    assert s not in e.core.registry


def test_headers_too_few_signatures_other_chain_and_older():
    e = Env()
    certified = e.ledger.latest()["certified_header"]
    assert isinstance(e.core.on_header(certified, NOW)[0], c.HeaderUpdated)
    short = [certified[0], certified[1][:3] + [certified[1][3][:2]]]
    e.ledger.commit_block([])
    newer = e.ledger.latest()["certified_header"]
    short_newer = [newer[0], newer[1][:3] + [newer[1][3][:2]]]
    assert isinstance(e.core.on_header(short_newer, NOW)[0], c.Ignored)
    assert isinstance(e.core.on_header(short, NOW)[0], c.Ignored)
    assert isinstance(e.core.on_header(cbor.dumps(newer), NOW)[0], c.HeaderUpdated)
    assert e.core.on_header(certified, NOW) == []
    assert e.core.header.height == e.ledger.height


def test_rate_limit_flood_leaves_others_unaffected():
    e = Env(c.Limits(rate_per_s=5, burst=10))
    s, a = e.net["sensor"].id, e.net["actuator"].id
    results = [e.one(up(s), reading(e.net, "sensor", i)) for i in range(1, 31)]
    accepted = [r for r in results if isinstance(r, c.Accept)]
    limited = [r for r in results if isinstance(r, c.Refuse)]
    assert len(accepted) == 10 and all(r.code == c.RATE_LIMITED for r in limited) and len(limited) == 20
    assert sum(r.report for r in limited) == 1          # one warning per flood period goes to the ledger
    assert isinstance(e.one(up(a), reading(e.net, "actuator", 1)), c.Accept)
    # a rate-limited seq is not burnt: it is accepted once tokens are back
    assert isinstance(e.one(up(s), reading(e.net, "sensor", 11, t=NOW + 1000), NOW + 1000), c.Accept)


def test_oversized_and_malformed(env: Env):
    topic = up(env.net["sensor"].id)
    refused(env.one(topic, b"\xd2" + bytes(4096)), c.OVERSIZED)
    refused(env.one(topic, b""), c.MALFORMED)
    refused(env.one(topic, b"\xd2\x84"), c.MALFORMED)
    refused(env.one(topic, cbor.dumps([1, 2, 3])), c.MALFORMED)
    dev = env.net["sensor"].id
    for body in ({1: dev, 2: 0, 3: NOW, 4: {}}, {1: dev, 2: 1 << 32, 3: NOW, 4: {}}, {1: dev, 2: 5, 3: NOW},
                 {1: dev, 2: 5, 3: NOW, 4: []}, {1: dev[:8], 2: 5, 3: NOW, 4: {}},
                 {1: dev, 2: 5, 3: NOW, 4: {}, 5: 0}, {1: env.net["actuator"].id, 2: 5, 3: NOW, 4: {}}):
        frame = cose.sign1(cbor.dumps(body), env.net["sensor"].priv, dev, topic.encode(), CRYPTO)
        refused(env.one(topic, frame), c.MALFORMED)
    # non-deterministic CBOR payload (non-minimal integer), correctly signed
    bad = b"\xa4\x01\x50" + dev + b"\x02\x18\x05\x03\x1b" + NOW.to_bytes(8, "big") + b"\x04\xa0"
    refused(env.one(topic, cose.sign1(bad, env.net["sensor"].priv, dev, topic.encode(), CRYPTO)), c.MALFORMED)
    no_reply = env.core.on_frame("garbage/topic", b"\x00", NOW)[0]
    assert no_reply.code == c.WRONG_TOPIC and no_reply.reply_topic is None and no_reply.offender == b""


def _session(e: Env, name: str = "sensor", nonce: bytes = b"n" * 16, k_u: tuple | None = None, now: int = NOW):
    dev = e.net[name].id
    secret, r_u = k_u or ecqv.create_request()
    topic = "ll/%s/dev/%s/session" % (SITE, dev.hex())
    req = cose.sign1(cbor.dumps({1: dev, 2: r_u, 3: nonce, 4: now}), e.net[name].priv, dev, topic.encode(), CRYPTO)
    return secret, r_u, topic, req


def _device_keys(e: Env, name: str, secret: bytes, reply: bytes) -> session_keys.SessionKeys:
    resp = cbor.loads(reply)[1]
    d_u, _ = ecqv.reconstruct(secret, resp[2], resp[3], e.core.ca_public)
    return session_keys.derive(d_u, resp[4], resp[2], e.net[name].id, resp[5], CRYPTO)


def session_reading(keys: session_keys.SessionKeys, dev: bytes, seq: int, t: int = NOW, topic: str | None = None,
                    meas: dict | None = None) -> bytes:
    body = cbor.dumps({1: dev, 2: seq, 3: t, 4: meas or {"t": 20}})
    piv = seq.to_bytes((seq.bit_length() + 7) // 8, "big")
    return cose.encrypt0(body, keys.key, partial_iv=piv, base_iv=keys.base_iv, kid=keys.session_id,
                         external_aad=(topic or up(dev)).encode(), backend=CRYPTO)


def test_session_issue_and_encrypted_readings():
    e = Env()
    dev = e.net["sensor"].id
    secret, r_u, topic, req = _session(e)
    effects = e.feed(topic, req)
    assert [type(x) for x in effects] == [c.Reply, c.CertIssued]
    reply, issued = effects
    assert reply.topic.endswith("/down") and cbor.loads(reply.payload)[0] == 3
    assert cbor.loads(reply.payload)[1][1] == b"n" * 16
    keys = _device_keys(e, "sensor", secret, reply.payload)
    assert keys.session_id == session_keys.session_id(issued.cert)
    acc = e.one(up(dev), session_reading(keys, dev, 1))
    assert isinstance(acc, c.Accept) and acc.mode == "session" and acc.seq == 1
    # altered ciphertext, replay, wrong topic binding, Partial IV not the seq
    frame = bytearray(session_reading(keys, dev, 2))
    frame[-1] ^= 0x40
    refused(e.one(up(dev), bytes(frame)), c.BAD_TAG)
    refused(e.one(up(dev), session_reading(keys, dev, 1)), c.REPLAY)
    refused(e.one(up(dev), session_reading(keys, dev, 3, topic="ll/x/dev/%s/up" % dev.hex())), c.BAD_TAG)
    body = cbor.dumps({1: dev, 2: 9, 3: NOW, 4: {}})
    f = cose.encrypt0(body, keys.key, partial_iv=b"\x08", base_iv=keys.base_iv, kid=keys.session_id,
                      external_aad=up(dev).encode(), backend=CRYPTO)
    refused(e.one(up(dev), f), c.MALFORMED)
    refused(e.one(up(e.net["actuator"].id), session_reading(keys, dev, 4, topic=up(e.net["actuator"].id))),
            c.WRONG_TOPIC)
    # unknown session and expiry
    wrong = session_keys.SessionKeys(keys.key, keys.base_iv, b"\x00" * 8)
    refused(e.one(up(dev), session_reading(wrong, dev, 5)), c.UNKNOWN_SESSION)
    late = NOW + e.core.limits.session_lifetime_s * 1000
    refused(e.one(up(dev), session_reading(keys, dev, 6, t=late), late), c.EXPIRED_SESSION)
    # a ban also stops session-mode frames
    e.ledger.ban("sensor")
    e.core.on_registry_proof(e.ledger.device_proof(dev), NOW)
    refused(e.one(up(dev), session_reading(keys, dev, 7)), c.BANNED_DEVICE)


def test_session_frames_of_a_topic_make_their_enc_structure_once(monkeypatch):
    """The AES-CCM aad (Enc_structure over the protected header and the topic) of a device's session frames is
    made for its first frame and taken again for the next ones; a frame altered after it still fails its tag."""
    e = Env()
    dev = e.net["sensor"].id
    secret, _, topic, req = _session(e)
    keys = _device_keys(e, "sensor", secret, e.feed(topic, req)[0].payload)
    frames = [session_reading(keys, dev, seq) for seq in (1, 2, 3, 4)]
    altered = bytearray(frames[3])
    altered[-1] ^= 0x01
    made = []
    real_aad = cose.Encrypt0.aad

    def counted(self, external_aad=b""):
        made.append(external_aad)
        return real_aad(self, external_aad)

    monkeypatch.setattr(cose.Encrypt0, "aad", counted)
    for seq, frame in zip((1, 2, 3), frames):
        acc = e.one(up(dev), frame)
        assert isinstance(acc, c.Accept) and acc.seq == seq
    assert made == [up(dev).encode()]
    refused(e.one(up(dev), bytes(altered)), c.BAD_TAG)
    assert isinstance(e.one(up(dev), frames[3]), c.Accept)


def test_session_request_reuse_and_bad_requests():
    e = Env()
    secret, r_u, topic, req = _session(e)
    assert isinstance(e.feed(topic, req)[0], c.Reply)
    refused(e.one(topic, req), c.CERTIFICATE_REUSE)                              # same request again
    refused(e.one(topic, _session(e, nonce=b"m" * 16, k_u=(secret, r_u))[3]), c.CERTIFICATE_REUSE)
    refused(e.one(topic, _session(e, nonce=b"n" * 16)[3]), c.CERTIFICATE_REUSE)  # nonce reused
    refused(e.one(topic, _session(e, name="sensor", nonce=b"o" * 16, now=NOW - 40_000)[3]), c.CLOCK_SKEW)
    _, _, _, other = _session(e, name="actuator", nonce=b"p" * 16)
    refused(e.one(topic, other), c.WRONG_TOPIC)
    dev = e.net["sensor"].id
    bad_point = cose.sign1(cbor.dumps({1: dev, 2: b"\x02" + b"\xff" * 32, 3: b"q" * 16, 4: NOW}),
                           e.net["sensor"].priv, dev, topic.encode(), CRYPTO)
    refused(e.one(topic, bad_point), c.MALFORMED)
    forged = cose.sign1(cbor.dumps({1: dev, 2: ecqv.create_request()[1], 3: b"r" * 16, 4: NOW}),
                        e.net["actuator"].priv, dev, topic.encode(), CRYPTO)
    refused(e.one(topic, forged), c.BAD_SIGNATURE)


def test_session_restored_from_certificate():
    e = Env()
    secret, _, topic, req = _session(e)
    reply, issued = e.feed(topic, req)
    keys = _device_keys(e, "sensor", secret, reply.payload)
    e2 = Env()
    e2.core.install_session(issued.cert, e.net["sensor"].id)
    acc = e2.one(up(e.net["sensor"].id), session_reading(keys, e.net["sensor"].id, 1))
    assert isinstance(acc, c.Accept)


def test_frames_wait_for_the_registry_then_time_out():
    e = Env()
    dev = e.net["sensor"].id
    effects = e.core.on_frame(up(dev), reading(e.net, "sensor", 1), NOW)
    assert effects == [c.FetchRegistry(dev)]
    assert e.core.on_frame(up(dev), reading(e.net, "sensor", 2), NOW) == []      # one fetch in flight
    later = e.core.tick(NOW + 3000)
    assert later == [c.FetchRegistry(dev)]                                     # asked again
    out = e.core.tick(NOW + 6000)
    assert [x.code for x in out if isinstance(x, c.Refuse)] == [c.LEDGER_UNAVAILABLE] * 2
    # a proof that arrives in time releases the held frames in order
    e.core.on_frame(up(dev), reading(e.net, "sensor", 3), NOW)
    released = e.core.on_registry_proof(e.ledger.device_proof(dev), NOW + 10)
    assert [x.seq for x in released if isinstance(x, c.Accept)] == [3]


def test_a_backlog_waits_for_the_registry_up_to_the_held_bytes():
    """A device's backlog (as a broker redelivers it after a restart) is held, not refused, while its
    record is fetched; beyond ``max_pending_bytes`` frames are refused and nothing is counted twice."""
    frames = [reading(DevNet(), "sensor", seq) for seq in range(1, 201)]
    size = sum(len(f) for f in frames[:150])
    e = Env(c.Limits(rate_per_s=1e6, burst=1e6, max_pending_bytes=size))
    dev = e.net["sensor"].id
    held = [e.core.on_frame(up(dev), f, NOW) for f in frames]
    assert held[0] == [c.FetchRegistry(dev)] and held[1:150] == [[]] * 149
    assert all(len(x) == 1 and x[0].code == c.LEDGER_UNAVAILABLE for x in held[150:])
    assert (e.core.pending_count, e.core.pending_bytes) == (150, size)
    released = e.core.on_registry_proof(e.ledger.device_proof(dev), NOW + 10)
    assert [x.seq for x in released if isinstance(x, c.Accept)] == list(range(1, 151))
    assert (e.core.pending_count, e.core.pending_bytes) == (0, 0)
    e.core.on_frame(up(e.net["actuator"].id), reading(e.net, "actuator", 1), NOW)
    e.core.tick(NOW + 60_000)                                              # timed out: released too
    assert (e.core.pending_count, e.core.pending_bytes) == (0, 0)


def test_held_frames_wait_while_registry_answers_keep_coming():
    """After a restart every device's record is fetched again and the lookups queue up: a frame whose
    answer comes late is not refused while answers for other devices arrive; when they stop, it is."""
    e = Env(c.Limits(registry_timeout_ms=5000, registry_wait_max_ms=20_000))
    sensor, actuator = e.net["sensor"].id, e.net["actuator"].id
    assert e.core.on_frame(up(sensor), reading(e.net, "sensor", 1), NOW) == [c.FetchRegistry(sensor)]
    assert e.core.on_frame(up(actuator), reading(e.net, "actuator", 1), NOW) == [c.FetchRegistry(actuator)]
    for t in range(1000, 9000, 1000):                   # the actuator's answer comes, others' keep coming
        e.core.on_registry_proof(e.ledger.device_proof(actuator), NOW + t)
        assert e.core.tick(NOW + t) == []               # nothing refused, nothing asked again
    released = e.core.on_registry_proof(e.ledger.device_proof(sensor), NOW + 9000)
    assert [x.seq for x in released if isinstance(x, c.Accept)] == [1]
    e.core.on_frame(up(sensor), reading(e.net, "sensor", 2, t=NOW + 10_000), NOW + 10_000)   # a cached record
    stranger = e.net["stranger"].id
    e.core.on_frame(up(stranger), reading(e.net, "stranger", 1, t=NOW + 10_000), NOW + 10_000)
    assert e.core.tick(NOW + 12_000) == []
    assert e.core.tick(NOW + 12_600) == [c.FetchRegistry(stranger)]     # asked again after 2.6 s with no answer
    assert e.core.tick(NOW + 14_900) == []
    out = e.core.tick(NOW + 15_100)                     # 5.1 s since it arrived, no answer since
    assert [x.code for x in out if isinstance(x, c.Refuse)] == [c.LEDGER_UNAVAILABLE]
    # however many answers come, a frame waits at most registry_wait_max_ms
    e.core.on_frame(up(stranger), reading(e.net, "stranger", 2, t=NOW + 20_000), NOW + 20_000)
    for t in range(21_000, 41_000, 1000):
        e.core.on_registry_proof(e.ledger.device_proof(actuator), NOW + t)
        out = e.core.tick(NOW + t)
        assert not [x for x in out if isinstance(x, c.Refuse)]
    out = e.core.tick(NOW + 40_100)
    assert [x.code for x in out if isinstance(x, c.Refuse)] == [c.LEDGER_UNAVAILABLE]


def test_stale_registry_entries_are_refetched():
    e = Env(c.Limits(registry_ttl_ms=1000))
    dev = e.net["sensor"].id
    e.one(up(dev), reading(e.net, "sensor", 1))
    assert e.core.tick(NOW + 500) == []
    assert e.core.tick(NOW + 1500) == [c.FetchRegistry(dev)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.sampled_from(["up", "session", "down", "x"]))
def test_fuzzed_frames_never_raise(env: Env, data: bytes, leaf: str):
    topic = "ll/%s/dev/%s/%s" % (SITE, env.net["sensor"].id.hex(), leaf)
    effects = env.core.on_frame(topic, data, NOW)
    assert all(isinstance(x, (c.Refuse, c.FetchRegistry)) for x in effects)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 200), st.integers(0, 255))
def test_bit_flipped_frames_are_refused(env: Env, pos: int, bit: int):
    frame = bytearray(reading(env.net, "actuator", 7, meas={"v": 1}))
    frame[pos % len(frame)] ^= (bit % 8 + 1) if bit > 7 else 1 << (bit % 8)
    effects = env.feed(up(env.net["actuator"].id), bytes(frame))
    assert len(effects) == 1 and isinstance(effects[0], c.Refuse)
    assert effects[0].code in (c.MALFORMED, c.BAD_SIGNATURE, c.WRONG_TOPIC)


MEASUREMENTS = st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-2**40, 2**40)),
                               st.one_of(st.integers(-2**64, 2**64), st.floats(allow_nan=False), st.text(max_size=20),
                                         st.binary(max_size=20), st.booleans(), st.none(),
                                         st.lists(st.integers(), max_size=4)), max_size=6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(MEASUREMENTS, st.integers(1, 2**32 - 1), st.integers(NOW - 10**6, NOW + 10**4))
def test_verified_reading_is_the_reading_with_hash_and_gateway(env: Env, meas: dict, seq: int, t: int):
    dev = env.net["sensor"].id
    env.core.devices.pop(dev, None)                                   # a fresh replay window and rate budget
    frame = cose.sign1(cbor.dumps({1: dev, 2: seq, 3: t, 4: meas}), env.net["sensor"].priv, dev,
                       up(dev).encode(), CRYPTO)
    effects = env.feed(up(dev), frame)
    assert len(effects) == 1 and isinstance(effects[0], c.Accept), effects
    accept = effects[0]
    out = accept.verified_reading(env.core.gateway_name)
    assert accept.reading is not None
    assert out == cbor.dumps({1: dev, 2: seq, 3: t, 4: meas, 5: CRYPTO.sha256(frame), 6: env.core.gateway_name})
    assert cbor.loads(out)[4] == accept.measurements


def test_warnings_posted_to_the_ledger_are_bounded_per_offender_and_in_all():
    e = Env(c.Limits(report_burst=3, report_rate_per_s=1.0, report_total_burst=5, report_total_per_s=2.0))
    sensor = e.net["sensor"].id
    forged = [e.one(up(sensor), reading(e.net, "sensor", 200 + i, key="actuator")) for i in range(6)]
    assert all(r.code == c.BAD_SIGNATURE and r.reply_topic for r in forged)     # every one refused, answered
    assert [r.report for r in forged] == [True] * 3 + [False] * 3
    later = e.one(up(sensor), reading(e.net, "sensor", 300, key="actuator"), NOW + 1000)
    assert later.report                                                          # one more a second later
    strangers = ["stranger%d" % i for i in range(5)]                            # made-up devices, one frame each
    other = [e.one(up(e.net[n].id), reading(e.net, n, 1), NOW + 1000) for n in strangers]
    assert all(r.code == c.UNKNOWN_DEVICE for r in other)
    assert [r.report for r in other] == [True] * 3 + [False] * 2                 # the gateway's: 5, +2 in 1 s
