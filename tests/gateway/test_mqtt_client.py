"""The gateway's MQTT 5 client against mosquitto and the embedded broker (QoS 1 round trip, manual acks
withheld and redelivered, shared subscriptions, retained messages, broker restart), a fake server socket
(malformed packets, DUP resend, receive maximum), and hypothesis on the client encoders and the
server-packet decoder of ``ledgerlink.mqtt5``."""

import logging
import queue
import socket
import subprocess
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink import mqtt5
from ledgerlink.gateway import mqtt_client
from ledgerlink.gateway.mqtt_client import MqttClient
from ledgerlink.tools.mqtt_broker import BrokerThread

MOSQUITTO = "/usr/sbin/mosquitto"
_ids = iter(range(1, 1 << 30))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on %d" % port)


class Broker:
    """mosquitto (a process) or the embedded broker (a thread) on a fixed port; ``restart`` loses its state."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.thread: BrokerThread | None = None
        self.start()

    def start(self) -> None:
        if self.kind == "mosquitto":
            self.proc = subprocess.Popen([MOSQUITTO, "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            wait_port(self.port)
        else:
            self.thread = BrokerThread(port=self.port).start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        if self.thread is not None:
            self.thread.stop()
            self.thread = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request):
    b = Broker(request.param)
    yield b
    b.stop()


class Box:
    """A client whose messages arrive in ``q``."""

    def __init__(self, port: int, client_id: str | None = None, receive_maximum: int = 100, **kw) -> None:
        self.q: queue.Queue = queue.Queue()
        self.c = MqttClient("127.0.0.1", port, client_id or "t-%d" % next(_ids), receive_maximum=receive_maximum,
                            on_message=lambda c, u, m: self.q.put(m), backoff=(0.05, 0.2), **kw).start()
        assert self.c.wait_connected(10)

    def get(self, timeout: float = 5.0):
        return self.q.get(timeout=timeout)

    def none(self, wait: float = 0.3) -> bool:
        try:
            self.q.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def subscribe(self, *filters: str) -> None:
        self.c.subscribe(list(filters))
        time.sleep(0.2)

    def stop(self) -> None:
        self.c.stop()


def test_qos1_round_trip_with_retain_and_properties(broker):
    sub = Box(broker.port)
    sub.subscribe("rt/#")
    pub = Box(broker.port)
    pub.c.publish("rt/a", b"\x00hello", 1, properties=[(mqtt5.P_USER, ("k", "v")), (mqtt5.P_CONTENT_TYPE, "x/y")])
    m = sub.get()
    assert (m.topic, m.payload, m.qos, m.retain, m.dup) == ("rt/a", b"\x00hello", 1, False, False)
    assert m.props[mqtt5.P_USER] == [("k", "v")] and m.props[mqtt5.P_CONTENT_TYPE] == "x/y"
    sub.c.ack(m.pid, m.generation)
    deadline = time.monotonic() + 5
    while pub.c.inflight() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pub.c.inflight() == 0
    for i in range(300):                     # a batch in one write, through a window smaller than it
        pub.c.publish("rt/b", b"%d" % i, flush=False)
    pub.c.flush()
    got = []
    for _ in range(300):                     # more than the subscriber's receive maximum: acks let them in
        m = sub.get()
        got.append(int(m.payload))
        sub.c.ack(m.pid, m.generation, flush=False)
        if len(got) % 10 == 0:
            sub.c.flush()
    assert sorted(got) == list(range(300))
    pub.stop()
    sub.stop()


def test_qos0_publishes_of_a_group_arrive_whole_and_in_order(broker):
    sub = Box(broker.port)
    sub.subscribe("q0/#")
    pub = Box(broker.port)
    payloads = [b"", b"a" * 100, b"b" * 130, b"c" * 20000, b"\x00d"]      # remaining lengths of 1, 2 and 3 bytes
    pub.c.publish_many_qos0([("q0/%d" % i, p) for i, p in enumerate(payloads)], flush=False)
    pub.c.publish_many_qos0([("q0/x", b"last")])
    got = [sub.get() for _ in range(len(payloads) + 1)]
    assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == \
        [("q0/%d" % i, p, 0, False) for i, p in enumerate(payloads)] + [("q0/x", b"last", 0, False)]
    pub.stop()
    sub.stop()


def test_retained_publish_reaches_a_later_subscriber(broker):
    pub = Box(broker.port)
    pub.c.publish("ret/h", b"header", 1, retain=True)
    time.sleep(0.3)
    sub = Box(broker.port)
    sub.subscribe("ret/h")
    m = sub.get()
    assert (m.topic, m.payload, m.retain) == ("ret/h", b"header", True)
    pub.stop()
    sub.stop()


def test_withheld_ack_is_redelivered_after_reconnect(broker):
    sub = Box(broker.port, client_id="keep-1", session_expiry=60)
    sub.subscribe("wa/+")
    pub = Box(broker.port)
    pub.c.publish("wa/x", b"one")
    m = sub.get()
    assert m.payload == b"one"
    first_generation = m.generation
    sub.stop()                               # no PUBACK sent
    sub2 = Box(broker.port, client_id="keep-1", session_expiry=60)
    m2 = sub2.get()
    assert (m2.topic, m2.payload, m2.dup) == ("wa/x", b"one", True)
    assert m2.generation == 1 and first_generation == 1
    sub2.c.ack(m2.pid, m2.generation)
    sub2.stop()
    sub3 = Box(broker.port, client_id="keep-1", session_expiry=60)
    assert sub3.none(0.5)                    # acknowledged: not sent again
    sub3.stop()
    pub.stop()


def test_ack_of_an_earlier_connection_is_dropped(broker):
    sub = Box(broker.port, client_id="gen-1", session_expiry=60)
    sub.subscribe("ga/+")
    pub = Box(broker.port)
    pub.c.publish("ga/x", b"m")
    m = sub.get()
    with sub.c._lock:
        sub.c._drop_locked("test")           # connection lost; the client reconnects by itself
    m2 = sub.get()
    assert m2.payload == b"m" and m2.generation == m.generation + 1
    sub.c.ack(m.pid, m.generation)           # stale: nothing written
    assert sub.c._unacked == {m2.pid}
    sub.c.ack(m2.pid, m2.generation)
    assert not sub.c._unacked
    sub.stop()
    pub.stop()


def test_shared_subscription_splits_messages(broker):
    a = Box(broker.port)
    b = Box(broker.port)
    a.subscribe("$share/g1/sh/+")
    b.subscribe("$share/g1/sh/+")
    pub = Box(broker.port)
    for i in range(40):
        pub.c.publish("sh/%d" % i, b"%d" % i, flush=False)
    pub.c.flush()
    seen = {}
    deadline = time.monotonic() + 10
    while len(seen) < 40 and time.monotonic() < deadline:
        for name, box in (("a", a), ("b", b)):
            try:
                m = box.q.get(timeout=0.05)
            except queue.Empty:
                continue
            assert int(m.payload) not in seen
            seen[int(m.payload)] = name
            box.c.ack(m.pid, m.generation)
    assert sorted(seen) == list(range(40))
    assert set(seen.values()) == {"a", "b"}
    for box in (a, b, pub):
        box.stop()


def test_broker_restart_reconnects_and_resubscribes(broker):
    sub = Box(broker.port)
    sub.subscribe("rs/+")
    broker.restart()                         # sessions and subscriptions are gone
    deadline = time.monotonic() + 10
    while sub.c.connects < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sub.c.connects == 2 and sub.c.wait_connected(5)
    time.sleep(0.3)
    pub = Box(broker.port)
    pub.c.publish("rs/x", b"after")
    m = sub.get()
    assert m.payload == b"after"
    sub.stop()
    pub.stop()


def test_outgoing_window_honours_the_server_receive_maximum():
    with BrokerThread(receive_maximum=5) as bt:
        sub = Box(bt.port)
        sub.subscribe("win/+")
        pub = Box(bt.port)
        assert pub.c.server_receive_maximum == 5
        for i in range(100):                 # nothing written yet, so no PUBACK frees a slot
            pub.c.publish("win/x", b"%d" % i, flush=False)
        assert len(pub.c._inflight) == 5 and len(pub.c._waiting) == 95
        pub.c.flush()
        got = []
        for _ in range(100):
            m = sub.get()
            got.append(int(m.payload))
            sub.c.ack(m.pid, m.generation)
        assert got == list(range(100))
        pub.stop()
        sub.stop()


# --- a fake server ----------------------------------------------------------------------------------------


class FakeServer:
    """Accepts connections and runs ``script(conn, index)`` for each, recording what the client sent."""

    def __init__(self, script) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.script = script
        self.conns = 0
        self.packets: list[tuple[int, int, bytes]] = []      # (connection index, first byte, body)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            index = self.conns
            self.conns += 1
            threading.Thread(target=self._one, args=(conn, index), daemon=True).start()

    def read_packet(self, conn, index: int):
        buf = bytearray()
        conn.settimeout(5)
        while True:
            frame = mqtt5.split_frame(buf, 0, 1 << 20)
            if frame is not None:
                first, start, end = frame
                body = bytes(buf[start:end])
                if end != len(buf):
                    raise AssertionError("the test reads one packet at a time")
                self.packets.append((index, first, body))
                return first, body
            data = conn.recv(65536)
            if not data:
                return None
            buf += data

    def _one(self, conn, index: int) -> None:
        try:
            self.script(self, conn, index)
        except OSError:
            pass
        finally:
            time.sleep(0.2)
            conn.close()

    def close(self) -> None:
        self.sock.close()


CONNACK_OK = mqtt5.packet(mqtt5.CONNACK << 4, b"\x00\x00" + mqtt5.encode_properties([(mqtt5.P_RECEIVE_MAXIMUM, 10)]))


@pytest.mark.parametrize("bad", [
    b"\x30\x02\xff\xff",                                   # PUBLISH whose topic length exceeds the packet
    b"\x32\x05\x00\x01a\x00\x00",                          # QoS 1 PUBLISH with packet id 0
    b"\x36\x00",                                           # QoS 3
    b"\x90\x03\x00\x01\x00",                               # SUBACK without reason codes
    b"\x40\x05\x00\x01\x00\x05\x1f",                       # PUBACK whose properties exceed the packet
    b"\x10\x00",                                           # CONNECT from a server
    b"\xd0\x80\x80\x80\x80\x01",                           # remaining length longer than 4 bytes
    b"\x30\x07\x00\x03a/b\x05\x23",                        # property list beyond the packet
])
def test_malformed_packet_from_the_server_drops_the_connection(bad, caplog):
    def script(srv, conn, index):
        srv.read_packet(conn, index)
        conn.sendall(CONNACK_OK)
        if index == 0:
            srv.read_packet(conn, index)     # SUBSCRIBE
            conn.sendall(bad)
        time.sleep(1.0)

    srv = FakeServer(script)
    caplog.set_level(logging.ERROR, "ledgerlink.gateway.mqtt_client")
    got: list = []
    c = MqttClient("127.0.0.1", srv.port, "m-1", on_message=lambda cl, u, m: got.append(m), backoff=(0.05, 0.1))
    c.subscriptions["x/#"] = 1
    c.start()
    deadline = time.monotonic() + 5
    while srv.conns < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.conns >= 2                    # it reconnected
    assert c._thread.is_alive() and not got
    assert c.errors and c.errors[0].startswith("malformed")
    assert any("malformed or illegal packet" in r.getMessage() for r in caplog.records)
    c.stop()
    srv.close()
    assert not c._thread.is_alive()


def test_unacknowledged_publish_is_sent_again_with_dup():
    def script(srv, conn, index):
        srv.read_packet(conn, index)
        conn.sendall(CONNACK_OK)
        p = srv.read_packet(conn, index)
        if index == 1 and p is not None:
            pub = mqtt5.decode_packet(p[0], p[1], 5)
            conn.sendall(mqtt5.puback(pub.pid))
            time.sleep(1.0)

    srv = FakeServer(script)
    c = MqttClient("127.0.0.1", srv.port, "d-1", backoff=(0.05, 0.1)).start()
    assert c.wait_connected(5)
    c.publish("d/x", b"payload", 1, retain=True)
    deadline = time.monotonic() + 5
    while c.inflight() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert c.inflight() == 0
    pubs = [(i, f, b) for i, f, b in srv.packets if f >> 4 == mqtt5.PUBLISH]
    assert len(pubs) == 2
    first = mqtt5.decode_packet(pubs[0][1], pubs[0][2], 5)
    again = mqtt5.decode_packet(pubs[1][1], pubs[1][2], 5)
    assert (pubs[0][0], pubs[1][0]) == (0, 1)
    assert not first.dup and again.dup and again.pid == first.pid
    assert (again.topic, again.payload, again.retain, again.qos) == ("d/x", b"payload", True, 1)
    c.stop()
    srv.close()


def test_refused_connack_and_server_disconnect_end_in_reconnects():
    def script(srv, conn, index):
        srv.read_packet(conn, index)
        if index == 0:
            conn.sendall(mqtt5.packet(mqtt5.CONNACK << 4, b"\x00\x87\x00"))     # not authorized
        else:
            conn.sendall(CONNACK_OK + mqtt5.encode_disconnect(0x8B))
        time.sleep(0.5)

    srv = FakeServer(script)
    c = MqttClient("127.0.0.1", srv.port, "r-1", backoff=(0.05, 0.1)).start()
    deadline = time.monotonic() + 5
    while srv.conns < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.conns >= 3
    assert "0x87" in c.errors[0] and "DISCONNECT 0x8b" in c.errors[1]
    c.stop()
    srv.close()


# --- codec ------------------------------------------------------------------------------------------------

topics = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(topics, st.binary(max_size=300), st.integers(0, 1), st.integers(1, 65535), st.booleans(), st.booleans(),
       st.lists(st.tuples(st.text(max_size=5).filter(lambda s: "\x00" not in s),
                          st.text(max_size=5).filter(lambda s: "\x00" not in s)), max_size=2))
def test_publish_encoding_round_trips(topic, payload, qos, pid, retain, dup, user):
    dup = dup and qos == 1
    props = mqtt5.encode_properties([(mqtt5.P_USER, u) for u in user])
    data = mqtt5.encode_publish(topic, payload, qos, pid if qos else 0, retain, dup, props)
    first, start, end = mqtt5.split_frame(data, 0, 1 << 20)
    assert end == len(data)
    for p in (mqtt5.decode_server_packet(first, data[start:]), mqtt5.decode_packet(first, data[start:], 5)):
        assert (p.topic, p.payload, p.qos, p.retain, p.dup) == (topic, payload, qos, retain, dup)
        assert p.pid == (pid if qos else 0)
        assert p.props.get(mqtt5.P_USER, []) == user


@settings(max_examples=200, deadline=None)
@given(topics, st.one_of(st.binary(max_size=300), st.integers(100, 20000).map(bytes)), st.integers(1, 65535),
       st.booleans())
def test_qos1_publish_from_a_topic_field_is_encode_publish(topic, payload, pid, retain):
    assert mqtt5.encode_publish_qos1(mqtt5.topic_field(topic), payload, pid, retain) == \
        mqtt5.encode_publish(topic, payload, 1, pid, retain, False, b"\x00")


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 65535), st.lists(st.tuples(topics, st.integers(0, 1)), min_size=1, max_size=4),
       st.text(max_size=10).filter(lambda s: "\x00" not in s), st.integers(0, 65535), st.booleans())
def test_subscribe_and_connect_encodings_round_trip(pid, subs, cid, keepalive, clean):
    data = mqtt5.encode_subscribe(pid, subs)
    first, start, _ = mqtt5.split_frame(data, 0, 1 << 20)
    s = mqtt5.decode_packet(first, data[start:], 5)
    assert s.pid == pid and s.topics == subs
    data = mqtt5.encode_connect(cid, keepalive, clean, [(mqtt5.P_SESSION_EXPIRY, 7), (mqtt5.P_RECEIVE_MAXIMUM, 9)])
    first, start, _ = mqtt5.split_frame(data, 0, 1 << 20)
    c = mqtt5.decode_connect(data[start:])
    assert (c.client_id, c.keepalive, c.clean_start, c.version) == (cid, keepalive, clean, 5)
    assert c.props == {mqtt5.P_SESSION_EXPIRY: 7, mqtt5.P_RECEIVE_MAXIMUM: 9}
    data = mqtt5.puback(pid)
    a = mqtt5.decode_server_packet(data[0], data[2:])
    assert (a.kind, a.pid, a.code) == (mqtt5.PUBACK, pid, 0)
    d = mqtt5.encode_disconnect(0x8B)
    assert mqtt5.decode_server_packet(d[0], d[2:]).code == 0x8B


SERVER_SAMPLES = [
    CONNACK_OK,
    mqtt5.encode_publish("a/b", b"xy", 1, 7, False, False, mqtt5.encode_properties([(mqtt5.P_SUBSCRIPTION_ID, 3)])),
    mqtt5.puback(9),
    mqtt5.packet(mqtt5.SUBACK << 4, b"\x00\x05\x00\x01\x80"),
    bytes((mqtt5.PINGRESP << 4, 0)),
    mqtt5.encode_disconnect(0x8E, [(mqtt5.P_REASON_STRING, "taken")]),
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SERVER_SAMPLES), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
       st.integers(0, 8), st.binary(max_size=8))
def test_server_decoder_raises_only_mqtt_errors(sample, edits, cut, extra):
    data = bytearray(sample)
    for i, v in edits:
        if i < len(data):
            data[i] = v
    data = bytes(data[:max(1, len(data) - cut)]) + extra
    try:
        frame = mqtt5.split_frame(data, 0, 1 << 20)
        if frame is not None:
            first, start, end = frame
            mqtt5.decode_server_packet(first, data[start:end])
    except mqtt5.MqttError as exc:
        assert 0x80 <= exc.code <= 0xA2


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=40))
def test_server_decoder_on_random_bodies(first, body):
    try:
        mqtt5.decode_server_packet(first, body)
    except mqtt5.MqttError as exc:
        assert 0x80 <= exc.code <= 0xA2


def _decode_both(body: bytes, dup: bool):
    """(fast path result or its error code, full decoder's (topic, pid, payload) or its error code)."""
    first = 0x3A if dup else 0x32
    fast = slow = None
    try:
        fast = mqtt5.decode_server_publish_qos1(b"xyz" + body + b"!", 3, 3 + len(body))
    except mqtt5.MqttError as exc:
        fast = exc.code
    try:
        p = mqtt5.decode_server_packet(first, body)
        slow = (p.topic, p.pid, p.payload) if not p.props else p.props
    except mqtt5.MqttError as exc:
        slow = exc.code
    return fast, slow


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=6), st.binary(max_size=20), st.integers(0, 65535), st.booleans(),
       st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), max_size=3), st.integers(0, 6))
def test_qos1_publish_fast_path_agrees_with_the_decoder(topic, payload, pid, dup, edits, cut):
    body = bytearray(len(topic.encode()).to_bytes(2, "big") + topic.encode() + pid.to_bytes(2, "big") + b"\x00"
                     + payload)
    for i, v in edits:
        if i < len(body):
            body[i] = v
    body = bytes(body[:max(0, len(body) - cut)])
    fast, slow = _decode_both(body, dup)
    if fast is None:                     # left to the full decoder: properties, or too short
        assert not isinstance(slow, tuple)
    else:
        assert fast == slow


def test_server_packet_checks():
    ok = mqtt5.decode_server_packet(CONNACK_OK[0], CONNACK_OK[2:])
    assert (ok.session_present, ok.code, ok.props) == (False, 0, {mqtt5.P_RECEIVE_MAXIMUM: 10})
    p = mqtt5.decode_server_packet(SERVER_SAMPLES[1][0], SERVER_SAMPLES[1][2:])
    assert p.props == {mqtt5.P_SUBSCRIPTION_ID: [3]} and p.pid == 7
    s = mqtt5.decode_server_packet(SERVER_SAMPLES[3][0], SERVER_SAMPLES[3][2:])
    assert (s.pid, s.codes) == (5, [1, 0x80])
    for first, body, code in [
        (0x20, b"\x02\x00\x00", mqtt5.MALFORMED),                  # reserved CONNACK flag
        (0x20, b"\x01\x87\x00", mqtt5.PROTOCOL_ERROR),             # session present on a refusal
        (0x20, b"\x00\x00\x03\x21\x00\x00", mqtt5.PROTOCOL_ERROR),  # receive maximum 0
        (0x30, b"\x00\x01a\x02\x23\x01", mqtt5.MALFORMED),          # property too short for its type
        (0x30, b"\x00\x01a\x03\x23\x00\x01", mqtt5.TOPIC_ALIAS_INVALID),
        (0x30, b"\x00\x03a/+\x00", mqtt5.TOPIC_NAME_INVALID),
        (0x30, b"\x00\x01a\x02\x11\x00", mqtt5.MALFORMED),          # session expiry in a PUBLISH
        (0x41, b"\x00\x01", mqtt5.MALFORMED),                       # reserved flags on PUBACK
        (0x40, b"\x00\x00", mqtt5.PROTOCOL_ERROR),                  # packet id 0
        (0xC0, b"", mqtt5.PROTOCOL_ERROR),                          # PINGREQ from a server
        (0xF0, b"", mqtt5.PROTOCOL_ERROR),                          # AUTH
        (0x00, b"", mqtt5.MALFORMED),
    ]:
        with pytest.raises(mqtt5.MqttError) as e:
            mqtt5.decode_server_packet(first, body)
        assert e.value.code == code, (first, body)


def test_publish_over_the_server_maximum_packet_size_is_refused_and_the_connection_stays(tmp_path):
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("listener %d 127.0.0.1\nallow_anonymous true\nmax_packet_size 2000\n" % port)
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        got: queue.Queue = queue.Queue()
        sub = MqttClient("127.0.0.1", port, "sub-%d" % next(_ids),
                         on_message=lambda c, u, m: (got.put(m.payload), c.ack(m.pid, m.generation))).start()
        pub = MqttClient("127.0.0.1", port, "pub-%d" % next(_ids)).start()
        try:
            assert sub.wait_connected(10) and pub.wait_connected(10)
            assert pub.server_max_packet == 2000
            sub.subscribe(["big/t"])
            time.sleep(0.3)
            generation = pub.generation
            with pytest.raises(mqtt_client.PacketTooLarge, match="Maximum Packet Size of 2000"):
                pub.publish("big/t", b"x" * 2100)
            pub.publish_many([("big/t", b"small", False), ("big/t", b"y" * 5000, False)])
            assert "Maximum Packet Size of 2000" in pub.errors[-1]
            pub.publish("big/t", b"z" * 1900)
            assert got.get(timeout=10) == b"small"
            assert got.get(timeout=10) == b"z" * 1900
            time.sleep(0.3)
            assert got.empty()
            assert pub.connected.is_set() and pub.generation == generation
        finally:
            pub.stop()
            sub.stop()
    finally:
        proc.terminate()
        proc.wait(10)
