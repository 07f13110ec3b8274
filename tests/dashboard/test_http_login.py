"""The dashboard's login on its WSGI server: without the token every request is answered 401 before any
path is looked at (pages, API, metrics, static files, unknown paths, any method); with it (Bearer, or Basic
with any user name) the handler answers. Loopback, no gateway."""

import base64
import socket

import pytest

from ledgerlink.gateway.dashboard import DashboardServer

TOKEN = "t0ken-" + "x" * 40
PATHS = ("/", "/metrics", "/api/state", "/static/app.js", "/no/such/path", "/../etc/passwd")


def _status(port: int, method: str, path: str, auth: str | None = None) -> int:
    head = "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n" % (
        method, path, "Authorization: %s\r\n" % auth if auth else "")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return int(out.split(b"\r\n", 1)[0].split()[1])


@pytest.fixture
def server():
    seen = []

    def handle(path: str, query: str):
        seen.append(path)
        return (200, "text/plain; charset=utf-8", b"ok\n") if path == "/" else None

    srv = DashboardServer("127.0.0.1", 0, handle, token=TOKEN).start()
    try:
        yield srv, seen
    finally:
        srv.stop()


def test_every_path_and_method_needs_the_token(server):
    srv, seen = server
    wrong = ("Bearer " + TOKEN[:-1] + "y", "Basic " + base64.b64encode(b"admin:wrong").decode(), "Token " + TOKEN,
             "Basic !!!")
    for path in PATHS:
        for method in ("GET", "HEAD", "POST"):
            assert _status(srv.port, method, path) == 401, (method, path)
        for auth in wrong:
            assert _status(srv.port, "GET", path, auth) == 401, (path, auth)
    assert seen == []                                      # the handler never ran


def test_the_token_opens_every_path(server):
    srv, seen = server
    basic = "Basic " + base64.b64encode(("anyone:" + TOKEN).encode()).decode()
    assert _status(srv.port, "GET", "/", "Bearer " + TOKEN) == 200
    assert _status(srv.port, "HEAD", "/", basic) == 200
    assert _status(srv.port, "GET", "/no/such/path", basic) == 404
    assert _status(srv.port, "POST", "/", basic) == 501
    assert seen == ["/", "/", "/no/such/path"]
