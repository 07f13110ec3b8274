"""The gateway's MQTT client tries a broker that is away at least once a second (``RECONNECT_BACKOFF_S``),
so a broker started again after a crash is used within a second. Before, its wait doubled up to 10 s
(with jitter up to 15 s), and a gateway whose broker was away for a few seconds came back seconds after it."""

import socket
import threading
import time

from ledgerlink.gateway.mqtt_adapter import RECONNECT_BACKOFF_S, MqttGateway

WATCH_S = 6.0


def test_a_broker_that_is_away_is_tried_at_least_once_a_second(monkeypatch):
    monkeypatch.setattr("ledgerlink.gateway.mqtt_client.random.random", lambda: 0.999)   # the longest jitter
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    attempts: list[float] = []
    stop = threading.Event()

    def refuse() -> None:                       # a broker that closes every connection before its CONNACK
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            attempts.append(time.monotonic())
            conn.close()

    t = threading.Thread(target=refuse, daemon=True)
    t.start()
    gw = MqttGateway(None, None, None, "rc", "127.0.0.1", server.getsockname()[1], "ll-gw-rc-1")
    gw.client.start()
    try:
        time.sleep(WATCH_S)
    finally:
        gw.client.stop()
        stop.set()
        t.join(5)
        server.close()
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert len(attempts) >= 5 and max(gaps) < RECONNECT_BACKOFF_S[1] * 1.5 + 0.5, gaps
    assert time.monotonic() - attempts[-1] < WATCH_S                # still trying at the end
