"""The board client's parts under CPython: MQTT codec, offline queue on real files, delivery logic."""

import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor, cose
from tests.conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "micropython"))

from ledgerlink_client import device, mqtt  # noqa: E402
from ledgerlink_client.queue import FileStorage, MemoryStorage, OfflineQueue, SeqCounter  # noqa: E402
from tests.device.helpers import CRYPTO  # noqa: E402
from tests.device.test_board_client_delivery import ack_reply  # noqa: E402

topics = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="+#\x00"),
                 min_size=1, max_size=40)
pids = st.integers(1, 65535)


@settings(max_examples=200, deadline=None)
@given(topics, st.binary(max_size=300), st.sampled_from([0, 1]), st.booleans(), pids, st.booleans())
def test_publish_round_trip(topic, payload, qos, retain, pid, dup):
    raw = mqtt.encode_publish(topic, payload, qos, retain, pid if qos else None, dup)
    pkt, used = mqtt.parse(raw + b"\xc0", max_packet=1 << 20)
    assert used == len(raw)
    assert (pkt.kind, pkt.topic, pkt.payload, pkt.qos, pkt.retain) == (mqtt.PUBLISH, topic, payload, qos, retain)
    assert pkt.pid == (pid if qos else None) and pkt.dup == (dup and qos == 1)
    for cut in range(len(raw)):
        assert mqtt.parse(raw[:cut], max_packet=1 << 20) == (None, 0)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=23), st.integers(0, 65535), st.booleans(), st.none() | st.text(max_size=10),
       st.binary(max_size=10))
def test_connect_round_trip(client_id, keepalive, clean, user, password):
    pw = password if user is not None else None
    pkt, _ = mqtt.parse(mqtt.encode_connect(client_id, keepalive, clean, user, pw))
    assert (pkt.client_id, pkt.keepalive, pkt.clean_session, pkt.username, pkt.password) == \
        (client_id, keepalive, clean, user, pw)


@settings(max_examples=100, deadline=None)
@given(pids, st.lists(st.tuples(topics, st.sampled_from([0, 1, 2])), min_size=1, max_size=4),
       st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4), st.booleans(), st.integers(0, 255))
def test_other_packets_round_trip(pid, subs, codes, present, rc):
    sub, _ = mqtt.parse(mqtt.encode_subscribe(pid, subs))
    assert (sub.pid, list(zip(sub.topic, sub.codes))) == (pid, subs)
    ack, _ = mqtt.parse(mqtt.encode_suback(pid, codes))
    assert (ack.kind, ack.pid, ack.codes) == (mqtt.SUBACK, pid, codes)
    con, _ = mqtt.parse(mqtt.encode_connack(present, rc))
    assert (con.session_present, con.return_code) == (present, rc)
    assert mqtt.parse(mqtt.encode_puback(pid))[0].pid == pid
    for raw, kind in ((mqtt.encode_pingreq(), mqtt.PINGREQ), (mqtt.encode_pingresp(), mqtt.PINGRESP),
                      (mqtt.encode_disconnect(), mqtt.DISCONNECT)):
        assert mqtt.parse(raw)[0].kind == kind


@settings(max_examples=300, deadline=None)
@given(st.integers(0, mqtt.MAX_REMAINING))
def test_remaining_length_round_trip(n):
    enc = mqtt.encode_length(n)
    assert 1 <= len(enc) <= 4
    pkt_head = b"\x30" + enc
    if n > 100:
        assert mqtt.parse(pkt_head + b"\x00" * 10, max_packet=1 << 30) == (None, 0)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_escapes_as_another_error(data):
    try:
        mqtt.parse(data)
    except mqtt.MQTTError:
        pass


def test_codec_refusals():
    with pytest.raises(mqtt.MQTTError):
        mqtt.parse(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(mqtt.MQTTError):
        mqtt.parse(b"\x30\x80\x80\x01", max_packet=8192)
    with pytest.raises(mqtt.MQTTError):
        mqtt.parse(b"\x40\x02\x00\x00")  # PUBACK with packet id 0
    with pytest.raises(mqtt.MQTTError):
        mqtt.parse(b"\x36\x03\x00\x01a")  # QoS 3
    with pytest.raises(mqtt.MQTTError):
        mqtt.encode_publish("a/+", b"")
    with pytest.raises(mqtt.MQTTError):
        mqtt.encode_publish("a", b"", qos=1)


class Pipe:
    """A stream whose reads come from a list of chunks and whose writes are recorded."""

    def __init__(self, chunks=()):
        self.chunks = list(chunks)
        self.written = []
        self.closed = False

    def write(self, data):
        self.written.append(bytes(data))

    def read(self, n, timeout_ms):
        return self.chunks.pop(0) if self.chunks else b""

    def close(self):
        self.closed = True


def test_client_poll_splits_packets_and_acks_qos1():
    incoming = (mqtt.encode_puback(7) + mqtt.encode_publish("x/down", b"hi", 1, pid=9) +
                mqtt.encode_pingresp())
    pipe = Pipe([incoming[:5], incoming[5:]])
    client = mqtt.MQTTClient(pipe, "c")
    events = client.poll(10) + client.poll(10) + client.poll(10)
    assert events == [("puback", 7), ("msg", "x/down", b"hi", 1, False), ("pingresp",)]
    assert pipe.written == [mqtt.encode_puback(9)]


def test_client_poll_returns_at_most_one_message():
    """A burst of receipts is decoded one message per poll: the rest waits as raw bytes, so a board's heap
    never holds every decoded payload of a batch while it checks the first."""
    incoming = b"".join(mqtt.encode_publish("x/down", b"r%d" % i, 1, pid=i + 1) for i in range(3)) + mqtt.encode_puback(4)
    client = mqtt.MQTTClient(Pipe([incoming]), "c")
    assert client.poll(10) == [("msg", "x/down", b"r0", 1, False)]
    assert client.poll(10) == [("msg", "x/down", b"r1", 1, False)]
    assert client.poll(10) == [("msg", "x/down", b"r2", 1, False)]
    assert client.poll(10) == [("puback", 4)]


def test_client_pending_says_when_a_whole_packet_waits_in_the_buffer():
    incoming = mqtt.encode_publish("x/down", b"r" * 200, 1, pid=1) + mqtt.encode_puback(2)
    client = mqtt.MQTTClient(Pipe([incoming[:100], b"", incoming[100:]]), "c")
    assert not client.pending()
    assert client.poll(10) == []                 # half a packet arrived
    assert not client.pending()
    assert client.poll(10)[0][0] == "msg"
    assert client.pending()                      # the PUBACK came with it and waits
    assert client.poll(10) == [("puback", 2)] and not client.pending()


class Socketish(Pipe):
    """A stream like a socket: a read gives at most ``n`` of the bytes that arrived."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def read(self, n, timeout_ms):
        out, self.data = self.data[:n], self.data[n:]
        return out


def test_client_reads_one_packet_at_a_time_leaving_the_rest_in_the_network_stack():
    """A board's heap holds one received packet at a time: the ones behind it wait in the network stack
    (its own buffers) until they are polled, not read ahead into the client's buffer."""
    packets = [mqtt.encode_publish("x/down", b"r%d" % i * 300, 1, pid=i + 1) for i in range(3)] + [mqtt.encode_puback(9)]
    stream = Socketish(b"".join(packets))
    client = mqtt.MQTTClient(stream, "c")
    for i, packet in enumerate(packets):
        event = client.poll(10)[0]
        assert event[:2] == (("msg", "x/down") if i < 3 else ("puback", 9))
        assert len(client._buf) == 0 and stream.data == b"".join(packets[i + 1:])
    assert client.poll(10) == []


class Recording(Socketish):
    """A socket-like stream that records the sizes asked for."""

    def __init__(self, data):
        super().__init__(data)
        self.asked = []

    def read(self, n, timeout_ms):
        self.asked.append(n)
        return super().read(n, timeout_ms)


def test_a_packet_buffer_is_allocated_whole_once_its_length_is_known_and_filled_a_block_at_a_time():
    payload = bytes(range(256)) * 6
    packet = mqtt.encode_publish("x/fw", payload, 1, pid=3)
    stream = Recording(packet)
    client = mqtt.MQTTClient(stream, "c")
    assert client.poll(10) == [("msg", "x/fw", payload, 1, False)]
    rest = len(packet) - 3                  # after the type byte and a 2-byte remaining length
    assert stream.asked == [2, 1] + [mqtt.READ_MAX] * (rest // mqtt.READ_MAX) + [rest % mqtt.READ_MAX]
    assert len(client._buf) == 0 and not client.pending()


def test_a_packet_longer_than_the_limit_is_refused_before_its_buffer_is_made():
    packet = mqtt.encode_publish("x/fw", bytes(9000), 0)
    client = mqtt.MQTTClient(Recording(packet), "c", max_packet=8192)
    with pytest.raises(mqtt.MQTTError, match="exceeds the 8192-byte limit"):
        client.poll(10)
    assert len(client._buf) < 8


def test_bytes_a_stream_gave_beyond_a_packet_stay_for_the_next():
    first, second = mqtt.encode_publish("x/a", b"1" * 700, 0), mqtt.encode_puback(4)
    client = mqtt.MQTTClient(Pipe([first[:3], first[3:] + second]), "c")
    assert client.poll(10) == [("msg", "x/a", b"1" * 700, 0, False)]
    assert client.pending() and client.poll(10) == [("puback", 4)]


def test_client_connect_refused_and_silent():
    with pytest.raises(mqtt.MQTTError, match="code 5"):
        mqtt.MQTTClient(Pipe([mqtt.encode_connack(False, 5)]), "c").connect(200)
    with pytest.raises(mqtt.MQTTError, match="no CONNACK"):
        mqtt.MQTTClient(Pipe(), "c").connect(200)
    pipe = Pipe([mqtt.encode_connack(True, 0)])
    assert mqtt.MQTTClient(pipe, "dev", keepalive=30).connect(200) is True
    assert mqtt.parse(pipe.written[0])[0].client_id == "dev"


@pytest.fixture(params=["files", "memory"])
def storage(request, tmp_path):
    return FileStorage(str(tmp_path)) if request.param == "files" else MemoryStorage()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=0, max_size=120), st.none()), max_size=40))
def test_queue_matches_a_list_and_survives_reopening(tmp_path_factory, ops):
    storage = FileStorage(str(tmp_path_factory.mktemp("q")))
    q = OfflineQueue(storage, max_bytes=1200, max_frames=12)
    model = []
    for op in ops:
        if op is None:
            if model:
                assert q.peek() == model.pop(0)
                q.pop()
        else:
            q.push("t/%d" % len(op), op)
            model.append(("t/%d" % len(op), op))
            while len(model) > 12 or sum(6 + 1 + len(t) + len(p) for t, p in model) > 1200:
                model.pop(0)
        assert len(q) == len(model)
        assert [q.peek(i) for i in range(len(q))] == model
    again = OfflineQueue(storage, max_bytes=1200, max_frames=12)
    assert [again.peek(i) for i in range(len(again))] == model


def test_queue_drops_oldest_and_counts(storage):
    q = OfflineQueue(storage, max_frames=3)
    for i in range(5):
        q.push("t", bytes([i]))
    assert q.dropped == 2 and [q.peek(i)[1] for i in range(3)] == [b"\x02", b"\x03", b"\x04"]
    with pytest.raises(ValueError):
        OfflineQueue(storage, max_bytes=100).push("t", bytes(200))


def test_queue_ignores_a_torn_tail_and_a_corrupt_index(tmp_path):
    storage = FileStorage(str(tmp_path))
    q = OfflineQueue(storage)
    for i in range(3):
        q.push("up", b"frame-%d" % i)
    q.pop()
    with open(tmp_path / "llq.dat", "ab") as f:
        f.write(b"\x00\x20\x01\x02")  # a record cut short by a reset
    q2 = OfflineQueue(storage)
    assert [q2.peek(i)[1] for i in range(len(q2))] == [b"frame-1", b"frame-2"]
    q2.push("up", b"frame-3")
    assert [OfflineQueue(storage).peek(i)[1] for i in range(3)] == [b"frame-1", b"frame-2", b"frame-3"]
    (tmp_path / "llq.idx").write_bytes(b"\xff" * 8)  # corrupt index: start from the beginning of the file
    q3 = OfflineQueue(storage)
    assert q3.peek(0)[1] == b"frame-1"


def test_sequence_numbers_never_repeat_across_resets(storage):
    seen = []
    for _ in range(5):
        counter = SeqCounter(storage, block=4)
        seen += [counter.next() for _ in range(3)]
    assert seen == sorted(set(seen)) and seen[0] == 1


class FakeMQTT:
    """An MQTT object that records publishes; the test decides which PUBACKs arrive."""

    instances: list = []

    def __init__(self, fail=False):
        self.fail = fail
        self.published = []
        self.events = []
        self.pings = 0
        self.closed = False
        self.pid = 0
        FakeMQTT.instances.append(self)

    def connect(self):
        if self.fail:
            raise OSError("refused")

    def subscribe(self, topic, qos):
        self.topic = topic

    def publish(self, topic, payload, qos=1, retain=False, pid=None, dup=False):
        if pid is None:
            self.pid += 1
            pid = self.pid
        self.published.append((pid, dup, payload))
        return pid

    def ping(self):
        self.pings += 1

    def poll(self, timeout_ms):
        events, self.events = self.events, []
        return events

    def close(self):
        self.closed = True

    disconnect = close


class Clock:
    def __init__(self):
        self.now = 0

    def ticks(self):
        return self.now

    def sleep(self, ms):
        self.now += ms


def make_client(clock, factory, **cfg):
    """A session-mode client with a session of known keys and no end (set directly, as a test may)."""
    from ledgerlink.core import session_keys
    from ledgerlink.protocol import device_protocol as dp

    keys = {"key": os.urandom(16), "base_iv": os.urandom(13), "session_id": os.urandom(8)}
    config = {"site": "s", "identity_key": bytes(31) + b"\x05", "ca_public": b"\x02" + bytes(32),
              "retry_ms": 1000, "keepalive_s": 10, "backoff_min_ms": 100, "backoff_max_ms": 1000, "max_inflight": 2}
    config.update(cfg)
    client = device.DeviceClient(config, factory, ticks_ms=clock.ticks, ticks_diff=lambda a, b: a - b,
                                 time_ms=lambda: 1_700_000_000_000, sleep_ms=clock.sleep, rng=os.urandom)
    session = session_keys.SessionKeys(keys["key"], keys["base_iv"], keys["session_id"])
    client.protocol.set_session(dp.Session(session, b"gw", None, None, 0))
    return client, keys


def test_retransmits_with_dup_and_pops_in_order():
    FakeMQTT.instances = []
    clock = Clock()
    client, keys = make_client(clock, FakeMQTT)
    for i in range(3):
        client.publish({"i": i})
    client.step(0)
    m = FakeMQTT.instances[0]
    assert [(p, d) for p, d, _ in m.published] == [(1, False), (2, False)]
    m.events = [("puback", 2)]
    client.step(0)
    assert client.pending() == 3  # 2 acknowledged but 1 is not: nothing leaves the queue yet
    clock.now += 1000
    client.step(0)
    assert (1, True) in [(p, d) for p, d, _ in m.published]
    m.events = [("puback", 1)] + [("msg", client.topic_down, ack_reply(client.device_id, "s", pid, CRYPTO.sha256(f)))
                                  for pid, _, f in m.published[:2]]              # the gateway stored both
    client.step(0)
    assert client.pending() == 1 and client.stats["retransmitted"] == 1
    client.step(0)
    assert m.published[-1][:2] == (3, False)
    frame = m.published[-1][2]
    reading = cbor.loads(cose.decrypt0(frame, keys["key"], keys["base_iv"], external_aad=client.topic_up.encode()))
    assert reading[2] == 3 and reading[4] == {"i": 2}


def test_keepalive_ping_then_drop_and_jittered_backoff():
    FakeMQTT.instances = []
    clock = Clock()
    client, _ = make_client(clock, FakeMQTT)
    client.step(0)
    clock.now += 5000
    client.step(0)
    assert FakeMQTT.instances[0].pings == 1
    clock.now += 10001
    client.step(0)
    assert not client.connected and FakeMQTT.instances[0].closed
    assert 50 <= client._retry_wait <= 100
    client.failures = 10
    waits = {client._backoff_ms() for _ in range(50)}
    assert min(waits) >= 500 and max(waits) <= 1000 and len(waits) > 5


def test_reconnect_resends_unacknowledged_readings():
    FakeMQTT.instances = []
    clock = Clock()
    outcomes = [True, False]
    client, _ = make_client(clock, lambda: FakeMQTT(fail=outcomes.pop(0) if outcomes else False))
    client.publish({"a": 1})
    client.step(0)
    assert client.stats["connect_failures"] == 1 and not client.connected
    client.step(10_000)
    client.step(0)
    first = FakeMQTT.instances[1]
    assert client.connected and len(first.published) == 1
    first.events = [("msg", client.topic_down, b"\xff"), ("msg", client.topic_down, cbor.dumps({0: 2, 2: 7})),
                    ("msg", "other/topic", cbor.dumps({0: 1}))]
    client.step(0)
    assert client.stats["bad_replies"] == 1 and client.replies == [{0: 2, 2: 7}]
    clock.now += 5_000
    client.step(0)
    clock.now += 10_001
    client.step(0)  # no PUBACK within the keepalive interval: dropped
    assert not client.connected and client.stats["drops"] == 1 and client.pending() == 1
    while len(FakeMQTT.instances) < 3:
        client.step(100)
    second = FakeMQTT.instances[2]
    assert [(pid, dup, payload) for pid, dup, payload in second.published] == [(1, False, first.published[0][2])]
    second.events = [("puback", 1), ("msg", client.topic_down,
                                     ack_reply(client.device_id, "s", 1, CRYPTO.sha256(first.published[0][2])))]
    client.step(0)
    assert client.pending() == 0


# --- sessions and receipts against the gateway's own checks (GatewayCore over a FakeLedgerAdapter) ----


class GatewayMQTT(FakeMQTT):
    """Every publish goes through ``GatewayCore``; its replies come back as messages on the next poll."""

    def __init__(self, env, accepted, clock, tamper=None):
        super().__init__()
        self.env = env
        self.accepted = accepted
        self.clock = clock
        self.tamper = tamper

    def poll(self, timeout_ms):
        events = super().poll(timeout_ms)
        if not events:
            self.clock.now += timeout_ms
        return events

    def publish(self, topic, payload, qos=1, retain=False, pid=None, dup=False):
        from ledgerlink.gateway import checks as c

        pid = super().publish(topic, payload, qos, retain, pid, dup)
        self.events.append(("puback", pid))
        for e in self.env.feed(topic, payload, self.env.now):
            if isinstance(e, c.Reply):
                reply = e.payload if self.tamper is None else self.tamper(e.payload)
                self.events.append(("msg", e.topic, reply))
            elif isinstance(e, c.Accept):
                self.accepted.append(e)
                self.events.append(("msg", self.env.gw.down_topic(e.device_id),
                                    ack_reply(e.device_id, self.env.gw.site, e.seq, e.frame_hash)))
            elif isinstance(e, c.Refuse) and e.reply_topic:
                self.events.append(("msg", e.reply_topic, e.reply()))
        return pid


def gateway_client(env, storage, accepted, tamper=None, **cfg):
    from tests.device.helpers import CRYPTO

    config = {"site": env.gw.site, "identity_key": env.net["sensor"].priv, "ca_public": env.ca_public,
              "chain_id": env.net.chain_id, "validators": list(env.ledger.keys), "backoff_min_ms": 100}
    config.update(cfg)
    clock = Clock()
    mq = []

    def factory():
        mq.append(GatewayMQTT(env, accepted, clock, tamper))
        return mq[-1]

    client = device.DeviceClient(config, factory, storage=storage, ticks_ms=clock.ticks,
                                 ticks_diff=lambda a, b: a - b, time_ms=lambda: env.now, sleep_ms=clock.sleep,
                                 rng=os.urandom, backend=CRYPTO)
    return client, mq, clock


@pytest.fixture()
def gw_env():
    from tests.device.helpers import NOW, Env

    env = Env()
    env.now = NOW
    return env


def deliver_receipts(env, client, mq, accepted, mutate=None):
    receipts = env.receipts([a.frame_hash for a in accepted], [a.seq for a in accepted])
    for r in receipts:
        if mutate is not None:
            mutate(r)
        mq[-1].events.append(("msg", client.topic_down, cbor.dumps(r)))
    client.step(0)
    del accepted[:]


def test_client_opens_a_session_itself_and_checks_receipts(gw_env, storage):
    env, accepted = gw_env, []
    client, mq, _ = gateway_client(env, storage, accepted)
    assert client.publish({"t": 1}) is None and client.pending() == 1          # held: no session yet
    assert client.open_session(5000)
    assert client.stats["session_requests"] == 1 and client.stats["sessions_opened"] == 1
    sid = client.session.keys.session_id
    assert env.gw.sessions[sid].key == client.session.keys.key
    assert client.publish({"t": 2}) == 2
    assert client.flush(5000) and [a.seq for a in accepted] == [1, 2]
    assert all(a.mode == "session" and a.device_id == client.device_id for a in accepted)
    assert [a.measurements for a in accepted] == [{"t": 1}, {"t": 2}]
    deliver_receipts(env, client, mq, accepted)
    assert client.stats["receipts_valid"] == 2 and client.stats["receipts_invalid"] == 0
    assert [r.seq for r in client.receipts] == [1, 2] and all(r.valid for r in client.receipts)

    # a receipt whose header carries a forged validator signature is counted as invalid
    client.publish({"t": 3})
    client.flush(5000)
    deliver_receipts(env, client, mq, accepted, lambda r: r[7][1][3][0].__setitem__(1, bytes(64)))
    assert client.stats["receipts_invalid"] == 1 and not client.receipts[-1].valid
    assert "does not verify" in client.receipts[-1].reason

    # a reset: the session comes back from the storage, no new request, sequence numbers continue
    again, mq2, _ = gateway_client(env, storage, accepted)
    assert again.stats["sessions_restored"] == 1 and again.session.keys.session_id == sid
    seq = again.publish({"t": 4})
    assert seq > 3 and again.flush(5000) and again.stats["session_requests"] == 0
    assert [a.seq for a in accepted] == [seq] and accepted[0].mode == "session"


def test_a_second_receipt_for_a_confirmed_reading_is_ignored_not_counted_invalid(gw_env, storage):
    """A reading published again (its stored-ack late on a slow link) gets a second receipt: the reading is
    confirmed already, so the repeat is ignored, neither counted as an invalid receipt nor as a reading."""
    env, accepted = gw_env, []
    client, mq, _ = gateway_client(env, storage, accepted, mode="signed")
    client.publish({"t": 1})
    client.publish({"t": 2})
    assert client.flush(5000)
    again = list(accepted)
    deliver_receipts(env, client, mq, accepted)
    assert client.stats["receipts_valid"] == 2 and client.stats["receipts_invalid"] == 0
    ignored = client.stats["ignored_replies"]
    deliver_receipts(env, client, mq, again)
    assert client.stats["receipts_valid"] == 2 and client.stats["receipts_invalid"] == 0
    assert client.stats["ignored_replies"] == ignored + 2
    # a receipt for a frame this device never sent is still refused as invalid
    client.publish({"t": 3})
    assert client.flush(5000)
    deliver_receipts(env, client, mq, accepted, lambda r: r.__setitem__(1, bytes(32)))
    assert client.stats["receipts_invalid"] == 1


def test_client_sends_its_registration_request_and_hears_the_answer(gw_env, storage):
    env, accepted = gw_env, []
    client, mq, _ = gateway_client(env, storage, accepted, identity_key=env.net["newcomer"].priv, mode="signed")
    h = client.register(1, {"name": "newcomer"})
    assert client.flush(5000)
    client.step(0)
    assert len(mq[-1].published) == 1
    assert client.stats["registrations_held"] == 1 and client.device_id in env.gw.registrations
    assert client.stats["registrations_refused"] == 0 and not accepted

    client.register(1, {"name": "newcomer"}, time_ms=env.now + 120_000)        # clock far ahead: refused
    assert client.flush(5000)
    client.step(0)
    assert client.stats["registrations_refused"] == 1 and client.stats["sessions_refused"] == 0
    assert h != client._registration


def test_client_refreshes_before_expiry_and_after_the_gateway_forgets(gw_env):
    env, storage, accepted = gw_env, MemoryStorage(), []
    client, mq, clock = gateway_client(env, storage, accepted, session_margin_s=600, session_timeout_ms=1000)
    assert client.open_session(5000)
    first = client.session
    env.now = (first.valid_until_s - 601) * 1000
    client.step(0)
    assert client.session is first and client.stats["session_requests"] == 1
    env.now += 2000                                                            # inside the margin
    client.step(0)
    client.step(0)
    assert client.stats["session_requests"] == 2 and client.session is not first
    assert client.session.valid_until_s > first.valid_until_s
    # the gateway loses the session: the refusal (unknown session) makes the client open a new one
    second = client.session
    env.gw.sessions.clear()
    client.publish({"t": 5})
    client.step(0)
    assert client.stats["refused"] == 1 and client.session is None and storage.read("llsess") == b""
    client.step(0)
    assert client.stats["session_requests"] == 3 and client.session is not None
    assert client.session.keys.session_id != second.keys.session_id
    assert client.session.keys.session_id in env.gw.sessions
    # the refused reading is not lost: sealed again (new seq) under the new session and accepted
    assert client.stats["resealed"] == 1
    del accepted[:]
    assert client.flush(5000)
    readings = [a for a in accepted if a.chain is None]               # not the chain statements
    assert [a.measurements for a in readings] == [{"t": 5}] and readings[0].mode == "session"


@pytest.mark.parametrize("field", [2, 3, 4])
def test_tampered_session_responses_are_not_taken(gw_env, field):
    def tamper(payload):
        msg = cbor.loads(payload)
        if msg[0] == 3:
            v = msg[1][field]
            msg[1][field] = v[:-1] + bytes([v[-1] ^ 1])
        return cbor.dumps(msg)

    env, storage, accepted = gw_env, MemoryStorage(), []
    client, _, _ = gateway_client(env, storage, accepted, tamper=tamper)
    assert not client.open_session(300)
    assert client.session is None and client.stats["ignored_replies"] >= 1
    assert client.stats["sessions_opened"] == 0 and storage.read("llsess") == b""


def test_a_damaged_or_expired_stored_session_is_not_used(gw_env):
    env, storage, accepted = gw_env, MemoryStorage(), []
    client, _, _ = gateway_client(env, storage, accepted)
    assert client.open_session(5000)
    good = storage.read("llsess")
    storage.replace("llsess", good[:-1] + bytes([good[-1] ^ 1]))
    again, _, _ = gateway_client(env, storage, accepted)
    assert again.session is None and again.stats["sessions_restored"] == 0 and storage.read("llsess") == b""
    storage.replace("llsess", good)
    env.now = client.session.valid_until_s * 1000
    late, _, _ = gateway_client(env, storage, accepted)
    assert late.session is None and storage.read("llsess") == b""
    assert late.open_session(5000) and late.stats["session_requests"] == 1


def test_receipt_asks_back_off_to_four_waits_at_most(tmp_path):
    from tests.device.test_board_client_delivery import board, setup
    from tests.device.helpers import Clock

    env, service = setup(tmp_path)
    clock, link = Clock(), []
    client = board(env, service, MemoryStorage(), clock, link, receipt_wait_ms=1000)
    client.publish({"i": 1})
    assert client.flush(10_000) and len(client.delivery.queue) == 1   # stored, no receipt comes (no batch)
    asks = []
    while clock.now < 40_000:
        n = client.stats["asks"]
        client.step(50)
        if client.stats["asks"] > n:
            asks.append(clock.now)
    gaps = [b - a for a, b in zip(asks, asks[1:])]
    assert len(gaps) >= 6 and 1900 <= gaps[0] <= 2100                  # the wait doubles ...
    assert all(3900 <= g <= 4100 for g in gaps[2:]), gaps                # ... up to 4 x receipt_wait_ms
