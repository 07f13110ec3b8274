"""The delay relay holds each direction for its delay, keeps bytes in order and closes cleanly."""

import os
import socket
import threading
import time

import pytest

from ledgerlink.ledger.delay_relay import DelayRelay, _echo_server, measure_one_way_ms

DELAY_MS = 30.0


@pytest.fixture
def echo():
    """The address of an echo server on loopback, closed (its thread joined) after the test."""
    srv, t = _echo_server()
    yield srv.getsockname()
    srv.close()
    t.join(5)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            break
        out += data
    return bytes(out)


def test_a_round_trip_through_the_relay_takes_at_least_twice_the_delay(echo):
    with DelayRelay([echo], DELAY_MS) as relay:
        with socket.create_connection(("127.0.0.1", relay.ports[0]), timeout=10) as c:
            for _ in range(5):
                t0 = time.perf_counter()
                c.sendall(b"ping")
                assert _recv_exactly(c, 4) == b"ping"
                assert (time.perf_counter() - t0) * 1000 >= 2 * DELAY_MS


def test_without_the_relay_the_same_round_trip_is_fast(echo):
    """The probe measures the relay, not the echo server: direct round trips stay far below 2x the delay."""
    with socket.create_connection(echo, timeout=10) as c:
        took = []
        for _ in range(5):
            t0 = time.perf_counter()
            c.sendall(b"ping")
            assert _recv_exactly(c, 4) == b"ping"
            took.append((time.perf_counter() - t0) * 1000)
        assert min(took) < 2 * DELAY_MS


def test_bytes_arrive_in_order_and_complete_both_ways(echo):
    payload = os.urandom(3 * 1024 * 1024)
    with DelayRelay([echo], 2.0) as relay:
        with socket.create_connection(("127.0.0.1", relay.ports[0]), timeout=30) as c:
            sender = threading.Thread(target=c.sendall, args=(payload,))
            sender.start()
            got = _recv_exactly(c, len(payload))
            sender.join(30)
        assert got == payload
        assert relay.bytes == 2 * len(payload)


def test_bandwidth_cap_spaces_the_bytes(echo):
    """1 Mbit/s: 62,500 bytes take at least 0.5 s to pass one way."""
    payload = os.urandom(62500)
    with DelayRelay([echo], 0.0, bandwidth_mbit_s=1.0) as relay:
        with socket.create_connection(("127.0.0.1", relay.ports[0]), timeout=30) as c:
            t0 = time.perf_counter()
            c.sendall(payload)
            assert _recv_exactly(c, len(payload)) == payload
            assert time.perf_counter() - t0 >= 0.5 * 0.95 * 2    # capped on the way there and back


def test_a_close_at_one_end_reaches_the_other():
    srv, t = _echo_server()
    try:
        with DelayRelay([srv.getsockname()], 5.0) as relay:
            c = socket.create_connection(("127.0.0.1", relay.ports[0]), timeout=10)
            c.sendall(b"last")
            c.shutdown(socket.SHUT_WR)
            assert _recv_exactly(c, 5) == b"last"      # echoed, then EOF: the echo server saw the close
            c.close()
    finally:
        srv.close()
        t.join(5)
    assert not t.is_alive()


def test_negative_delay_is_refused():
    with pytest.raises(ValueError):
        DelayRelay([("127.0.0.1", 1)], -1.0)


def test_measured_one_way_hold_is_at_least_the_delay():
    held = measure_one_way_ms(DELAY_MS, rounds=3)
    assert min(held) >= DELAY_MS


def test_scale_real_row_through_the_relay_holds_three_one_way_delays(capsys):
    """``scale --real --delay-ms 20`` at N=4: a commit needs pre-prepare, prepare and commit to cross the
    relay one after the other, so it takes at least 3 x 20 ms (on plain loopback a few ms)."""
    from ledgerlink.ledger import scale
    assert scale.main(["--sizes", "4", "--blocks", "1", "--network", "wan", "--real", "--delay-ms", "20",
                       "--real-sizes", "4", "--real-txs", "5"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("real-20ms ")]
    assert len(rows) == 1, out
    cells = dict(zip(scale.COLUMNS, rows[0]))
    assert cells["N"] == "4"
    assert float(cells["lat_p50_ms"]) >= 3 * 20, out
    assert float(cells["KB/blk"]) > 0
    assert "relay 20 ms: one-way hold measured" in out


def test_relay_reports_its_cpu_time(echo):
    with DelayRelay([echo], 0.0) as relay:
        c0 = relay.cpu_seconds()
        with socket.create_connection(("127.0.0.1", relay.ports[0]), timeout=10) as c:
            c.sendall(b"x" * 100000)
            assert len(_recv_exactly(c, 100000)) == 100000
        assert relay.cpu_seconds() > c0
