"""Updates over the device's own topics: status, offer, chunk requests and chunks between the device's
UpdateClient and the gateway-side UpdatePublisher, through resets and lost or forged messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import update_agent as ua, update_check as uc, update_transport as ut
from ledgerlink.ledger.state.codes import RecordKind
from ledgerlink.protocol.codes import IMAGE_APP_LIBRARY, IMAGE_CONFIGURATION
from tests.updates.site import ReleaseSite, offer_digest
from tests.updates.test_update_agent import make_agent

CONFIG = b'{"interval_s": 3}' * 40
APP = bytes(range(251)) * 11


def _pump(client: ut.UpdateClient, publisher: ut.UpdatePublisher, out: list[bytes], device: bytes = b"d" * 16,
          budget: int = 10_000, lose_every: int = 0) -> int:
    """Deliver requests and answers until both ends are quiet; the number of fw messages delivered."""
    delivered = 0
    while out and budget:
        request = out.pop(0)
        for answer in publisher.handle(device, request):
            delivered += 1
            budget -= 1
            if lose_every and delivered % lose_every == 0:
                continue
            out.extend(client.handle(answer, now_ms=0))
        if not out:
            out.extend(client.requests())     # the device's retry when nothing came for a while
    return delivered


@pytest.fixture
def site() -> ReleaseSite:
    return ReleaseSite()


def test_device_gets_the_newest_release_of_each_component_and_reports_it(site, tmp_path):
    publisher = ut.UpdatePublisher()
    publisher.add(ut.Release(site.release(CONFIG[:100], IMAGE_CONFIGURATION, 1), CONFIG[:100]))
    newest = site.release(CONFIG, IMAGE_CONFIGURATION, 2, version="cfg-2")
    publisher.add(ut.Release(newest, CONFIG))
    publisher.add(ut.Release(site.release(APP, IMAGE_APP_LIBRARY, 7, chunk_size=512), APP))
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    client = ut.UpdateClient(agent)
    _pump(client, publisher, [client.status()])
    assert (tmp_path / "config.json").read_bytes() == CONFIG
    assert (tmp_path / "app.1").read_bytes() == APP
    status = publisher.status_of(b"d" * 16)
    assert status[2][IMAGE_CONFIGURATION] == [2, offer_digest(newest), "cfg-2", True]
    assert status[2][IMAGE_APP_LIBRARY][0] == 7
    assert publisher.handle(b"d" * 16, client.status()) == []          # nothing newer to offer


def test_lost_chunks_are_asked_again_and_a_reset_resumes(site, tmp_path):
    publisher = ut.UpdatePublisher()
    publisher.add(ut.Release(site.release(APP, IMAGE_APP_LIBRARY, 3, chunk_size=64), APP))
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    client = ut.UpdateClient(agent)
    out = [client.status()]
    offer_msg = publisher.handle(b"d" * 16, out.pop())[0]
    out = client.handle(offer_msg)
    for request in out[:1]:
        for answer in publisher.handle(b"d" * 16, request)[:3]:
            client.handle(answer)
    assert agent.next_chunk() == 3
    restarted = make_agent(site, tmp_path, provision=False)          # reset mid-download
    restarted.boot(0)
    client = ut.UpdateClient(restarted)
    resumed = client.resume()
    assert cbor.loads(resumed[0])[2] == 3
    asked = _pump(client, publisher, resumed, lose_every=5)
    assert (tmp_path / "app.1").read_bytes() == APP
    assert asked >= len(APP) // 64 - 3


def test_a_forged_chunk_is_refused_and_reported_not_offered_again(site, tmp_path):
    publisher = ut.UpdatePublisher()
    offer = site.release(CONFIG, IMAGE_CONFIGURATION, 5)
    release = ut.Release(offer, CONFIG)
    release.payload = CONFIG[:-1] + b"X"                                 # a publisher (or broker) that lies
    publisher.add(release)
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    client = ut.UpdateClient(agent)
    _pump(client, publisher, [client.status()])
    assert not (tmp_path / "config.json").exists()
    assert client.refusals == [[uc.UPDATE_DIGEST, offer_digest(offer)]]
    assert publisher.status_of(b"d" * 16)[3] == [[uc.UPDATE_DIGEST, offer_digest(offer)]]
    assert publisher.handle(b"d" * 16, client.status()) == []
    assert IMAGE_CONFIGURATION not in agent.running()


def test_an_offer_refused_by_the_device_is_reported(site, tmp_path):
    publisher = ut.UpdatePublisher()
    offer = site.release(CONFIG, IMAGE_CONFIGURATION, 5, on_ledger=False)
    publisher.add(ut.Release(offer, CONFIG))
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    client = ut.UpdateClient(agent)
    _pump(client, publisher, [client.status()])
    assert client.refusals == [[uc.UPDATE_NOT_ON_LEDGER, offer_digest(offer)]]


def test_an_offer_refused_for_stale_proofs_is_offered_again_with_fresh_ones(site, tmp_path):
    """A device that refused an offer's proofs as too old gets the release again: the service re-proves
    offers (``admin_release serve --cluster``), so that refusal is not the release's."""
    offer = site.release(CONFIG, IMAGE_CONFIGURATION, 5)
    fresh = {"offer": offer}
    publisher = ut.UpdatePublisher(lambda release: fresh["offer"])
    publisher.add(ut.Release(offer, CONFIG))
    for _ in range(4):
        site.commit([])
    agent = make_agent(site, tmp_path)
    agent.fresh_heights = 2
    agent.boot(0)
    agent.saw_header(site.height)
    client = ut.UpdateClient(agent)
    _pump(client, publisher, [client.status()])
    assert client.refusals == [[uc.UPDATE_STALE_PROOF, offer_digest(offer)]]
    fresh["offer"] = uc.encode_offer(cbor.loads(offer)[1], site.proof(RecordKind.DEVICE, site.net["maintenance"].id),
                                     site.proof(RecordKind.FIRMWARE, offer_digest(offer)))
    _pump(client, publisher, [client.status()])
    assert (tmp_path / "config.json").read_bytes() == CONFIG


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_junk_on_either_topic_is_dropped(data):
    publisher = ut.UpdatePublisher()
    assert publisher.handle(b"d" * 16, data) == []                       # no release: nothing to send
    try:
        ut.decode_request(data)
    except LedgerlinkError:
        pass


def test_junk_fw_messages_leave_the_device_as_it_was(site, tmp_path: Path):
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    client = ut.UpdateClient(agent)
    for junk in (b"", b"\xff", cbor.dumps([1, b"x"]), cbor.dumps([2, bytes(32), 0, b"x"]), cbor.dumps({1: 2})):
        client.handle(junk)
    assert agent.pending is None and agent.running() == {}


def test_broker_rules_give_the_device_its_fw_topic_read_only():
    from ledgerlink.tools.broker_access import RECEIVE, SEND, SUBSCRIBE, rules
    from ledgerlink.tools.mqtt_acl import topic_matches

    dev, other = "ab" * 16, "cd" * 16
    mine = rules("s", "ll-" + dev, "device", dev)
    fw, upd = "ll/s/dev/%s/fw" % dev, "ll/s/dev/%s/upd" % dev
    assert (SUBSCRIBE, fw) in mine and (RECEIVE, fw) in mine and (SEND, upd) in mine
    assert not any(kind == SEND and topic_matches(rule, fw) for kind, rule in mine)
    assert not any(topic_matches(rule, "ll/s/dev/%s/fw" % other) for _, rule in mine)
    service = rules("s", "ll-updates", "updates")
    assert any(kind == SEND and topic_matches(rule, fw) for kind, rule in service)
    assert any(kind == RECEIVE and topic_matches(rule, upd) for kind, rule in service)
    assert not any(kind == SEND and topic_matches(rule, "ll/s/dev/%s/down" % dev) for kind, rule in service)


def test_a_stalled_download_asks_again_only_after_the_retry_time(site, tmp_path):
    publisher = ut.UpdatePublisher()
    publisher.add(ut.Release(site.release(CONFIG, IMAGE_CONFIGURATION, 2, chunk_size=64), CONFIG))
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    client = ut.UpdateClient(agent)
    offer = publisher.handle(b"d" * 16, client.status())[0]
    first = client.handle(offer, now_ms=1000)
    assert cbor.loads(first[0])[2:] == [0, ut.CHUNK_WINDOW]                 # the answers are lost
    assert client.retry(1000 + ut.RETRY_MS - 1) == []
    again = client.retry(1000 + ut.RETRY_MS)
    assert again == first
    for answer in publisher.handle(b"d" * 16, again[0]):
        client.handle(answer, now_ms=7000)
    assert agent.next_chunk() == ut.CHUNK_WINDOW


def test_an_idle_device_sends_its_status_again_so_a_restarted_service_hears_it(site, tmp_path):
    """A service (re)started after a device connected has missed its status: the device repeats it every
    STATUS_EVERY_MS while no download is under way, and the release then reaches it."""
    agent = make_agent(site, tmp_path)
    agent.boot(0)
    client = ut.UpdateClient(agent)
    assert client.retry(1000) == []
    assert client.retry(1000 + ut.STATUS_EVERY_MS - 1) == []
    again = client.retry(1000 + ut.STATUS_EVERY_MS)
    assert again == [client.status()]
    publisher = ut.UpdatePublisher()
    publisher.add(ut.Release(site.release(CONFIG, IMAGE_CONFIGURATION, 3), CONFIG))
    _pump(client, publisher, again)
    assert (tmp_path / "config.json").read_bytes() == CONFIG
