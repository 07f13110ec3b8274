"""The port limits of ``ledgerlink.service_http.WsgiServer`` (what the dashboard and a node's ``/metrics`` run
on): partial and idle connections closed, the oldest connection closed for a new one beyond the cap, a
connection's life bounded, request heads bounded, no bodies, GET and HEAD only. Loopback, a few seconds."""

import socket
import time
import urllib.error
import urllib.request

import pytest

from ledgerlink import service_http as sh

OK = (200, "text/plain; charset=utf-8", b"ok\n")


def _serve(**limits) -> sh.WsgiServer:
    def handle(path: str, query: str):
        if path == "/boom":
            raise RuntimeError("handler bug")
        return OK if path == "/" else None

    return sh.WsgiServer("127.0.0.1", 0, sh.handler_app(handle), **limits).start()


def _partial(srv: sh.WsgiServer, head: bytes = b"GET / HTTP/1.1\r\nX-Fill: aaaa") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(head)
    return s


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``s`` within ``seconds`` (reading whatever it answered first)."""
    deadline = time.monotonic() + seconds
    while True:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def _raw(srv: sh.WsgiServer, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def _status(answer: bytes) -> int:
    return int(answer.split(b"\r\n", 1)[0].split()[1])


def _get(srv: sh.WsgiServer, path: str = "") -> int:
    try:
        with urllib.request.urlopen(srv.url + path, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_partial_request_closed_after_idle_time_others_served():
    srv = _serve(idle_s=1, connection_s=60)
    try:
        s = _partial(srv)
        assert _get(srv) == 200
        assert _closed_within(s, 8)
        s.close()
    finally:
        srv.stop()


def test_oldest_connection_closed_for_a_new_one_beyond_the_cap():
    srv = _serve(max_connections=4, idle_s=60, connection_s=60)
    try:
        held = [_partial(srv) for _ in range(4)]
        time.sleep(0.5)                                    # all four accepted
        assert _get(srv) == 200                            # a fifth connection is served ...
        assert _closed_within(held[0], 5)                  # ... in place of the oldest
        assert not any(_closed_within(s, 0.3) for s in held[2:])
        assert srv.server.evicted >= 1
        for s in held:
            s.close()
    finally:
        srv.stop()


def test_connection_life_bounded_against_a_slow_drip():
    srv = _serve(idle_s=5, connection_s=2)
    try:
        s = _partial(srv)
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 12:
            try:
                s.sendall(b"a")                            # a byte every 0.2 s: never idle
            except OSError:
                closed = True
                break
            closed = _closed_within(s, 0.2)
        assert closed and time.monotonic() - started < 12
        s.close()
    finally:
        srv.stop()


def test_request_head_bounded_and_no_body():
    srv = _serve()
    try:
        start = b"GET / HTTP/1.1\r\nHost: x\r\nX-Fill: "
        assert _status(_raw(srv, start + b"a" * (sh.MAX_REQUEST_HEAD - len(start)))) == 431
        body = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789"
        assert _status(_raw(srv, body)) == 413
        assert _get(srv) == 200
    finally:
        srv.stop()


def test_get_and_head_only_with_security_headers_and_500_on_a_bug():
    srv = _serve()
    try:
        head = _raw(srv, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _status(head) == 200 and b"Content-Length: 3\r\n" in head and head.endswith(b"\r\n\r\n")
        assert b"X-Content-Type-Options: nosniff" in head and b"Content-Security-Policy: default-src 'self'" in head
        assert b"Server: ledgerlink" in head
        post = _raw(srv, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        assert _status(post) == 501 and b"Allow: GET, HEAD" in post
        assert _get(srv, "boom") == 500 and _get(srv, "../etc/passwd") == 404 and _get(srv) == 200
    finally:
        srv.stop()


def test_stop_closes_the_port_and_held_connections():
    srv = _serve()
    s = _partial(srv)
    srv.stop()
    assert _closed_within(s, 5)
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
