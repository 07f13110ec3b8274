"""``ledgerlink_client.anon.AnonClient`` (portable, run here on CPython) over a scripted broker stream that
holds the fog of ``tests.anon.site``: a request the fog never got (sent before it subscribed) is sent again
and answered once; a fresh client id per session; a refused request raises the fog's reason; no answer
within the timeout is an OSError."""

from __future__ import annotations

import sys

import pytest

from ledgerlink.gateway.anon_fog import AnonService
from ledgerlink.protocol import anon_device, anon_wire
from ledgerlink.ledger.state import Reason
from tests.anon.site import SITE, Rng, Site
from tests.conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "micropython"))

from ledgerlink_client import anon, mqtt  # noqa: E402

LOGIN = {"username": "ll-anon-" + SITE, "password": "pw"}


class Broker:
    """A stream to a broker with one fog behind it: CONNACK, SUBACK, PUBACK; the first ``deaf`` requests
    are lost (no fog subscribed yet), the others go to ``AnonService`` and its answers come back when on a
    topic the client subscribed to."""

    def __init__(self, site: Site, deaf: int = 0) -> None:
        self.site = site
        self.service = AnonService(site.fogs[0], site.ledger)
        self.deaf = deaf
        self.out = bytearray()
        self.subscribed: list[str] = []
        self.requests: list[bytes] = []
        self.data: list[tuple[str, bytes]] = []         # what the client sent beside requests
        self.published: list[tuple[str, bytes]] = []    # what the fog sent
        self.client_id = None

    def write(self, data: bytes) -> None:
        kind = data[0] >> 4
        if kind == mqtt.CONNECT:
            self.client_id = data[14:14 + int.from_bytes(data[12:14], "big")].decode()
            self.out += b"\x20\x02\x00\x00"
        elif kind == mqtt.SUBSCRIBE:
            pid = data[2:4]
            self.subscribed.append(data[6:6 + int.from_bytes(data[4:6], "big")].decode())
            self.out += b"\x90\x03" + pid + b"\x01"
        elif kind == mqtt.PUBLISH:
            pkt, _ = mqtt.parse(bytes(data))
            self.out += mqtt.encode_puback(pkt.pid)
            if pkt.topic != anon_wire.request_topic(SITE):
                self.data.append((pkt.topic, pkt.payload))
                return
            self.requests.append(pkt.payload)
            if len(self.requests) <= self.deaf:
                return
            for topic, payload in self.service.handle(pkt.topic, pkt.payload, self.site.tick()):
                self.published.append((topic, payload))
                if topic in self.subscribed:
                    self.out += mqtt.encode_publish(topic, payload, 1, pid=7)

    def read(self, n: int, timeout_ms: int) -> bytes:
        data, self.out = bytes(self.out[:n]), self.out[n:]
        return data

    def close(self) -> None:
        pass


def _client(site: Site, broker_of, name: str = "devA") -> anon.AnonClient:
    return anon.AnonClient(site.devices[name], broker_of, LOGIN, Rng("client-ids/" + name))


def test_a_lost_request_is_sent_again_and_answered_once(tmp_path):
    site = Site(tmp_path)
    broker = Broker(site, deaf=1)
    client = _client(site, lambda: broker)
    session = client.open(site.tick(), timeout_ms=2000, resend_ms=300)
    assert len(broker.requests) == 2 and broker.requests[0] == broker.requests[1]     # the same request again
    assert [t for t, _ in broker.published] == broker.subscribed + [anon_wire.grant_topic(SITE)]
    assert client.send(b"temp=21.5 C") == anon_wire.data_topic(SITE, session.session_id)
    assert site.cloud.on_grant(broker.published[1][1]).key == session.key
    assert site.cloud.open_data(*broker.data[0], site.time_ms)[1:] == (1, b"temp=21.5 C")
    again = broker.service.handle(anon_wire.request_topic(SITE), broker.requests[0], site.tick())
    assert again == [] and broker.service.refused == {Reason.ANON_REPLAY: 1}        # a copy seen is a replay


def test_each_session_has_a_fresh_client_id(tmp_path):
    site = Site(tmp_path)
    brokers: list[Broker] = []
    client = _client(site, lambda: brokers.append(Broker(site)) or brokers[-1])
    for _ in range(3):
        client.open(site.tick(), timeout_ms=1000)
    client.close()
    ids = [b.client_id for b in brokers]
    assert len(set(ids)) == 3 and all(i.startswith("anon-") and len(i) == 21 for i in ids)
    assert not any(site.net["devA"].id.hex() in i for i in ids)


def test_a_refusal_and_no_answer(tmp_path):
    site = Site(tmp_path)
    site.ledger.available = False
    client = _client(site, lambda: Broker(site))
    with pytest.raises(anon_device.AnonRefused) as refused:
        client.open(site.tick(), timeout_ms=1000)
    assert refused.value.code == 14                                  # ledger-unavailable, from the fog
    client = _client(site, lambda: Broker(site, deaf=100))
    with pytest.raises(OSError, match="no answer from the fog"):
        client.open(site.tick(), timeout_ms=600, resend_ms=200)
    with pytest.raises(OSError, match="no anonymous session"):
        client.send(b"x")

