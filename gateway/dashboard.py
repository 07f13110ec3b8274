"""The gateway's web dashboard and ``/metrics``, over the standard library's ``http.server``.

Paths: ``/`` (the page, ``static/index.html``), ``/static/app.js``, ``/static/style.css``,
``/api/state`` (JSON of ``GatewayMetrics.state``), ``/api/registrations`` (registration requests held
for an admin, each with the device's signed request in hex: ``ledgerlink admin pending`` reads it and
checks every proof of possession itself), ``/metrics`` (Prometheus text format). The page
fetches ``/api/state`` every 1.5 s and renders devices and their state (online, offline after
``offline_after_s`` without a frame, banned, unregistered), recent verified messages, refusals with
their reasons, the verified ledger height and validators, and receipts per second. A thread polls the
ledger's latest certified header every ``poll_s`` and keeps it only if it verifies against the
gateway's trusted validator set.

Gateway config (``ledgerlink.gateway.main``)::

    "http": {"host": "127.0.0.1", "port": 8080, "offline_after_s": 30, "poll_s": 2, "token_file": "dashboard.token"}

(off when ``http`` is absent; port 0 takes a free port). The gateway logs
``dashboard on http://HOST:PORT/`` once it listens. With ``token_file`` (``ledgerlink up`` makes one,
mode 0600) every path answers 401 unless the request logs in: HTTP Basic with any user name and the
token as password (a browser asks for it), or ``Authorization: Bearer TOKEN`` (``ledgerlink admin``,
a Prometheus scrape's ``authorization`` credentials).

Protects against script injection from device-provided text (measurements, device names, ban
reasons, topics and details in refusals): the page builds the DOM with ``textContent`` only, never
markup from data; ``/api/state`` escapes ``<``, ``>`` and ``&`` inside JSON strings; every answer
carries a Content-Security-Policy without inline scripts and ``X-Content-Type-Options: nosniff``.
Only the listed files are served (no path from the request reaches the file system). The dashboard
is read-only; without a token it has no login: bind it to loopback or a management network. Tested in
tests/gateway/test_dashboard.py, including a page rendered by headless Chromium with hostile device text.

Protects against clients that hold the port (``DashboardServer``): at most ``HTTP_MAX_CONNECTIONS``
connections are served at once (a new one beyond them closes the oldest), each read waits at most
``HTTP_READ_S``, and a connection lives at most ``HTTP_CONNECTION_S`` (request and answer; one request per
connection), so slow or incomplete requests hold a bounded number of threads and line buffers (at most
64 KiB each, ``http.server``'s limit) for a bounded time. Tested in tests/chaos/test_port_attack.py.
"""

from __future__ import annotations

import base64
import hmac
import http.server
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ledgerlink.gateway.metrics import GatewayMetrics
from ledgerlink.ledger.metrics import CONTENT_TYPE, Handler, HttpServer, Response, _RequestHandler

log = logging.getLogger("ledgerlink.gateway.dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}


MAX_LISTED = 1000                      # registration requests listed by /api/registrations
HTTP_MAX_CONNECTIONS = 64              # connections served at once
HTTP_READ_S = 5.0                      # longest wait for the next bytes of a request
HTTP_CONNECTION_S = 10.0               # longest life of a connection
REAP_S = 0.5                           # how often connections are checked against HTTP_CONNECTION_S


class _TimedHandler(_RequestHandler):
    timeout = HTTP_READ_S

    def _answer(self, body: bool) -> None:
        token = getattr(self.server, "token", None)
        if token is not None and not authorized(self.headers.get("Authorization", ""), token):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="ledgerlink gateway", charset="UTF-8"')
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", "13")
            self.end_headers()
            if body:
                self.wfile.write(b"login needed\n")
            return
        super()._answer(body)


def authorized(header: str, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token``: ``Bearer TOKEN`` or HTTP Basic with any user
    name and the token as password (what a browser's login prompt sends); compared in constant time."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


class _BoundedHTTPServer(http.server.ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them, each closed after ``connection_s``."""

    daemon_threads = True
    request_queue_size = 128               # listen backlog: a burst of connections is taken, then bounded here

    def __init__(self, address: tuple[str, int], max_connections: int, connection_s: float) -> None:
        self.max_connections = max_connections
        self.connection_s = connection_s
        self.open: dict[socket.socket, float] = {}         # connection -> when accepted, oldest first
        self.lock = threading.Lock()
        self.evicted = 0                                    # closed to make room for a newer one
        self.expired = 0                                    # closed after connection_s
        self.closed = threading.Event()
        super().__init__(address, _TimedHandler)
        threading.Thread(target=self._reap, name="ll-http-reaper", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            if len(self.open) >= self.max_connections:
                oldest = next(iter(self.open))
                del self.open[oldest]
                self.evicted += 1
                _cut(oldest)
            self.open[request] = time.monotonic()
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.open.pop(request, None)
        super().shutdown_request(request)

    def _reap(self) -> None:
        while not self.closed.wait(REAP_S):
            limit = time.monotonic() - self.connection_s
            with self.lock:
                old = [conn for conn, since in self.open.items() if since < limit]
                for conn in old:
                    del self.open[conn]
            self.expired += len(old)
            for conn in old:
                _cut(conn)

    def server_close(self) -> None:
        self.closed.set()
        super().server_close()


def _cut(conn: socket.socket) -> None:
    """End a connection another thread may be reading (its read returns at once; that thread closes it)."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class DashboardServer(HttpServer):
    """``HttpServer`` bounded as the module docstring says."""

    def __init__(self, host: str, port: int, handler: Handler, max_connections: int = HTTP_MAX_CONNECTIONS,
                 connection_s: float = HTTP_CONNECTION_S, token: str | None = None) -> None:
        self.httpd = _BoundedHTTPServer((host, port), max_connections, connection_s)
        self.httpd.handler = handler  # type: ignore[attr-defined]
        self.httpd.token = token  # type: ignore[attr-defined]
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ll-http", daemon=True)


def state_json(state: dict) -> bytes:
    """JSON with ``<``, ``>`` and ``&`` escaped, so no string can close or open markup if misread as HTML."""
    text = json.dumps(state, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


class Dashboard:
    """Serves the dashboard of ``metrics``; ``ledger`` (a ``LedgerClient``) is polled for the latest header."""

    def __init__(self, metrics: GatewayMetrics, ledger: Any = None, poll_s: float = 2.0,
                 static_dir: Path = STATIC_DIR, registrations: Callable[[], list] | None = None,
                 token: str | None = None) -> None:
        self.metrics = metrics
        self.token = token
        self.registrations = registrations
        self.ledger = ledger
        self.poll_s = poll_s
        self.files = {path: ((static_dir / name).read_bytes(), ctype) for path, (name, ctype) in FILES.items()}
        self.server: DashboardServer | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def handle(self, path: str, query: str) -> Response | None:
        if path in self.files:
            body, ctype = self.files[path]
            return 200, ctype, body
        if path == "/api/state":
            return 200, "application/json; charset=utf-8", state_json(self.metrics.state())
        if path == "/metrics":
            return 200, CONTENT_TYPE, self.metrics.registry.render().encode()
        if path == "/api/registrations" and self.registrations is not None:
            held = [{"device": r.device.hex(), "role": r.role, "attributes": r.attributes, "time_ms": r.time_ms,
                     "held_ms": r.held_ms, "request": r.request.hex()} for r in self.registrations()]
            return 200, "application/json; charset=utf-8", state_json({"registrations": held})
        return None

    def _poll(self) -> None:
        while True:
            self.metrics.poll_ledger(self.ledger)
            if self._stop.wait(self.poll_s):
                return

    def start(self, host: str = "127.0.0.1", port: int = 0) -> "Dashboard":
        self.server = DashboardServer(host, port, self.handle, token=self.token).start()
        if self.ledger is not None:
            self._poller = threading.Thread(target=self._poll, name="ll-gw-dashboard-poll", daemon=True)
            self._poller.start()
        log.info("dashboard on %s", self.url)
        return self

    @property
    def url(self) -> str:
        if self.server is None:
            raise RuntimeError("dashboard not started")
        return self.server.url

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.stop()
        if self._poller is not None:
            self._poller.join(timeout=10)


def start_for(gateway: Any, cfg: dict[str, Any]) -> Dashboard | None:
    """Instrument an ``MqttGateway`` and start its dashboard from the ``http`` section of ``cfg`` (None: off)."""
    http = cfg.get("http")
    if http is None or http is False:
        return None
    http = {} if http is True else http
    metrics = GatewayMetrics(gateway.service.core, float(http.get("offline_after_s", 30))).instrument(gateway)
    token = None
    if http.get("token_file"):
        path = Path(http["token_file"])
        token = (path if path.is_absolute() else Path(cfg["_dir"]) / path).read_text().strip()
    return Dashboard(metrics, gateway.ledger, float(http.get("poll_s", 2)),
                     registrations=lambda: gateway.service.store.registrations(MAX_LISTED), token=token).start(
        str(http.get("host", "127.0.0.1")), int(http.get("port", 0)))
