"""Discovery and device-to-device queries on a live site with mosquitto: the seed's three cases
(unregistered, offline, online), the communication record and its proof, banned partners never
returned, a third client refused on a pair's topics by the real broker, and a ban ending a session
within a second."""

from __future__ import annotations

import time

import pytest

from ledgerlink.device.peer import PartnerUnavailable
from ledgerlink.protocol import discovery as dsc
from ledgerlink.protocol import peer_session as ps
from ledgerlink.protocol.codes import RECORD_DEVICE, STATUS_BANNED
from ledgerlink.protocol.ledger_tx import RECORD_COMMUNICATION
from tests.access.conftest import NOT_AUTHORIZED, Client

from .conftest import machine_state

BAN_WITHIN_S = 1.0
ONLINE_S = 15.0                 # an online partner answers well within this, also on a loaded machine


def test_unregistered_partner_is_a_clear_failure_proven_by_the_ledger(site):
    priv, _ = site.register({"type": "lap-former", "line": "U1"})
    a = site.device(priv)
    with pytest.raises(PartnerUnavailable) as err:
        a.query(bytes(16), "state")
    assert err.value.reason == "unregistered"


def test_online_partner_answers_live_and_the_exchange_is_recorded_with_proof(site):
    pa, a_id = site.register({"type": "lap-former", "step": "lap", "line": "O1"})
    pb, b_id = site.register({"type": "carding-machine", "step": "carding", "line": "O1"})
    a = site.device(pa)
    b = site.device(pb, machine_state("carder"))
    found = a.find_by({"step": "carding", "line": "O1"})
    assert [r.device_id for r in found] == [b_id]
    out = a.query(b_id, "state", {"lot": "L-1"}, timeout=ONLINE_S)
    assert out.case == "online"
    assert out.info.status == ps.INFO_OK and out.info.body == {"machine": "carder", "n": 1, "args": {"lot": "L-1"}}
    ex = out.exchange
    assert ex.sender == a_id and ex.receiver == b_id
    assert out.recorded[2] == dsc.DIR_OK, out.recorded          # recorded before query returned
    assert a.record_exchange(ex)[2] == dsc.DIR_REFUSED          # once
    rec = a.communication_record(a_id, ex.digest)
    assert rec[1] == a_id and rec[2] == b_id and rec[5] == ex.digest and rec[4] == ex.size
    seen_by_b = [e for e in b.exchanges if e.digest == ex.digest]
    assert seen_by_b, "the partner computes the same digest of the exchange"
    assert b.communication_record(a_id, ex.digest)[2] == b_id
    with pytest.raises(dsc.DiscoveryError):             # another digest: proven absent
        a.communication_record(a_id, bytes(32))


def test_tampered_record_proof_of_the_communication_is_refused(site):
    pa, a_id = site.register({"type": "lap-former", "line": "T1"})
    pb, b_id = site.register({"type": "carding-machine", "line": "T1"})
    a, _ = site.device(pa), site.device(pb, machine_state("carder"))
    out = a.query(b_id, "state", timeout=ONLINE_S)
    ex = out.exchange
    assert out.recorded[2] == dsc.DIR_OK
    proof = a.ask(dsc.DIR_RECORD, [RECORD_COMMUNICATION, [a_id, ex.digest]])[3][0]
    rid = [a_id, ex.digest]
    dsc.verify_record(proof, site.stack.chain_id, site.stack.validators, RECORD_COMMUNICATION, rid)
    forged = dict(proof)
    forged[3] = proof[3].replace(b_id, bytes(16))
    with pytest.raises(dsc.DiscoveryError) as err:
        dsc.verify_record(forged, site.stack.chain_id, site.stack.validators, RECORD_COMMUNICATION, rid)
    assert err.value.reason == "proof"


def test_offline_partner_gives_its_proven_history_and_answers_the_queued_query_when_back(site):
    pa, a_id = site.register({"type": "carding-machine", "line": "F1"})
    pc, c_id = site.register({"type": "combing-machine", "line": "F1"})
    a = site.device(pa)
    out = a.query(c_id, "state", timeout=1.0)
    assert out.case == "offline" and out.info is None
    kinds = [(kind, rid) for kind, rid, _ in out.history]
    assert (RECORD_DEVICE, c_id) in kinds
    record = dict((rid, rec) for kind, rid, rec in out.history if kind == RECORD_DEVICE)[c_id]
    assert record[4] == {"type": "combing-machine", "line": "F1"}
    site.device(pc, machine_state("comber"))          # comes back: the retained open is delivered
    assert out.later.wait(15), "the queued query was not answered when the partner came back"
    assert out.info.status == ps.INFO_OK and out.info.body["machine"] == "comber"


def test_banned_devices_are_never_returned_as_partners(site):
    pa, _ = site.register({"type": "lap-former", "line": "B1"})
    pd, d_id = site.register({"type": "carding-machine", "step": "carding", "line": "B1"})
    pe, e_id = site.register({"type": "carding-machine", "step": "carding", "line": "B1"})
    a = site.device(pa)
    assert {r.device_id for r in a.find_by({"step": "carding", "line": "B1"})} == {d_id, e_id}
    site.stack.ban(d_id, "test")
    deadline = time.monotonic() + 10
    while d_id not in site.directory.index.banned and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.device_id for r in a.find_by({"step": "carding", "line": "B1"})] == [e_id]
    with pytest.raises(PartnerUnavailable) as err:
        a.query(d_id, "state")
    assert err.value.reason == "banned"
    ans = a.ask(dsc.DIR_BY_ID, d_id)                  # the proof of the ban itself is refused as a partner
    with pytest.raises(dsc.DiscoveryError) as err2:
        dsc.partner(ans[3][0], site.stack.chain_id, site.stack.validators, d_id)
    assert err2.value.reason == "banned"
    assert dsc.device_record(ans[3][0], site.stack.chain_id, site.stack.validators, d_id).status == STATUS_BANNED
    # a lying directory that lists the banned device among matches: the device leaves it out
    assert dsc.partners([ans[3][0]], site.stack.chain_id, site.stack.validators, {"line": "B1"}) == []


def test_third_client_is_refused_on_a_pairs_topics_by_mosquitto(site):
    pa, a_id = site.register({"type": "lap-former", "line": "P1"})
    pb, b_id = site.register({"type": "carding-machine", "line": "P1"})
    pe, e_id = site.register({"type": "combing-machine", "line": "P1"})
    a, _ = site.device(pa), site.device(pb, machine_state("carder"))
    assert a.query(b_id, "state", timeout=ONLINE_S).case == "online"
    eve = Client(site.stack, "ll-" + e_id.hex(), site.stack.device_login(e_id))
    try:
        assert eve.accepted
        for topic in (ps.pair_topic("m2m", a_id, b_id), ps.pair_topic("m2m", b_id, a_id),
                      ps.inbox_filter("m2m", b_id), "ll/m2m/pair/#", "ll/m2m/pair/+/+"):
            assert eve.subscribe(topic) == NOT_AUTHORIZED, topic
        for topic in (ps.pair_topic("m2m", a_id, b_id), ps.pair_topic("m2m", b_id, a_id),
                      ps.pair_topic("m2m", e_id, b_id)):
            assert eve.publish(topic, b"\x83\x03") == NOT_AUTHORIZED, topic
        assert eve.subscribe(ps.inbox_filter("m2m", e_id)) == 1      # its own inbox, where nothing is granted
        assert a.query(b_id, "state", timeout=ONLINE_S).info.body["n"] == 2
        assert eve.drain(0.3) == []
    finally:
        eve.close()


@pytest.mark.parametrize("banned_side", ["responder", "initiator"])
def test_a_ban_ends_the_session_within_a_second(site, banned_side):
    pa, a_id = site.register({"type": "lap-former", "line": "S1"})
    pb, b_id = site.register({"type": "carding-machine", "line": "S1"})
    a, b = site.device(pa), site.device(pb, machine_state("carder"))
    out = a.query(b_id, "state", timeout=ONLINE_S)
    assert out.case == "online" and a.sessions and b.sessions
    # the side that stays, the banned one, and a frame the banned one sealed before its ban
    (stays, stays_id), (gone, gone_id) = ((a, a_id), (b, b_id)) if banned_side == "responder" else \
        ((b, b_id), (a, a_id))
    stays_session = stays.sessions[out.session.session_id]
    frame_from_gone = gone.sessions[out.session.session_id].seal(ps.encode_query(7, "state"))
    acks: dict[int, int] = {}
    stays.client.on_publish = lambda c, u, mid, reason, props: acks.__setitem__(mid, reason.value)
    site.stack.ban(gone_id, "test")
    banned_at = time.monotonic()
    deadline = banned_at + 5
    refused_s = None
    while time.monotonic() < deadline and (refused_s is None or gone_id not in stays.closed_at):
        info = stays.client.publish(ps.pair_topic("m2m", stays_id, gone_id), b"\x83\x03", 1)
        while info.mid not in acks and time.monotonic() < deadline:
            time.sleep(0.005)
        if refused_s is None and acks.get(info.mid) == NOT_AUTHORIZED:
            refused_s = time.monotonic() - banned_at
    assert gone_id in stays.closed_at and refused_s is not None, "the session did not end"
    closed_s = stays.closed_at[gone_id] - banned_at
    print("%s banned: ban committed -> partner closed the session %.3f s, broker refused the pair topic %.3f s"
          % (banned_side, closed_s, refused_s))
    assert closed_s < BAN_WITHIN_S and refused_s < BAN_WITHIN_S
    assert not stays.sessions
    with pytest.raises(ps.PeerError):
        stays_session.receive(frame_from_gone)
