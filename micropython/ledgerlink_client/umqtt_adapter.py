"""umqtt.simple (micropython-lib, ``mip.install("umqtt.simple")``) behind the interface of ``mqtt.MQTTClient``.

umqtt.simple's QoS 1 ``publish`` blocks until its PUBACK arrives and keeps the packet id to itself, so
through this adapter one publish is in flight at a time: the adapter numbers publishes itself and
reports ("puback", pid) at the next ``poll`` once umqtt.simple has returned. A lost PUBACK therefore
shows up as a socket timeout inside ``publish`` (set one with ``sock_timeout_s``), which drops the
connection; the device layer then reconnects and publishes again from its queue. umqtt.simple
consumes PINGRESP without telling the caller; a ``poll`` that completes without error after ``ping``
is taken as the answer. Use ``DeviceClient(..., max_inflight=1)`` with this adapter.
"""


class UmqttAdapter:
    def __init__(self, client, sock_timeout_s=10):
        self.client = client
        self.sock_timeout_s = sock_timeout_s
        self._events = []
        self._pid = 0
        self._pinged = False
        client.set_callback(self._on_msg)

    def _on_msg(self, topic, msg):
        if isinstance(topic, bytes):
            topic = topic.decode()
        self._events.append(("msg", topic, bytes(msg), 1, False))

    def connect(self, timeout_ms=5000):
        session_present = self.client.connect(clean_session=True)
        self.client.sock.settimeout(self.sock_timeout_s)
        return bool(session_present)

    def publish(self, topic, payload, qos=1, retain=False, pid=None, dup=False):
        self.client.publish(topic, payload, retain, qos)
        if qos:
            if pid is None:
                self._pid = self._pid % 65535 + 1
                pid = self._pid
            self._events.append(("puback", pid))
        return pid

    def subscribe(self, topic, qos=1):
        self.client.subscribe(topic, qos)
        self._pid = self._pid % 65535 + 1
        self._events.append(("suback", self._pid, [qos]))
        return self._pid

    def ping(self):
        self.client.ping()
        self._pinged = True

    def poll(self, timeout_ms=0):
        self.client.check_msg()
        if self._pinged:
            self._pinged = False
            self._events.append(("pingresp",))
        events, self._events = self._events, []
        return events

    def disconnect(self):
        self.client.disconnect()

    def close(self):
        try:
            self.client.sock.close()
        except (AttributeError, OSError):
            pass
