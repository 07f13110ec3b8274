"""Anonymous sessions end to end: the honest run, each refusal with its reason code, the counter failing
closed, and who can de-anonymize."""

import pytest

from ledgerlink.core import cbor, cose, ecies, schnorr_zk
from ledgerlink.core.errors import InvalidSignature, InvalidTag, LedgerlinkError
from ledgerlink.gateway.anon_fog import AnonRefused, AnonReply, AnonSpend
from ledgerlink.ledger.state import Reason, RecordKind as RK, TxKind
from ledgerlink.protocol import anon_device, anon_wire
from ledgerlink.protocol.codes import REASON_BAD_TAG, REASON_CLOCK_SKEW, REASON_MALFORMED
from ledgerlink.protocol.ledger_tx import anon_certs_tx, anon_spend_tx
from tests.anon.site import BATCH, SITE, Rng, Site, secret_of


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path, fogs=2)


def test_honest_session_gives_device_and_cloud_one_key_and_the_cloud_the_device(site):
    out = site.session("devA")
    assert out.refused is None
    s, c = out.session, out.cloud_session
    assert (s.key, s.base_iv, s.session_id, s.valid_until_s) == (c.key, c.base_iv, c.session_id, c.valid_until_s)
    assert site.cloud.deanonymize(c) == site.net["devA"].id
    spent = site.state.get_record(RK.ANON_SPENT, anon_wire.secondary_hash(anon_wire.anon_id(secret_of("devA"), 1)))
    assert spent[1] == site.net["gateway"].id and spent[3] == s.spend_tx
    second = site.session("devA")
    assert second.refused is None and second.session.key != s.key
    assert site.cloud.deanonymize(second.cloud_session) == site.net["devA"].id
    assert site.devices["devA"].counter.last() == 2


def _again(site, name, k, fog):
    dev = site.devices[name]
    now = site.tick()
    return anon_device.build_request(SITE, dev.device_id, dev._identity, dev._secret, k, site.fogs[fog].public_key,
                                     site.cloud.public_key, now, Rng("again/%s/%d/%d" % (name, fog, now)),
                                     site.net.backend)


def test_certificate_used_twice_at_one_fog_is_refused_by_its_primary_hash_table(site):
    assert site.session("devA").refused is None
    out = site.submit("devA", _again(site, "devA", 1, 0))
    assert out.refused == Reason.ANON_SPENT_PRIMARY and out.session is None and out.cloud_session is None
    assert not any(isinstance(e, AnonSpend) for e in out.fog_effects)        # the ledger was not asked


def test_certificate_used_again_at_another_fog_is_refused_by_the_ledger_secondary_hash(site):
    assert site.session("devA").refused is None
    out = site.submit("devA", _again(site, "devA", 1, 1), fog=1)
    assert any(isinstance(e, AnonSpend) for e in out.fog_effects)            # fog 1's own table is empty
    assert out.refused == Reason.ANON_SPENT_SECONDARY and out.session is None and out.cloud_session is None
    # the answer reaches the device encrypted, with the ledger's reason
    reply = [e for e in out.fog_effects if isinstance(e, AnonReply)]
    assert len(reply) == 1 and reply[0].topic.startswith("ll/%s/anon/rsp/" % SITE)


def _forged(site, name, k, proof_of):
    """A request for id_k whose proof is made with the secret ``proof_of(s, k)`` (not x_k)."""
    real = anon_wire.anon_secret

    def fake(secret, kk):
        return proof_of(secret, kk) if kk == k else real(secret, kk)

    anon_wire.anon_secret = fake
    try:
        return _again(site, name, k, 0)
    finally:
        anon_wire.anon_secret = real


def test_forged_proof_is_refused_by_the_fog_and_by_the_contract(site):
    forged = _forged(site, "devA", 1, lambda s, k: bytes(31) + b"\x07")
    out = site.submit("devA", forged)
    assert out.refused == Reason.ANON_BAD_PROOF and out.session is None
    # the forged proof did not burn the certificate: the device's honest request still passes
    assert site.session("devA").refused is None
    # the contract checks the proof itself, whatever a fog says
    bad = anon_spend_tx(site.net.chain_id, site.net["gateway"].priv, anon_wire.anon_id(secret_of("devB"), 1),
                        bytes(65), bytes([2]) + bytes(32), site.tick(), nonce=site.net.nonce())
    c1 = ecies.ephemeral(Rng("c1"))[1]
    other = anon_wire.anon_secret(secret_of("devB"), 2)
    wrong = anon_spend_tx(site.net.chain_id, site.net["gateway"].priv, anon_wire.anon_id(secret_of("devB"), 1),
                          schnorr_zk.prove(other, anon_wire.anon_id(secret_of("devB"), 1), anon_wire.proof_context(c1),
                                           Rng("p")), c1, site.tick(), nonce=site.net.nonce())
    assert [r.code for r in site.block([bad, wrong], site.time_ms)] == [Reason.ANON_BAD_PROOF] * 2


def test_wrong_counter_is_refused(site):
    # the secret of the next counter behind this counter's id: the proof does not verify
    out = site.submit("devA", _forged(site, "devA", 1, lambda s, k: anon_wire.anon_secret(s, k + 1)))
    assert out.refused == Reason.ANON_BAD_PROOF
    # a counter past the recorded batch: no certificate
    out = site.submit("devA", _again(site, "devA", BATCH + 1, 0))
    assert out.refused == Reason.ANON_UNKNOWN_CERTIFICATE
    spend = anon_spend_tx(site.net.chain_id, site.net["gateway"].priv, anon_wire.anon_id(secret_of("devA"), BATCH + 1),
                          bytes(65), bytes(33), site.tick(), nonce=site.net.nonce())
    assert site.block([spend], site.time_ms)[0].code == Reason.ANON_UNKNOWN_CERTIFICATE


def test_replayed_request_is_refused_silently(site):
    request = site.devices["devB"].request(site.tick())
    assert site.submit("devB", request).refused is None
    effects = site.fogs[0].on_request(request.topic, request.payload, site.tick())
    assert [type(e) for e in effects] == [AnonRefused] and effects[0].reason == Reason.ANON_REPLAY
    # once the fog has forgotten its C1, the request's time is too old
    effects = site.fogs[0].on_request(request.topic, request.payload, site.time_ms + 61_000)
    assert effects[0].reason == REASON_CLOCK_SKEW


def test_altered_or_misdirected_requests_are_refused(site):
    request = site.devices["devC"].request(site.tick())
    c1, c2, c3 = anon_wire.decode_request(request.payload)
    flipped = anon_wire.encode_request(c1, c2[:-1] + bytes([c2[-1] ^ 1]), c3)
    assert site.fogs[0].on_request(request.topic, flipped, site.tick())[0].reason == REASON_BAD_TAG
    assert site.fogs[0].on_request(request.topic, b"\xa0", site.tick())[0].reason == REASON_MALFORMED
    assert site.fogs[0].on_request("ll/other/anon/req", request.payload, site.tick())[0].reason == REASON_MALFORMED
    # a request sealed to another fog's key does not open here
    stranger = anon_device.build_request(SITE, site.net["devC"].id, site.net["devC"].priv, secret_of("devC"), 2,
                                         site.cloud.public_key, site.cloud.public_key, site.tick(), Rng("x"))
    assert site.fogs[0].on_request(stranger.topic, stranger.payload, site.tick())[0].reason == REASON_BAD_TAG
    assert site.submit("devC", request).refused is None                   # the original still passes


def test_counter_persists_and_fails_closed(site, tmp_path):
    path = str(tmp_path / "devA.counter")
    site.session("devA")
    assert anon_device.AnonCounter(path, secret_of("devA")).last() == 1      # a restart reads k back
    with pytest.raises(anon_device.AnonError):
        anon_device.AnonCounter(path, secret_of("devB")).last()              # a file of another secret
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(anon_device.AnonError):
        site.devices["devA"].request(site.tick())                            # damaged: refused
    import os
    os.remove(path)
    with pytest.raises(anon_device.AnonError):
        site.devices["devA"].request(site.tick())                            # lost: refused
    anon_device.AnonCounter(path, secret_of("devA")).provision()
    for _ in range(BATCH):
        site.devices["devA"].counter.take()
    with pytest.raises(anon_device.AnonError):
        site.devices["devA"].request(site.tick())                            # batch used up


def test_only_the_cloud_can_deanonymize(site):
    out = site.session("devB")
    grant = cose.decode_sign1([p for t, p in out.broker if t.endswith("/anon/cloud")][0])
    _, box, c1, escrow, _, _, anon_id = anon_wire.decode_grant_payload(grant.payload)
    assert site.cloud.deanonymize(out.cloud_session) == site.net["devB"].id
    # every private key the fog, the gateways, the admin and the devices hold: none opens the escrow or the key box
    others = [site.net[n].priv for n in ("fog-ecies", "gateway", "gateway2", "admin", "devA", "devB", "devC")]
    for priv in others:
        with pytest.raises(LedgerlinkError):
            ecies.open_sealed(ecies.derive(ecies.shared(priv, c1), c1, anon_wire.ESCROW_INFO), *escrow, c1)
        with pytest.raises(LedgerlinkError):
            ecies.decrypt(priv, box[0], box[1], box[2], anon_wire.GRANT_INFO, out.cloud_session.session_id)
    # the cloud's escrow key does both
    assert ecies.decrypt(site.cloud_priv, box[0], box[1], box[2], anon_wire.GRANT_INFO,
                         out.cloud_session.session_id)[:16] == out.session.key


def test_a_device_cannot_frame_another_in_the_escrow(site):
    dev = site.devices["devC"]
    dev.device_id = site.net["devA"].id                 # claims to be A, signs with its own key
    out = site.session("devC")
    assert out.refused is None
    with pytest.raises(InvalidSignature):
        site.cloud.deanonymize(out.cloud_session)


def test_grants_from_unknown_fogs_or_altered_are_refused(site):
    out = site.session("devA")
    grant = [p for t, p in out.broker if t.endswith("/anon/cloud")][0]
    with pytest.raises(LedgerlinkError):
        site.cloud.on_grant(grant[:-1] + bytes([grant[-1] ^ 1]))
    msg = cose.decode_sign1(grant)
    forged = cose.sign1(msg.payload, site.net["admin"].priv, site.net["gateway"].id, anon_wire.GRANT_AAD)
    with pytest.raises(LedgerlinkError):
        site.cloud.on_grant(forged)


def test_anon_certs_contract_refusals(site):
    batch = anon_wire.certificate_batch(secret_of("new"), 1, 3)
    net = site.net
    ok = anon_certs_tx(net.chain_id, net["admin"].priv, batch, site.tick(), nonce=net.nonce())
    by_gateway = anon_certs_tx(net.chain_id, net["gateway"].priv, batch, site.time_ms, nonce=net.nonce())
    pairs = sorted([list(p) for p in anon_wire.certificate_batch(secret_of("other"), 1, 3)])
    unsorted = net.tx("admin", TxKind.ANON_CERTS, {4: pairs[::-1]})
    repeated = net.tx("admin", TxKind.ANON_CERTS, {4: [pairs[0], pairs[0]]})
    uncompressed = net.tx("admin", TxKind.ANON_CERTS, {4: [[pairs[0][0], bytes(65)]]})
    off_curve = net.tx("admin", TxKind.ANON_CERTS, {4: [[pairs[0][0], b"\x02" + (1).to_bytes(32, "big")]]})
    empty = net.tx("admin", TxKind.ANON_CERTS, {4: []})
    again = anon_certs_tx(net.chain_id, net["admin"].priv, batch[:1], site.time_ms, nonce=net.nonce())
    codes = [r.code for r in site.block([ok, by_gateway, unsorted, repeated, uncompressed, off_curve,
                                                    empty, again], site.time_ms)]
    assert codes == [0, Reason.NOT_AUTHORIZED] + [Reason.INVALID_FIELD] * 5 + [Reason.ALREADY_EXISTS]
    assert site.state.get_record(RK.ANON_CERT, batch[0][0]) == {1: batch[0][1], 2: net["admin"].id,
                                                                  3: site.state.height}


def test_spend_by_a_non_gateway_is_refused(site):
    dev = site.devices["devA"]
    request = dev.request(site.tick())
    effects = site.fogs[0].on_request(request.topic, request.payload, site.tick())
    body = cbor.loads(cose.decode_sign1(effects[0].tx).payload)
    tx = anon_spend_tx(site.net.chain_id, site.net["admin"].priv, body[4], body[5], body[6], site.time_ms,
                       nonce=site.net.nonce())
    assert site.block([tx], site.time_ms)[0].code == Reason.NOT_AUTHORIZED
    assert site.block([effects[0].tx], site.time_ms)[0].code == 0
    # the same spend once more (a new transaction): the secondaryHash refuses it
    again = anon_spend_tx(site.net.chain_id, site.net["gateway2"].priv, body[4], body[5], body[6], site.time_ms,
                          nonce=site.net.nonce())
    assert site.block([again], site.time_ms)[0].code == Reason.ANON_SPENT_SECONDARY


def test_answer_is_checked_against_the_request(site):
    first = site.devices["devA"].request(site.tick())
    out = site.submit("devA", first)
    second = site.devices["devA"].request(site.tick())
    reply = [p for t, p in out.broker if t == first.reply_topic][0]
    with pytest.raises(InvalidTag):
        anon_device.check_response(second, reply)          # another request's answer does not open
    assert isinstance(out.session, anon_device.AnonSession)


def test_counter_survives_a_power_loss_at_each_step_of_a_write_on_a_fat_like_filesystem(tmp_path, monkeypatch):
    import os

    path = str(tmp_path / "c")
    counter = anon_device.AnonCounter(path, secret_of("devA"))
    counter.provision()
    assert counter.take() == 1
    real_rename, real_remove = os.rename, os.remove

    def fat_rename(src, dst):
        if os.path.exists(dst):
            raise OSError("target exists")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", fat_rename)
    assert counter.take() == 2 and counter.last() == 2       # the rename that does not replace is handled

    class PowerLoss(Exception):
        pass

    def lose_after_remove(p):
        real_remove(p)
        raise PowerLoss()

    monkeypatch.setattr(os, "remove", lose_after_remove)
    with pytest.raises(PowerLoss):
        counter.take()                                      # power lost with only path.tmp (k = 3) on flash
    monkeypatch.setattr(os, "remove", real_remove)
    assert not os.path.exists(path)
    assert anon_device.AnonCounter(path, secret_of("devA")).take() == 4    # 3 may not have been used: skipped


def _spend_pending(site, name="devA"):
    request = site.devices[name].request(site.tick())
    effects = site.fogs[0].on_request(request.topic, request.payload, site.time_ms)
    assert isinstance(effects[0], AnonSpend)
    return request, effects[0]


def _answer(request, effects):
    reply = [e for e in effects if isinstance(e, AnonReply)][0]
    with pytest.raises(anon_device.AnonRefused) as refused:
        anon_device.check_response(request, reply.payload)
    return refused.value.code


def test_no_grant_without_a_proof_that_the_ledger_applied_this_spend(site):
    from ledgerlink.gateway.anon_fog import AnonGrant
    from ledgerlink.protocol.codes import REASON_LEDGER_UNAVAILABLE

    request, spend = _spend_pending(site)
    effects = site.fogs[0].on_spend_result(spend.tx_id, 0, site.time_ms, None)      # "applied", no proof
    assert not any(isinstance(e, AnonGrant) for e in effects)
    assert _answer(request, effects) == REASON_LEDGER_UNAVAILABLE
    # a proof of another record, and a proof that the spent record is absent
    for proof in (site.ledger.record(RK.ANON_CERT, request.anon_id)["proof"],
                  site.ledger.record(RK.ANON_SPENT, anon_wire.secondary_hash(request.anon_id))["proof"]):
        request, spend = _spend_pending(site)
        effects = site.fogs[0].on_spend_result(spend.tx_id, 0, site.time_ms, proof)
        assert not any(isinstance(e, AnonGrant) for e in effects) and _answer(request, effects) == 14
    # the spent record of this certificate, written by another transaction (the ledger applied another spend)
    request, spend = _spend_pending(site, "devB")
    other = anon_spend_tx(site.net.chain_id, site.net["gateway"].priv, request.anon_id,
                          cbor.loads(cose.decode_sign1(spend.tx).payload)[5],
                          anon_wire.decode_request(request.payload)[0], site.time_ms, nonce=site.net.nonce())
    assert site.block([other])[0].code == 0
    proof = site.ledger.record(RK.ANON_SPENT, anon_wire.secondary_hash(request.anon_id))["proof"]
    effects = site.fogs[0].on_spend_result(spend.tx_id, 0, site.time_ms, proof)
    assert not any(isinstance(e, AnonGrant) for e in effects) and _answer(request, effects) == 14


def test_a_certificate_record_not_proved_by_a_quorum_is_not_used(site):
    from tests.gateway.fake_ledger import FakeLedgerAdapter

    short = FakeLedgerAdapter(site.net, votes=2, clock=lambda: site.time_ms)     # 2 of 4 signatures
    short.commit_block([site.certs_tx], site.time_ms)
    site.fogs[0].cert_source = lambda anon_id: short.record(RK.ANON_CERT, anon_id)["proof"]
    request = site.devices["devA"].request(site.tick())
    out = site.submit("devA", request)
    assert out.refused == 14 and out.session is None
    site.fogs[0].cert_source = lambda anon_id: (_ for _ in ()).throw(ConnectionError("down"))
    assert site.session("devA").refused == 14


def test_anon_service_runs_the_fog_against_a_ledger_client(site):
    from ledgerlink.gateway.anon_fog import AnonService

    service = AnonService(site.fogs[0], site.ledger)
    request = site.devices["devC"].request(site.tick())
    published = service.handle(request.topic, request.payload, site.time_ms)
    assert [t for t, _ in published] == [request.reply_topic, anon_wire.grant_topic(SITE)]
    session = anon_device.check_response(request, published[0][1])
    assert site.cloud.on_grant(published[1][1]).key == session.key
    assert service.handle(request.topic, request.payload, site.time_ms) == [] and service.refused == {
        Reason.ANON_REPLAY: 1}
    site.ledger.available = False
    request = site.devices["devC"].request(site.tick())
    published = service.handle(request.topic, request.payload, site.time_ms)
    with pytest.raises(anon_device.AnonRefused) as refused:
        anon_device.check_response(request, published[0][1])
    assert refused.value.code == 14


def test_the_fogs_tables_survive_a_restart(site, tmp_path):
    from ledgerlink.gateway.anon_fog import AnonFog, AnonStore

    request = site.devices["devA"].request(site.tick())
    assert site.submit("devA", request).refused is None
    site.stores[0].db.close()
    store = AnonStore(str(tmp_path / "fog0.sqlite"))                     # the same file, opened again
    site.fogs[0] = AnonFog(SITE, site.net.chain_id, site.ledger.keys, site.net["fog-ecies"].priv,
                           site.net["gateway"].priv, site.cloud.public_key, site.cert_proof, store, Rng("fog0b"),
                           backend=site.net.backend)
    site.stores[0] = store
    effects = site.fogs[0].on_request(request.topic, request.payload, site.tick())
    assert effects[0].reason == Reason.ANON_REPLAY                       # the request's C1 is remembered
    assert site.submit("devA", _again(site, "devA", 1, 0)).refused == Reason.ANON_SPENT_PRIMARY


def test_a_request_prepared_ahead_is_used_once(site):
    dev = site.devices["devB"]
    dev.prepare()
    assert dev.counter.last() == 1 and dev.prepared.k == 1           # the certificate is taken when prepared
    prepared = dev.prepared
    first = dev.request(site.tick())
    assert dev.prepared is None and first.anon_id == prepared.anon_id
    assert site.submit("devB", first).refused is None
    second = dev.request(site.tick())                                  # nothing prepared: made now, k = 2
    assert second.k == 2 and second.anon_id != first.anon_id
    assert site.submit("devB", second).refused is None


def test_a_flood_of_forged_proofs_is_held_to_the_fogs_check_rate(tmp_path):
    from ledgerlink.protocol.codes import REASON_RATE_LIMITED

    site = Site(tmp_path)
    fog = site.fogs[0]
    fog.bucket.rate, fog.bucket.burst, fog.bucket.tokens = 1.0, 2.0, 2.0      # 1 check per second, 2 at once
    forged = [_forged(site, "devA", 1, lambda s, k: bytes(31) + b"\x09") for _ in range(3)]
    now = site.time_ms
    reasons = [fog.on_request(f.topic, f.payload, now)[0].reason for f in forged]
    assert reasons == [Reason.ANON_BAD_PROOF, Reason.ANON_BAD_PROOF, REASON_RATE_LIMITED]
    later = site.devices["devA"].request(now + 1000)                       # a second on, a token is back
    assert site.submit("devA", later).refused is None


def test_data_under_a_session_reaches_the_cloud_once_and_only_its_own(site):
    from ledgerlink.core.errors import InvalidMessage

    a, b = site.session("devA"), site.session("devB")
    now = site.time_ms
    frames = [a.session.seal(SITE, b"temp=21.5"), a.session.seal(SITE, b"temp=21.6")]
    assert frames[0][0] == anon_wire.data_topic(SITE, a.session.session_id)
    assert [site.cloud.open_data(t, f, now)[1:] for t, f in frames] == [(1, b"temp=21.5"), (2, b"temp=21.6")]
    with pytest.raises(InvalidMessage):
        site.cloud.open_data(*frames[1], now)                                   # a replay
    topic, frame = a.session.seal(SITE, b"x")
    with pytest.raises(InvalidTag):
        site.cloud.open_data(topic, frame[:-1] + bytes([frame[-1] ^ 1]), now)   # altered
    with pytest.raises(InvalidMessage):
        site.cloud.open_data(anon_wire.data_topic(SITE, b.session.session_id), frame, now)   # moved to B's topic
    stray = anon_device.AnonSession(a.session.key, a.session.base_iv, bytes(8), 0, bytes(32))
    with pytest.raises(InvalidMessage):
        site.cloud.open_data(*stray.seal(SITE, b"x"), now)                     # no grant for this session id
    topic, frame = b.session.seal(SITE, b"late")
    with pytest.raises(InvalidMessage):
        site.cloud.open_data(topic, frame, b.session.valid_until_s * 1000)     # expired
    assert site.cloud.open_data(topic, frame, now)[2] == b"late"
