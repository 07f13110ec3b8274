"""MQTT 5 test clients (paho) for tests against a running broker."""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as paho

from ledgerlink.core import cbor


def subscriber(port: int, topic: str, client_id: str, login: dict[str, str] | None = None
               ) -> tuple[paho.Client, queue.Queue]:
    """A connected client subscribed to ``topic`` (QoS 1); messages arrive as (topic, payload) in the queue.

    ``login``: a broker account (``{"username", "password"}``; its username is then the client id)."""
    q: queue.Queue = queue.Queue()
    ready: queue.Queue = queue.Queue()
    c = _client(client_id, login)
    c.on_message = lambda cl, u, m: q.put((m.topic, bytes(m.payload)))
    c.on_subscribe = lambda cl, u, mid, codes, p: ready.put(1)
    c.on_connect = lambda cl, u, f, r, p: cl.subscribe(topic, qos=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    ready.get(timeout=10)
    return c, q


def _client(client_id: str, login: dict[str, str] | None) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=login["username"] if login else client_id,
                    protocol=paho.MQTTv5)
    if login:
        c.username_pw_set(login["username"], login["password"])
    return c


def close(c: paho.Client) -> None:
    c.loop_stop()
    c.disconnect()


class Verified:
    """The application's view: the readings the gateway republishes on the site's verified topic."""

    def __init__(self, port: int, site: str, client_id: str, login: dict[str, str] | None = None) -> None:
        self.readings: list = []
        self.c = _client(client_id, login)
        self.c.on_message = lambda c, u, m: self.readings.append(cbor.loads(bytes(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe("ll/%s/verified/+" % site, qos=1)
        time.sleep(0.2)

    def close(self) -> None:
        close(self.c)
