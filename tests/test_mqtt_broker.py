"""The embedded MQTT broker: paho-mqtt MQTT 5 clients and the MicroPython 3.1.1 client against it (QoS 1,
wildcards, shared-subscription round robin, retained messages, sessions, flow control, wills, keep alive),
raw malformed packets over sockets, and hypothesis on the packet decoder and the topic tree."""

import queue
import socket
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings, strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ledgerlink.tools import mqtt_broker as mb
from ledgerlink.tools.mqtt_broker import BrokerThread, MqttError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "micropython"))
from ledgerlink_client import mqtt as umqtt, transport as utransport  # noqa: E402


@pytest.fixture(scope="module")
def broker():
    b = BrokerThread(max_queued=50).start()
    yield b
    b.stop()


_ids = iter(range(1, 1 << 30))


class Client:
    """A paho MQTT 5 client whose messages arrive in ``q``."""

    def __init__(self, port, client_id=None, clean_start=True, expiry=None, manual_ack=False, receive_max=None,
                 max_packet=None, version=mqtt.MQTTv5, will=None):
        self.client_id = client_id or "t-%d" % next(_ids)
        self.q: queue.Queue = queue.Queue()
        self.events: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=version,
                             manual_ack=manual_ack)
        self.c.on_message = lambda c, u, m: self.q.put(m)
        self.c.on_connect = lambda c, u, f, r, p: self.events.put(("connect", f.session_present, r))
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.events.put(("suback", codes))
        self.c.on_disconnect = lambda c, u, f, r, p: self.events.put(("disconnect", r))
        if will:
            self.c.will_set(*will)
        props = None
        if version == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            if expiry is not None:
                props.SessionExpiryInterval = expiry
            if receive_max is not None:
                props.ReceiveMaximum = receive_max
            if max_packet is not None:
                props.MaximumPacketSize = max_packet
            self.c.connect("127.0.0.1", port, keepalive=30, clean_start=clean_start, properties=props)
        else:
            self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        self.connect_event = self.event("connect")

    def event(self, kind, timeout=5):
        deadline = time.monotonic() + timeout
        while True:
            ev = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if ev[0] == kind:
                return ev

    def sub(self, topic, qos=1, **opts):
        if opts:
            self.c.subscribe(topic, options=SubscribeOptions(qos=qos, **opts))
        else:
            self.c.subscribe(topic, qos)
        return self.event("suback")[1]

    def pub(self, topic, payload, qos=1, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(5)
        return info

    def take(self, n, timeout=5):
        return [self.q.get(timeout=timeout) for _ in range(n)]

    def none(self, wait=0.3):
        try:
            m = self.q.get(timeout=wait)
        except queue.Empty:
            return True
        raise AssertionError("unexpected message on %s: %r" % (m.topic, m.payload))

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


class Raw:
    """A socket speaking raw bytes to the broker."""

    def __init__(self, port, connect=True, version=5, keepalive=60, client_id=None, flags=0x02):
        client_id = client_id or b"raw-%d" % next(_ids)
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        if connect:
            props = b"\x00" if version == 5 else b""
            body = (b"\x00\x04MQTT" + bytes((version, flags)) + keepalive.to_bytes(2, "big") + props
                    + len(client_id).to_bytes(2, "big") + client_id)
            self.send(mb.packet(0x10, body))
            first, body = self.read()
            assert first == 0x20 and body[1] == 0, body

    def send(self, data):
        self.s.sendall(data)

    def read(self, timeout=5):
        """The next packet as (first byte, body), or None when the broker closed the connection."""
        self.s.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                n, shift, i = 0, 0, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    n |= (b & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not b & 0x80:
                        if len(self.buf) >= i + n:
                            first, body, self.buf = self.buf[0], self.buf[i:i + n], self.buf[i + n:]
                            return first, body
                        break
            data = self.s.recv(65536)
            if not data:
                return None
            self.buf += data

    def closed_with(self, timeout=5):
        """Reason code of the DISCONNECT (or CONNACK) before the close; None if closed without one."""
        code = None
        while True:
            p = self.read(timeout)
            if p is None:
                return code
            if p[0] >> 4 in (mb.DISCONNECT, mb.CONNACK):
                code = p[1][0] if p[0] >> 4 == mb.DISCONNECT else p[1][1]

    def close(self):
        self.s.close()


def _props(**kw):
    p = Properties(PacketTypes.PUBLISH)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


# --- delivery over paho-mqtt ----------------------------------------------------------------------------


def test_qos1_delivery_in_order_with_properties(broker):
    sub, pub = Client(broker.port), Client(broker.port)
    try:
        assert [c.value for c in sub.sub("q1/t")] == [1]
        props = _props(UserProperty=[("k", "v"), ("k", "w")], ContentType="application/cbor",
                       ResponseTopic="q1/reply", CorrelationData=b"\x01\x02", PayloadFormatIndicator=0)
        for i in range(20):
            info = pub.pub("q1/t", b"m%d" % i, props=props)
            assert info.is_published()
        got = sub.take(20)
        assert [m.payload for m in got] == [b"m%d" % i for i in range(20)]
        m = got[0]
        assert m.qos == 1 and not m.retain
        assert m.properties.UserProperty == [("k", "v"), ("k", "w")]
        assert m.properties.ContentType == "application/cbor" and m.properties.ResponseTopic == "q1/reply"
        assert m.properties.CorrelationData == b"\x01\x02"
        pub.pub("q1/t", b"zero", qos=0)
        assert sub.take(1)[0].qos == 0
        sub.none()
    finally:
        sub.close()
        pub.close()


def test_wildcards_and_dollar_topics(broker):
    plus, hash_, exact, pub = (Client(broker.port) for _ in range(4))
    try:
        plus.sub("w/+/up")
        hash_.sub("w/#")
        exact.sub("w/a/up")
        for t in ("w/a/up", "w/b/up", "w/a/down", "w", "w/a/up/x"):
            pub.pub(t, t.encode())
        assert sorted(m.topic for m in plus.take(2)) == ["w/a/up", "w/b/up"]
        assert sorted(m.topic for m in hash_.take(5)) == sorted(["w/a/up", "w/b/up", "w/a/down", "w", "w/a/up/x"])
        assert [m.topic for m in exact.take(1)] == ["w/a/up"]
        every = Client(broker.port)
        every.sub("#")
        pub.pub("$x/y", b"dollar")
        pub.pub("w/z", b"plain")
        assert [m.topic for m in every.take(1)] == ["w/z"]          # '#' does not match '$' topics
        every.close()
        for c in (plus, exact):
            c.none()
    finally:
        for c in (plus, hash_, exact, pub):
            c.close()


def test_shared_subscription_round_robin(broker):
    a, b, plain, pub = (Client(broker.port) for _ in range(4))
    try:
        a.sub("$share/g1/s/+/up")
        b.sub("$share/g1/s/+/up")
        plain.sub("s/+/up")
        for i in range(10):
            pub.pub("s/d%d/up" % i, b"%d" % i)
        got_a = [int(m.payload) for m in a.take(5)]
        got_b = [int(m.payload) for m in b.take(5)]
        assert sorted(got_a + got_b) == list(range(10))
        assert {got_a[0] % 2} == {x % 2 for x in got_a} and {x % 2 for x in got_b} == {1 - got_a[0] % 2}
        assert sorted(int(m.payload) for m in plain.take(10)) == list(range(10))
        a.none(0.1)
        b.none(0.1)
        b.close()                                               # one member left: it gets everything
        for i in range(3):
            pub.pub("s/x/up", b"%d" % i)
        assert [m.payload for m in a.take(3)] == [b"0", b"1", b"2"]
    finally:
        for c in (a, plain, pub):
            c.close()


def test_unsubscribe_and_subscription_options(broker):
    c, other = Client(broker.port), Client(broker.port)
    unsubs: queue.Queue = queue.Queue()
    c.c.on_unsubscribe = lambda cl, u, mid, codes, p: unsubs.put([x.value for x in codes])
    try:
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = 42
        c.c.subscribe("o/+", options=SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True),
                      properties=props)
        c.event("suback")
        c.pub("o/self", b"mine")                                 # no local: not sent back
        c.none(0.2)
        other.pub("o/x", b"retained", retain=True)
        m = c.take(1)[0]
        assert m.retain and m.properties.SubscriptionIdentifier == [42]   # retain as published
        c.c.unsubscribe(["o/+", "o/never"])
        assert unsubs.get(timeout=5) == [mb.SUCCESS, mb.NO_SUBSCRIPTION_EXISTED]
        other.pub("o/x", b"after")
        c.none()
        other.pub("o/x", b"", retain=True)
    finally:
        c.close()
        other.close()


def test_shared_member_that_dies_hands_its_unacked_message_on(broker):
    a = Client(broker.port, manual_ack=True)
    pub = Client(broker.port)
    try:
        a.sub("$share/g2/h/t")
        pub.pub("h/t", b"held")
        assert a.take(1)[0].payload == b"held"                  # not acknowledged
        b = Client(broker.port)
        b.sub("$share/g2/h/t")
        a.c.loop_stop()
        a.c.socket().close()                                     # a's session ends with its connection
        assert b.take(1)[0].payload == b"held"
        b.close()
    finally:
        pub.close()


def test_slow_consumer_is_bounded_and_others_go_on(broker):
    slow = Raw(broker.port)
    slow.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.send(b"\x82\x0c\x00\x01\x00\x00\x06slow/#\x00")      # SUBSCRIBE slow/# QoS 0
    assert slow.read()[0] == 0x90
    fast, pub = Client(broker.port), Client(broker.port)
    try:
        fast.sub("slow/x")
        dropped = broker.call(lambda: broker.broker.dropped)
        for i in range(400):                                     # 400 x 16 KiB to a reader that never reads
            pub.pub("slow/x", b"%05d" % i + b"." * 16379)
        got = fast.take(400, timeout=20)
        assert [m.payload[:5] for m in got] == [b"%05d" % i for i in range(400)]
        assert broker.call(lambda: broker.broker.dropped) > dropped
        queued = broker.call(lambda: len(broker.broker.sessions[slow_id(broker)].queue))
        assert queued <= 50
    finally:
        fast.close()
        pub.close()
        slow.close()


def slow_id(broker):
    return next(cid for cid, s in broker.broker.sessions.items()
                if any(f == "slow/#" for f in s.subs))


def test_retained_messages(broker):
    pub = Client(broker.port)
    try:
        pub.pub("r/1", b"one", retain=True)
        pub.pub("r/2", b"two", retain=True)
        pub.pub("r/2", b"", retain=True)                        # empty payload clears
        pub.pub("r/3", b"three", retain=True, props=_props(MessageExpiryInterval=1))
        late = Client(broker.port)
        late.sub("r/+")
        got = sorted((m.topic, m.payload, m.retain) for m in late.take(2))
        assert got == [("r/1", b"one", True), ("r/3", b"three", True)]
        late.none(0.2)
        pub.pub("r/1", b"live", retain=True)
        m = late.take(1)[0]
        assert (m.payload, m.retain) == (b"live", False)        # forwarded live: retain cleared
        time.sleep(1.1)
        again = Client(broker.port)
        again.sub("r/#")
        assert [(m.topic, m.payload) for m in again.take(1)] == [("r/1", b"live")]   # r/3 expired
        again.none(0.2)
        shared = Client(broker.port)
        shared.sub("$share/g/r/#")
        shared.none(0.2)                                        # no retained messages to shared subscriptions
        never = Client(broker.port)
        never.sub("r/#", retainHandling=2)
        never.none(0.2)
        for c in (late, again, shared, never):
            c.close()
    finally:
        pub.close()


def test_persistent_session_redelivers_unacked_with_dup(broker):
    sub = Client(broker.port, client_id="persist-1", clean_start=False, expiry=60, manual_ack=True)
    pub = Client(broker.port)
    try:
        sub.sub("p/t")
        for i in range(3):
            pub.pub("p/t", b"%d" % i)
        first = sub.take(3)
        sub.c.ack(first[0].mid, 1)                               # only the first is acknowledged
        time.sleep(0.2)
        sub.close()
        pub.pub("p/t", b"3")                                     # queued while offline
        again = Client(broker.port, client_id="persist-1", clean_start=False, expiry=60)
        assert again.connect_event[1] is True
        got = again.take(3)
        assert [(m.payload, m.dup) for m in got] == [(b"1", True), (b"2", True), (b"3", False)]
        again.none()
        again.close()
        fresh = Client(broker.port, client_id="persist-1", clean_start=True)
        assert fresh.connect_event[1] is False
        pub.pub("p/t", b"4")
        fresh.none()                                             # clean start dropped the subscription
        fresh.close()
    finally:
        pub.close()


def test_receive_maximum_limits_unacked_messages(broker):
    sub = Client(broker.port, receive_max=2, manual_ack=True)
    pub = Client(broker.port)
    try:
        sub.sub("rm/t")
        for i in range(5):
            pub.pub("rm/t", b"%d" % i)
        got = sub.take(2)
        sub.none(0.3)                                            # the third waits for an ack
        for m in got:
            sub.c.ack(m.mid, 1)
        got += sub.take(2)
        sub.none(0.2)
        sub.c.ack(got[2].mid, 1)
        got += sub.take(1)
        assert [m.payload for m in got] == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        sub.close()
        pub.close()


def test_bounded_queue_and_max_packet_size(broker):
    sub = Client(broker.port, client_id="bounded-1", clean_start=False, expiry=60)
    small = Client(broker.port, max_packet=100)
    pub = Client(broker.port)
    try:
        sub.sub("bq/t")
        small.sub("bq/t")
        sub.close()
        dropped = broker.call(lambda: broker.broker.dropped)
        for i in range(60):                                      # the fixture allows 50 queued per session
            pub.pub("bq/t", b"%d" % i)
        assert broker.call(lambda: broker.broker.dropped) - dropped == 10
        assert len(small.take(60)) == 60
        again = Client(broker.port, client_id="bounded-1", clean_start=False, expiry=60)
        assert [m.payload for m in again.take(50)] == [b"%d" % i for i in range(50)]
        again.none(0.2)
        pub.pub("bq/t", b"x" * 200)                             # larger than small's maximum packet size
        assert again.take(1)[0].payload == b"x" * 200
        small.none()
        again.close()
    finally:
        small.close()
        pub.close()


def test_will_message_on_abnormal_close_only(broker):
    watch = Client(broker.port)
    watch.sub("will/#")
    dying = Client(broker.port, will=("will/dying", b"gone", 1, False))
    dying.c.loop_stop()
    dying.c.socket().close()                                      # network failure
    m = watch.take(1)[0]
    assert (m.topic, m.payload) == ("will/dying", b"gone")
    polite = Client(broker.port, will=("will/polite", b"gone", 1, False))
    polite.close()
    watch.none()
    watch.close()


def test_will_delay(broker):
    watch = Client(broker.port)
    watch.sub("wd/#")
    wprops = Properties(PacketTypes.WILLMESSAGE)
    wprops.WillDelayInterval = 1
    for name in ("late", "back"):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wd-" + name, protocol=mqtt.MQTTv5)
        c.will_set("wd/" + name, b"gone", 1, False, properties=wprops)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 10
        c.connect("127.0.0.1", broker.port, properties=props)
        c.loop(1)
        c.socket().close()
        if name == "back":                                      # back within the delay: no will
            time.sleep(0.3)
            again = Client(broker.port, client_id="wd-back", clean_start=False, expiry=0)
            assert again.connect_event[1] is True
            again.close()
    started = time.monotonic()
    m = watch.take(1)[0]
    assert m.topic == "wd/late" and time.monotonic() - started > 0.4
    watch.none(1.0)
    watch.close()


def test_session_takeover(broker):
    first = Client(broker.port, client_id="twin")
    second = Client(broker.port, client_id="twin")
    try:
        ev = first.event("disconnect")
        assert ev[1].value == mb.SESSION_TAKEN_OVER
        assert not second.connect_event[2].is_failure
    finally:
        first.c.loop_stop()
        second.close()


def test_mqtt311_clients_with_the_micropython_client(broker):
    v5 = Client(broker.port)
    dev = umqtt.MQTTClient(utransport.open_socket("127.0.0.1", broker.port), "upy-dev", keepalive=30)
    try:
        assert dev.connect() is False
        pid = dev.subscribe("u/down", qos=1)
        events = []
        deadline = time.monotonic() + 5
        while not any(e[0] == "suback" for e in events) and time.monotonic() < deadline:
            events += dev.poll(100)
        assert ("suback", pid, [1]) in events
        v5.sub("u/up")
        pid = dev.publish("u/up", b"reading", qos=1)
        v5.pub("u/down", b"answer", props=_props(UserProperty=[("a", "b")]))
        m = v5.take(1)[0]
        assert (m.topic, m.payload, m.qos) == ("u/up", b"reading", 1)
        events = []
        deadline = time.monotonic() + 5
        while not any(e[0] == "msg" for e in events) and time.monotonic() < deadline:
            events += dev.poll(100)
        assert ("puback", pid) in events and ("msg", "u/down", b"answer", 1, False) in events
        paho311 = Client(broker.port, version=mqtt.MQTTv311)
        paho311.sub("u/up")
        dev.publish("u/up", b"two", qos=0)
        assert paho311.take(1)[0].payload == b"two"
        paho311.close()
    finally:
        dev.disconnect()
        v5.close()


# --- raw packets ---------------------------------------------------------------------------------------


def test_keepalive_timeout_disconnects(broker):
    r = Raw(broker.port, keepalive=1)
    started = time.monotonic()
    assert r.closed_with(timeout=5) == mb.KEEP_ALIVE_TIMEOUT
    assert 1.4 <= time.monotonic() - started < 3.0
    pinger = Raw(broker.port, keepalive=1)
    for _ in range(3):                                           # PINGREQ keeps it open past 1.5 s
        time.sleep(0.6)
        pinger.send(b"\xc0\x00")
        assert pinger.read() == (0xD0, b"")
    pinger.close()


MALFORMED_CASES = [
    (b"\x82\xff\xff\xff\xff\x01", mb.MALFORMED),                 # remaining length of 5 bytes
    (b"\x80\x06\x00\x01\x00\x00\x01\x61\x01", mb.MALFORMED),     # SUBSCRIBE with flags 0000
    (b"\x82\x07\x00\x01\x00\x00\x02\xff\xfe\x01", mb.MALFORMED),  # filter not UTF-8
    (b"\x82\x06\x00\x01\x00\x00\x01\x61\xc1", mb.MALFORMED),     # reserved subscription option bits
    (b"\x82\x03\x00\x01\x00", mb.PROTOCOL_ERROR),                # SUBSCRIBE without a filter
    (b"\x30\x07\x00\x01\x61\x04\x01\x00\x01", mb.MALFORMED),     # property length beyond the packet
    (b"\x30\x08\x00\x01\x61\x04\x01\x00\x01\x00", mb.PROTOCOL_ERROR),  # payload format twice
    (b"\x30\x06\x00\x01\x61\x02\x11\x00", mb.MALFORMED),         # session expiry is no PUBLISH property
    (b"\x36\x05\x00\x01\x61\x00\x01", mb.MALFORMED),             # QoS 3
    (b"\x34\x06\x00\x01\x61\x00\x01\x00", mb.QOS_NOT_SUPPORTED),  # QoS 2
    (b"\x30\x05\x00\x01\x23\x00\x01", mb.TOPIC_NAME_INVALID),    # wildcard in a topic name
    (b"\x30\x06\x00\x00\x03\x23\x00\x05", mb.PROTOCOL_ERROR),     # alias never set
    (b"\x30\x06\x00\x00\x03\x23\x00\x00", mb.TOPIC_ALIAS_INVALID),  # alias 0
    (b"\x10\x00", mb.PROTOCOL_ERROR),                             # second CONNECT
    (b"\xc0\x01\x00", mb.MALFORMED),                              # PINGREQ with a body
    (b"\x20\x02\x00\x00", mb.PROTOCOL_ERROR),                     # CONNACK from a client
    (b"\x00\x00", mb.MALFORMED),                                  # reserved type 0
    (b"\x50\x02\x00\x01", mb.PROTOCOL_ERROR),                     # PUBREC on a QoS 1 server
    (b"\x30" + mb.vbi(2 << 20) + b"\x00", mb.PACKET_TOO_LARGE),
]


@pytest.mark.parametrize("data,code", MALFORMED_CASES)
def test_malformed_packet_closes_that_connection(broker, data, code):
    bystander = Raw(broker.port)
    r = Raw(broker.port)
    r.send(data)
    assert r.closed_with() == code
    bystander.send(b"\xc0\x00")                                  # the broker and other clients go on
    assert bystander.read() == (0xD0, b"")
    bystander.close()


def test_connect_refusals(broker):
    r = Raw(broker.port, connect=False)
    r.send(b"\x82\x06\x00\x01\x00\x00\x01\x61\x00")              # first packet not CONNECT
    assert r.closed_with() is None
    r = Raw(broker.port, connect=False)
    r.send(mb.packet(0x10, b"\x00\x04MQTT\x03\x02\x00\x3c\x00\x01a"))  # protocol level 3
    assert r.read() == (0x20, b"\x00\x01") and r.read() is None
    r = Raw(broker.port, connect=False)
    r.send(mb.packet(0x10, b"\x00\x04MQTT\x04\x00\x00\x3c\x00\x00"))   # 3.1.1, empty id, clean session 0
    assert r.read() == (0x20, b"\x00\x02") and r.read() is None
    r = Raw(broker.port, connect=False)
    r.send(mb.packet(0x10, b"\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x01a"))  # reserved flag
    assert r.closed_with() == mb.MALFORMED
    r = Raw(broker.port, connect=False)
    r.send(mb.packet(0x10, b"\x00\x04MQTT\x05\x02\x00\x3c\x03\x21\x00\x00\x00\x01a"))  # receive maximum 0
    assert r.closed_with() == mb.PROTOCOL_ERROR
    r = Raw(broker.port, connect=False)
    r.send(mb.packet(0x10, b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00"))  # MQTT 5, empty id: one is assigned
    first, body = r.read()
    assert first == 0x20 and body[:2] == b"\x00\x00" and b"\x12\x00" in body and b"ll-auto-" in body
    r.close()


# --- hypothesis: decoder and topic tree ----------------------------------------------------------------


def _valid_publish(topic, payload, qos, props):
    body = mb._s(topic) + (b"\x00\x07" if qos else b"") + mb.encode_properties(props) + payload
    return (0x30 | (qos << 1)), body


_text = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00+#"),
                min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(topic=_text, payload=st.binary(max_size=64), qos=st.integers(0, 1),
       users=st.lists(st.tuples(_text, _text), max_size=3), ctype=st.none() | _text,
       expiry=st.none() | st.integers(0, 2**32 - 1))
def test_publish_round_trip(topic, payload, qos, users, ctype, expiry):
    props = [(mb.P_USER, u) for u in users]
    if ctype is not None:
        props.append((mb.P_CONTENT_TYPE, ctype))
    if expiry is not None:
        props.append((mb.P_MESSAGE_EXPIRY, expiry))
    first, body = _valid_publish(topic, payload, qos, props)
    p = mb.decode_packet(first, body, 5)
    assert (p.topic, p.payload, p.qos, p.pid) == (topic, payload, qos, 7 if qos else 0)
    assert p.props.get(mb.P_USER, []) == users and p.props.get(mb.P_CONTENT_TYPE) == ctype
    assert p.props.get(mb.P_MESSAGE_EXPIRY) == expiry
    msg = mb.Message(topic, payload, qos, False, p.props, None)
    again = mb.decode_packet(first, mb._s(topic) + (b"\x00\x07" if qos else b"") + mb.vbi(len(msg.props))
                             + msg.props + payload, 5)
    assert again.props.get(mb.P_USER, []) == users and again.props.get(mb.P_CONTENT_TYPE) == ctype


def _decode_or_error(first, body, version):
    try:
        mb.decode_packet(first, body, version)
    except MqttError as exc:
        assert 0x80 <= exc.code <= 0xA2
    try:
        frame = mb.split_frame(bytes((first,)) + body, 0, 1 << 16)
    except MqttError as exc:
        assert exc.code in (mb.MALFORMED, mb.PACKET_TOO_LARGE)
    else:
        assert frame is None or frame[2] <= len(body) + 1


@settings(max_examples=300, deadline=None)
@given(first=st.integers(0, 255), body=st.binary(max_size=80), version=st.sampled_from([4, 5]))
def test_decoder_raises_only_mqtt_errors_on_random_bytes(first, body, version):
    _decode_or_error(first, body, version)


_SEEDS = [
    _valid_publish("a/b", b"payload", 1, [(mb.P_USER, ("k", "v")), (mb.P_MESSAGE_EXPIRY, 5)]),
    (0x82, b"\x00\x01\x02\x0b\x05\x00\x03a/+\x15"),
    (0xA2, b"\x00\x02\x00\x00\x03a/#"),
    (0x10, b"\x00\x04MQTT\x05\xee\x00\x3c\x05\x11\x00\x00\x00\x10\x00\x02id\x05\x18\x00\x00\x00\x00\x00\x01w\x00\x01x"
           b"\x00\x01u\x00\x01p"),
    (0x40, b"\x00\x05\x10\x03\x1f\x00\x00"),
    (0xE0, b"\x04\x05\x11\x00\x00\x00\x01"),
]


@settings(max_examples=200, deadline=None)
@given(seed=st.sampled_from(_SEEDS), edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                                     min_size=1, max_size=4),
       cut=st.integers(0, 200), version=st.sampled_from([4, 5]))
def test_decoder_raises_only_mqtt_errors_on_mutated_packets(seed, edits, cut, version):
    first, body = seed
    body = bytearray(body)
    for pos, value in edits:
        if body:
            body[pos % len(body)] = value
    _decode_or_error(first, bytes(body[:cut]), version)
    _decode_or_error(first, bytes(body), version)


def test_seed_packets_decode():
    kinds = [type(mb.decode_packet(f, b, 5)).__name__ for f, b in _SEEDS]
    assert kinds == ["Publish", "Subscribe", "Unsubscribe", "Connect", "Ack", "Disconnect"]
    c = mb.decode_packet(*_SEEDS[3], 5)
    assert c.will.topic == "w" and c.will.qos == 1 and c.username == "u" and c.password == b"p"


class _S:
    def __init__(self, cid):
        self.client_id = cid


_level = st.sampled_from(["a", "b", "", "$s"])
_topics = st.lists(_level, min_size=1, max_size=4).map("/".join)
_filters = st.lists(st.sampled_from(["a", "b", "", "+", "$s"]), min_size=1, max_size=4).flatmap(
    lambda ls: st.sampled_from(["/".join(ls), "/".join(ls + ["#"])])).filter(bool)


@settings(max_examples=80, deadline=None)
@given(filters=st.lists(_filters, min_size=1, max_size=8, unique=True), topic=_topics, drop=st.integers(0, 7))
def test_topic_tree_matches_like_a_linear_scan(filters, topic, drop):
    tree = mb.TopicTree()
    subs = {}
    for i, f in enumerate(filters):
        assert mb.valid_filter(f)
        s = mb.Sub(_S("c%d" % i), f, None, 1, None)
        tree.add(f, s)
        subs[f] = s
    gone = filters[drop % len(filters)]
    tree.remove(gone, None, subs[gone].session.client_id)
    got = {s.filter for s in tree.match(topic)[0]}
    assert got == {f for f in filters if f != gone and mb.filter_matches(f, topic)}


def test_filter_validity_and_shared_names():
    assert all(mb.valid_filter(f) for f in ("#", "+", "a/+/b", "a/#", "/", "+/+"))
    assert not any(mb.valid_filter(f) for f in ("", "a#", "a/#/b", "a+", "a/b+/c"))
    assert mb.split_shared("$share/g/a/+") == ("g", "a/+")
    assert mb.split_shared("a/b") == (None, "a/b")
    assert all(mb.split_shared(f) is None for f in ("$share/g", "$share//a", "$share/g+/a", "$share/g/a#"))
    assert mb.filter_matches("a/#", "a") and not mb.filter_matches("+/x", "$s/x")


@settings(max_examples=15, deadline=None)
@given(junk=st.binary(min_size=1, max_size=64))
def test_live_broker_survives_random_bytes_after_connect(broker, junk):
    r = Raw(broker.port)
    try:
        r.send(junk + b"\xc0\x00")
        r.s.shutdown(socket.SHUT_WR)
        while r.read(timeout=3) is not None:      # answers, then the close; never a hang
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        r.close()
    probe = Raw(broker.port)
    probe.send(b"\xc0\x00")
    assert probe.read() == (0xD0, b"")
    probe.close()


# --- limits on what a client may hold -------------------------------------------------------------------


def _partial_publish(size: int) -> bytes:
    """All but the last byte of a QoS 0 PUBLISH of ``size`` payload bytes on topic "t"."""
    return mb.packet(0x30, b"\x00\x01t\x00" + b"x" * size)[:-1]


def _closed(r: Raw, timeout: float = 5) -> bool:
    """Whether the broker closed ``r`` (orderly or with a reset) within ``timeout`` seconds."""
    try:
        return r.read(timeout=timeout) is None
    except ConnectionResetError:
        return True


def test_incomplete_packets_are_bounded_and_timed_out():
    with BrokerThread(packet_timeout_s=1.0, buffered_max=1 << 20) as b:
        attackers = [Raw(b.port, keepalive=0) for _ in range(12)]
        for r in attackers:
            r.s.sendall(_partial_publish(200_000))           # 12 x 200 kB against a 1 MiB budget
        time.sleep(0.5)
        held, over = b.call(lambda: (b.broker.buffered, b.broker.over_budget))
        assert 0 < held <= 1 << 20 and over >= 6             # those beyond the budget are closed at once
        sub, pub = Client(b.port), Client(b.port)            # others are still served meanwhile
        assert sub.sub("ok/t") == [mqtt.ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")]
        pub.pub("ok/t", b"served")
        assert sub.q.get(timeout=5).payload == b"served"
        started = time.monotonic()
        for r in attackers:                                  # the rest closed once their packet is 1 s old
            assert _closed(r)
        assert time.monotonic() - started < 3
        assert b.call(lambda: b.broker.buffered) == 0
        sub.close()
        pub.close()


def test_connection_cap():
    with BrokerThread(max_connections=3) as b:
        held = [Raw(b.port) for _ in range(3)]
        extra = socket.create_connection(("127.0.0.1", b.port), timeout=5)
        assert extra.recv(10) == b""                          # closed at once, nothing read
        extra.close()
        assert b.call(lambda: (len(b.broker.connections), b.broker.refused)) == (3, 1)
        held[0].close()
        time.sleep(0.2)
        Raw(b.port).close()                                  # room again
        for r in held[1:]:
            r.close()


def _connect_keepalive_zero(port: int) -> tuple[Raw, bytes]:
    r = Raw(port, connect=False)
    r.send(mb.packet(0x10, b"\x00\x04MQTT\x05\x02\x00\x00\x00\x00\x02k0"))
    first, body = r.read()
    assert first == 0x20 and body[1] == 0
    return r, body


def test_keepalive_zero_gets_the_servers_keepalive():
    with BrokerThread() as b:                                # by default too: no connection idles for good
        r, connack = _connect_keepalive_zero(b.port)
        assert bytes((mb.P_SERVER_KEEP_ALIVE,)) + mb.MAX_KEEPALIVE_S.to_bytes(2, "big") in connack
        r.close()
    with BrokerThread(max_keepalive=1) as b:
        r, connack = _connect_keepalive_zero(b.port)
        assert bytes((mb.P_SERVER_KEEP_ALIVE, 0, 1)) in connack
        started = time.monotonic()
        assert r.closed_with(timeout=5) == mb.KEEP_ALIVE_TIMEOUT   # an idle connection ends
        assert time.monotonic() - started < 3


def test_a_client_that_does_not_read_is_disconnected(monkeypatch):
    monkeypatch.setattr(mb, "OUT_MAX", 64 << 10)
    with BrokerThread() as b:
        reader = Raw(b.port)
        reader.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.send(mb.packet(0x82, b"\x00\x01\x00\x00\x03big\x00"))   # SUBSCRIBE big, QoS 0
        assert reader.read()[0] == 0x90
        pub = Client(b.port)
        for _ in range(400):
            pub.c.publish("big", b"y" * 60_000, qos=0)
        deadline = time.monotonic() + 10
        while b.call(lambda: len(b.broker.connections)) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b.call(lambda: len(b.broker.connections)) == 1   # the reader is gone, the publisher stays
        pub.close()
        reader.close()
