"""The mosquitto config ``ledgerlink up`` writes (``stack.mosquitto_config``), run by the real mosquitto:
persistence in the site directory (a session and its queued QoS 1 frame survive a SIGKILL of the
broker), a keep alive of 0 answered with the server's maximum, and a payload above the message size limit
neither delivered nor acknowledged as a success (mosquitto 2.0.11 ends an MQTT 5 publisher's connection)."""

import signal
import socket
import subprocess
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ledgerlink.mqtt5 import P_SERVER_KEEP_ALIVE, encode_connect
from ledgerlink.tools import stack as st


def _mosquitto(tmp_path, port):
    (tmp_path / "mosquitto.conf").write_text(st.mosquitto_config(tmp_path, "127.0.0.1", port))
    proc = subprocess.Popen([st.find_mosquitto(), "-c", str(tmp_path / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    st.wait_listening(proc, "mosquitto", "127.0.0.1", port, tmp_path / "mosquitto.log", 20)
    return proc


def _client(port, client_id, expiry=None, got=None):
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    if got is not None:
        c.on_message = lambda cl, u, m: got.append(bytes(m.payload))
    props = None
    if expiry is not None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, r, p: connected.set()
    c.connect("127.0.0.1", port, clean_start=expiry is None, properties=props)
    c.loop_start()
    assert connected.wait(10)
    return c


def test_config_has_the_limits_an_operator_expects(tmp_path):
    text = st.mosquitto_config(tmp_path, "127.0.0.1", 1883)
    for line in ("persistence true", "persistence_location %s/" % tmp_path.resolve(), "autosave_interval 1",
                 "message_size_limit %d" % st.MESSAGE_SIZE_LIMIT, "max_packet_size %d" % st.PACKET_SIZE_LIMIT,
                 "max_connections %d" % st.MAX_CONNECTIONS, "max_keepalive %d" % st.MAX_KEEPALIVE_S,
                 "max_queued_bytes %d" % st.QUEUED_BYTES_PER_CLIENT):
        assert line in text.splitlines(), line


@pytest.mark.slow
def test_mosquitto_keeps_a_queued_frame_across_a_kill_and_applies_the_limits(tmp_path):
    port = st.free_port()
    mq = _mosquitto(tmp_path, port)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)       # keep alive 0: told the maximum
        s.sendall(encode_connect("ka0", 0, True))
        connack = s.recv(100)
        assert connack[0] == 0x20 and bytes((P_SERVER_KEEP_ALIVE,)) + st.MAX_KEEPALIVE_S.to_bytes(2, "big") in connack
        s.close()

        got: list[bytes] = []
        sub = _client(port, "gw", expiry=3600, got=got)
        sub.subscribe("t", qos=1)
        time.sleep(0.5)
        sub.disconnect()
        sub.loop_stop()
        big = _client(port, "big")
        codes: list[int] = []
        big.on_publish = lambda c, u, mid, reason, props: codes.append(reason.value)
        big.publish("t", b"x" * (st.MESSAGE_SIZE_LIMIT + 1), qos=1)
        time.sleep(1.0)
        assert all(code >= 0x80 for code in codes)                     # refused (or the client cut off), never 0
        big.disconnect()
        big.loop_stop()
        pub = _client(port, "dev")
        pub.publish("t", b"kept", qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        time.sleep(2 * st.AUTOSAVE_S + 0.5)                           # saved at the next autosave
        mq.send_signal(signal.SIGKILL)
        mq.wait(10)
        mq = _mosquitto(tmp_path, port)
        sub = _client(port, "gw", expiry=3600, got=got)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.1)
        sub.disconnect()
        sub.loop_stop()
        assert got == [b"kept"]
    finally:
        mq.kill()
        mq.wait(10)
