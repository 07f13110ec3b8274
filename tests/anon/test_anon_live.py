"""Anonymous sessions over a real mosquitto: devices connect with a fresh client id per session and send a
reading under it, the fog answers through ``AnonMqtt``, the cloud takes grants and readings from their
topics, and an observer subscribed to ``#`` (the broker's position) records every topic and payload. The
unlinkability property of ``test_anon_unlinkable`` is then checked on what the broker carried, client ids
included."""

import queue
import subprocess
import time

import paho.mqtt.client as paho
import pytest

from ledgerlink.gateway.anon_fog import AnonService
from ledgerlink.gateway.anon_mqtt import AnonMqtt
from ledgerlink.gateway.mqtt_client import MqttClient
from ledgerlink.protocol import anon_device, anon_wire
from tests.anon.site import SITE, Rng, Site
from tests.anon.test_anon_unlinkable import linking
from tests.gateway.test_mqtt_client import MOSQUITTO, free_port, wait_port

WAIT_S = 20.0


@pytest.fixture
def mosquitto():
    port = free_port()
    proc = subprocess.Popen([MOSQUITTO, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _client(client_id, port, topics, box):
    ready = queue.Queue()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.on_message = lambda cl, u, m: box.put((m.topic, bytes(m.payload)))
    c.on_subscribe = lambda cl, u, mid, codes, p: ready.put(1)
    c.on_connect = lambda cl, u, f, r, p: cl.subscribe([(t, 1) for t in topics])
    c.connect("127.0.0.1", port)
    c.loop_start()
    ready.get(timeout=WAIT_S)
    return c


def _close(c):
    c.loop_stop()
    c.disconnect()


def test_sessions_over_mosquitto_are_unlinkable_on_the_wire(mosquitto, tmp_path):
    site = Site(tmp_path)
    # times step by a second per session, as in test_anon_unlinkable: the property leaves times out (a
    # wall clock's would share high bytes by chance), the fog's rows and the spend carry them
    clock = [int(time.time() * 1000)]
    site.ledger.clock = lambda: clock[0]
    observed = queue.Queue()
    observer = _client("observer", mosquitto, ["#"], observed)
    grants = queue.Queue()
    cloud = _client("cloud", mosquitto, [anon_wire.grant_topic(SITE)], grants)
    cloud_data = queue.Queue()
    cloud_up = _client("cloud-data", mosquitto, ["ll/%s/anon/up/+" % SITE], cloud_data)
    fog_client = MqttClient("127.0.0.1", mosquitto, "fog-1", backoff=(0.05, 0.2))
    fog = AnonMqtt(AnonService(site.fogs[0], site.ledger), fog_client, clock=lambda: clock[0]).start()
    fog_client.start()
    assert fog_client.wait_connected(WAIT_S)
    time.sleep(0.3)
    ids = Rng("client-ids")
    views, keys = {}, {}
    try:
        for label, name in (("A1", "devA"), ("B", "devB"), ("A2", "devA"), ("C", "devC")):
            before = site.stores[0].rows()
            clock[0] += 1000
            request = site.devices[name].request(clock[0])
            client_id = "anon-" + ids(8).hex()                 # fresh per session, nothing of the device
            answers = queue.Queue()
            device = _client(client_id, mosquitto, [request.reply_topic], answers)
            device.publish(request.topic, request.payload, qos=1)
            topic, payload = answers.get(timeout=WAIT_S)
            session = anon_device.check_response(request, payload)
            grant_topic, grant = grants.get(timeout=WAIT_S)
            cloud_session = site.cloud.on_grant(grant)
            assert cloud_session.key == session.key
            keys[label] = site.cloud.deanonymize(cloud_session)
            data_topic, frame = session.seal(SITE, b"temp=21.5 C")
            device.publish(data_topic, frame, qos=1).wait_for_publish(WAIT_S)
            _close(device)
            assert site.cloud.open_data(*cloud_data.get(timeout=WAIT_S), clock[0])[2] == b"temp=21.5 C"
            seen = []
            while not all(x in seen for x in (request.payload, payload, grant, frame)):
                seen += list(observed.get(timeout=WAIT_S))    # the observer sees all three, maybe later
            spend = site.ledger.submitted[-1]
            views[label] = seen + [client_id, spend] + [tuple(r) for r in site.stores[0].rows() if r not in before]
    finally:
        fog.stop()
        fog_client.stop()
        _close(cloud)
        _close(cloud_up)
        _close(observer)
    assert keys == {"A1": site.net["devA"].id, "B": site.net["devB"].id, "A2": site.net["devA"].id,
                    "C": site.net["devC"].id}
    assert linking(views) == set()
    assert fog.handled == 4
