"""The board's anonymous mode (``ledgerlink_client.anon``) on board32 (library in ROMFS, 110 KB heap) against
mosquitto with the site's accounts (dynamic security plugin) and against the embedded broker, with the fog's
MQTT service: the board logs in with the shared anonymous account and a fresh client id, its request is
answered, and the reading it sends under the session reaches the cloud side, which alone names the device."""

from __future__ import annotations

import json
import queue
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from ledgerlink.gateway.anon_fog import AnonService
from ledgerlink.gateway.anon_mqtt import AnonMqtt
from ledgerlink.gateway.mqtt_client import MqttClient
from ledgerlink.protocol import anon_wire
from ledgerlink.tools.board_runtime import Board
from ledgerlink.tools.broker_access import SiteAccess, anon_cloud_username, anon_fog_username, anon_username
from tests.anon.site import SITE, Site, secret_of
from tests.anon.test_anon_broker import _start

pytestmark = pytest.mark.slow          # about 20 s: the board's ROMFS image, then its elliptic-curve work

HEAP = 110_000             # a plain ESP32's free heap, as in test_anon_in_micropython
WAIT_S = 30.0

BOARD_SESSION = """
import json, hashlib
from ledgerlink.protocol import anon_device
from ledgerlink_client import anon, transport
class Rng:
    def __init__(self, seed):
        self.seed = hashlib.sha256(seed).digest()
        self.count = 0
    def __call__(self, n):
        out = b''
        while len(out) < n:
            self.count += 1
            out += hashlib.sha256(self.seed + self.count.to_bytes(8, 'big')).digest()
        return out[:n]
with open(INPUT + '/anon.json') as f:
    args = json.loads(f.read())
h = bytes.fromhex
rng = Rng(h(args['seed']))
counter = anon_device.AnonCounter(INPUT + '/anon.counter', h(args['secret']))
counter.provision()
dev = anon_device.AnonDevice(args['site'], h(args['dev']), h(args['priv']), h(args['secret']), counter, 4,
                             h(args['fog']), h(args['cloud']), rng)
client = anon.AnonClient(dev, lambda: transport.open_socket('127.0.0.1', args['port']), args['login'], rng)
session = client.open(args['time'])
out = {'client_id': client.client.client_id, 'session': session.session_id.hex(),
       'topics': [client.send(b'temp=21.5 C'), client.send(b'temp=21.6 C')]}
client.close()
print(json.dumps(out))
"""


def _paho(port: int, login: dict, topics: list[str], box: queue.Queue) -> paho.Client:
    ready: queue.Queue = queue.Queue()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=login["username"], protocol=paho.MQTTv5)
    c.username_pw_set(login["username"], login["password"])
    c.on_message = lambda cl, u, m: box.put((m.topic, bytes(m.payload)))
    c.on_subscribe = lambda cl, u, mid, codes, p: ready.put([x.value for x in codes])
    c.on_connect = lambda cl, u, f, r, p: cl.subscribe([(t, 1) for t in topics])
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert ready.get(timeout=WAIT_S) == [1] * len(topics)
    return c


@pytest.fixture(scope="module")
def board():
    with tempfile.TemporaryDirectory(prefix="anon-board-") as tmp:
        yield Board("romfs", heap_bytes=HEAP, workdir=Path(tmp))


@pytest.mark.parametrize("kind", ["mosquitto", "embedded"])
def test_a_board_opens_an_anonymous_session_through_the_broker_and_sends_under_it(kind, board, tmp_path):
    site = Site(tmp_path)
    site.ledger.clock = lambda: int(time.time() * 1000)
    access = SiteAccess(tmp_path / "broker", SITE)
    access.site_accounts(1, broker_admin=False)
    access.anon_accounts(1)
    broker, port = _start(kind, access, tmp_path)
    cloud_box: queue.Queue = queue.Queue()
    cloud = fog = fog_client = None
    try:
        cloud = _paho(port, access.login(anon_cloud_username(SITE)),
                      [anon_wire.grant_topic(SITE), "ll/%s/anon/up/+" % SITE], cloud_box)
        fog_login = access.login(anon_fog_username(SITE, 1))
        fog_client = MqttClient("127.0.0.1", port, fog_login["username"], backoff=(0.05, 0.2),
                                username=fog_login["username"], password=fog_login["password"])
        fog = AnonMqtt(AnonService(site.fogs[0], site.ledger), fog_client).start()
        fog_client.start()
        assert fog_client.wait_connected(WAIT_S)
        time.sleep(0.3)                                       # the shared subscription is in place
        (board.input / "anon.json").write_text(json.dumps({
            "site": SITE, "dev": site.net["devA"].id.hex(), "priv": site.net["devA"].priv.hex(),
            "secret": secret_of("devA").hex(), "fog": site.fogs[0].public_key.hex(),
            "cloud": site.cloud.public_key.hex(), "seed": tmp_path.name.encode().hex(), "port": port,
            "login": access.login(anon_username(SITE)), "time": int(time.time() * 1000)}))
        out, result = board.run_json_result(BOARD_SESSION, timeout=180)
        grant_topic, grant = cloud_box.get(timeout=WAIT_S)
        assert grant_topic == anon_wire.grant_topic(SITE)
        session = site.cloud.on_grant(grant)
        assert session.session_id.hex() == out["session"]
        opened = []
        for _ in out["topics"]:
            data_topic, frame = cloud_box.get(timeout=WAIT_S)
            assert data_topic == anon_wire.data_topic(SITE, session.session_id)
            opened.append(site.cloud.open_data(data_topic, frame, int(time.time() * 1000))[1:])
        assert opened == [(1, b"temp=21.5 C"), (2, b"temp=21.6 C")]
        assert site.cloud.deanonymize(session) == site.net["devA"].id
        assert out["client_id"].startswith("anon-") and len(out["client_id"]) == 21
        assert site.net["devA"].id.hex() not in json.dumps(out)
        assert fog.handled == 1 and result.peak_live < HEAP
        print("board32 anonymous session over %s: peak live heap %d bytes of %d" % (kind, result.peak_live, HEAP))
    finally:
        if fog is not None:
            fog.stop()
        if fog_client is not None:
            fog_client.stop()
        if cloud is not None:
            cloud.disconnect()
            cloud.loop_stop()
        broker.terminate()
        broker.wait(10)
