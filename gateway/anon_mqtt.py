"""The fog's anonymous-session service on MQTT: requests from the site's anonymous request topic (a shared
subscription, so several fog processes split them), answers and grants published QoS 1.

``AnonMqtt(service, client)`` subscribes ``$share/ll-anon-{site}/ll/{site}/anon/req`` on a gateway
``MqttClient`` and hands each request to a worker thread, which runs ``AnonService.handle`` (a ledger
round trip) and publishes what it returns before it acknowledges the request, so a fog that stops midway
leaves the request to be delivered again (and then refused as a replay or a spent certificate, never
granted twice). The network thread only queues.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from ledgerlink.gateway.anon_fog import AnonService
from ledgerlink.gateway.mqtt_client import Message, MqttClient
from ledgerlink.protocol import anon_wire

log = logging.getLogger("ledgerlink.gateway.anon_mqtt")
QUEUE_MAX = 1024                    # requests waiting for the worker; past it the broker keeps them (no ack)


def _now_ms() -> int:
    return int(time.time() * 1000)


class AnonMqtt:
    def __init__(self, service: AnonService, client: MqttClient, clock: Callable[[], int] = _now_ms) -> None:
        self.service = service
        self.client = client
        self.clock = clock
        self.handled = 0
        self._queue: queue.Queue = queue.Queue(QUEUE_MAX)
        self._thread = threading.Thread(target=self._run, name="ll-anon-fog", daemon=True)
        client.on_message = self._on_message

    @property
    def filter(self) -> str:
        site = self.service.fog.site
        return "$share/ll-anon-%s/%s" % (site, anon_wire.request_topic(site))

    def start(self) -> "AnonMqtt":
        self._thread.start()
        self.client.subscribe([self.filter])
        return self

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _on_message(self, client: MqttClient, userdata: object, msg: Message) -> None:
        try:
            self._queue.put_nowait(msg)
        except queue.Full:
            log.warning("anonymous requests queue full: request left unacknowledged")

    def _run(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            try:
                for topic, payload in self.service.handle(msg.topic, bytes(msg.payload), self.clock()):
                    self.client.publish(topic, payload)
            except Exception:                       # one bad request never stops the service
                log.exception("anonymous request not handled")
            self.handled += 1
            if msg.qos:
                self.client.ack(msg.pid, msg.generation)
