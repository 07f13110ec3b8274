"""What an MQTT client of ``mqtt`` sends once per connection: CONNECT (waiting for its CONNACK) and SUBSCRIBE.
``mqtt`` names these and ``MQTTClient.connect`` / ``subscribe`` load this module for each call; a board
forgets it after, so the heap holds none of it while the connection runs. Tested with ``mqtt``
(tests/micropython/test_client_units.py) and against mosquitto (tests/micropython/test_client_in_vm.py).
"""

from ledgerlink_client.mqtt import CONNACK, CONNECT, MQTTError, _packet, _pid_bytes, _string


def encode_connect(client_id, keepalive=60, clean_session=True, username=None, password=None):
    """CONNECT, protocol level 4 (3.1.1)."""
    if not 0 <= keepalive < 65536:
        raise MQTTError("keepalive must be 0..65535 s")
    flags = 0x02 if clean_session else 0
    tail = b""
    if username is not None:
        flags |= 0x80
        tail += _string(username)
    if password is not None:
        if username is None:
            raise MQTTError("a password needs a user name in MQTT 3.1.1")
        flags |= 0x40
        tail += _string(password)
    body = _string("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + _string(client_id) + tail
    return _packet(CONNECT << 4, body)


def encode_subscribe(pid, topics):
    """SUBSCRIBE for a list of (topic filter, qos)."""
    if not topics:
        raise MQTTError("SUBSCRIBE needs at least one topic")
    body = _pid_bytes(pid)
    for topic, qos in topics:
        if not topic or qos not in (0, 1, 2):
            raise MQTTError("bad subscription")
        body += _string(topic) + bytes([qos])
    return _packet(0x82, body)


def connect(client, timeout_ms=5000):
    """``MQTTClient.connect``."""
    client.stream.write(encode_connect(client.client_id, client.keepalive, client.clean_session, client.username,
                                       client.password))
    waited = 0
    step = 100
    while waited < timeout_ms:
        pkt = client._read_packet(step)
        waited += step
        if pkt is None:
            continue
        if pkt.kind != CONNACK:
            raise MQTTError("expected CONNACK, got packet type %d" % pkt.kind)
        if pkt.return_code != 0:
            raise MQTTError("connection refused by the broker, code %d" % pkt.return_code)
        return pkt.session_present
    raise MQTTError("no CONNACK within %d ms" % timeout_ms)


def subscribe(client, topic, qos=1):
    """``MQTTClient.subscribe``."""
    pid = client._alloc_pid()
    client.stream.write(encode_subscribe(pid, [(topic, qos)]))
    return pid
