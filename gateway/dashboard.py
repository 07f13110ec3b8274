"""The gateway's web dashboard and ``/metrics``, a WSGI app served by ``ledgerlink.service_http`` (waitress).

Pages (rendered on the server with their data, ``ledgerlink.gateway.pages``; the scripts keep them live
and draw the plots): ``/`` the overview (devices and their state: online, offline after
``offline_after_s`` without a frame, banned, unregistered; refusals with their reasons; recent verified
messages; the verified ledger height and validators; plots of accepted, refused and receipts per
second, ledger height and commit latency over the last hour), ``/device?id=HEX`` a device's page (state,
public key and key version from its proven ledger record, sessions, its readings plotted and listed,
its last refusals), ``/proof?device=HEX&seq=N`` the proof explorer (the checked chain of a stored
reading's receipt, ``ledgerlink.gateway.explorer``; ``&receipt=HEX`` checks a receipt given by the user),
``/trace?lot=LOT`` a material lot's chain, every step proven (``ledgerlink.gateway.trace_page``).

API: ``/api/state`` (JSON of ``GatewayMetrics.state``; the overview fetches it every 1.5 s),
``/api/history`` (the site series, ``ledgerlink.gateway.history``), ``/api/readings?last=N`` (the newest
N readings of every device with a series), ``/api/device?id=HEX`` (a device's record, readings and
refusals), ``/api/proof?device=HEX&seq=N[&receipt=HEX]`` (the checked chain as JSON),
``/api/receipt?device=HEX&seq=N`` and ``/api/frame?device=HEX&seq=N`` (the receipt and the frame as
CBOR: ``ledgerlink admin verify-receipt RECEIPT --frame FRAME`` checks them offline),
``/api/registrations`` (registration requests held for an admin, each with the device's signed request
in hex: ``ledgerlink admin pending`` reads it and checks every proof of possession itself), ``/metrics``
(Prometheus text format). A thread polls the ledger's latest certified header every ``poll_s`` and keeps
it only if it verifies against the gateway's trusted validator set; another samples the site series
every ``history.SAMPLE_S``.

Gateway config (``ledgerlink.gateway.main``)::

    "http": {"host": "127.0.0.1", "port": 8080, "offline_after_s": 30, "poll_s": 2, "token_file": "dashboard.token"}

(off when ``http`` is absent; port 0 takes a free port). The gateway logs
``dashboard on http://HOST:PORT/`` once it listens. With ``token_file`` (``ledgerlink up`` makes one,
mode 0600) every path answers 401 unless the request logs in: HTTP Basic with any user name and the
token as password (a browser asks for it), or ``Authorization: Bearer TOKEN`` (``ledgerlink admin``,
a Prometheus scrape's ``authorization`` credentials).

Protects against script injection from device-provided text (measurements, device names, ban
reasons, topics and details in refusals): the pages escape every value on the server and the scripts
build the DOM with ``textContent`` only, never markup from data; the JSON answers escape ``<``, ``>`` and
``&`` inside strings; every answer carries a Content-Security-Policy without inline scripts and
``X-Content-Type-Options: nosniff``. Only the listed files are served (no path from the request reaches
the file system); queries are parsed with bounds (at most 8 fields, a receipt of at most
``explorer.MAX_RECEIPT_BYTES``) and a bad one answers 400 with the reason. The dashboard is read-only;
without a token it has no login: bind it to loopback or a management network. Tested in
tests/gateway/test_dashboard.py and tests/dashboard/ (pages rendered by headless Chromium with hostile
device text; the plots against the API; the explorer with tampered receipts).

Protects against clients that hold the port (``DashboardServer``): the limits of
``ledgerlink.service_http.WsgiServer`` (at most ``MAX_CONNECTIONS`` connections, a new one beyond them
closing the oldest; ``IDLE_S`` without a byte and ``CONNECTION_S`` in all close a connection; a request
head of at most ``MAX_REQUEST_HEAD`` bytes and no body), so slow or incomplete requests hold a bounded
number of buffers for a bounded time and no thread. Tested in tests/test_service_http.py and
tests/chaos/test_port_attack.py.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Callable

from ledgerlink.core import cbor
from ledgerlink.gateway import explorer, pages
from ledgerlink.gateway.history import READING_POINTS, SAMPLE_S, History
from ledgerlink.gateway.metrics import GatewayMetrics, jsonable
from ledgerlink.service_http import (CONNECTION_S, CONTENT_TYPE, MAX_CONNECTIONS, TEXT, Handler, Response,
                                     WsgiApp, WsgiServer, answer, handler_app)

log = logging.getLogger("ledgerlink.gateway.dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
FILES = {
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/plot.js": ("plot.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}


MAX_LISTED = 1000                      # registration requests listed by /api/registrations
SPARK_POINTS = 60                      # readings per device in /api/readings by default
HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"
CBOR = "application/cbor"
DEVICE_HEX = 32                        # hex digits of a device id


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


def dashboard_app(handler: Handler, token: str | None = None) -> WsgiApp:
    """``handler`` as a WSGI app; with ``token``, every request without it is answered 401 before any path
    is looked at."""
    app = handler_app(handler)
    if token is None:
        return app

    def logged_in(environ: dict, start_response: Callable) -> list[bytes]:
        if not authorized(environ.get("HTTP_AUTHORIZATION", ""), token):
            return answer(environ, start_response, (401, TEXT, b"login needed\n"),
                          [("WWW-Authenticate", 'Basic realm="ledgerlink gateway", charset="UTF-8"')])
        return app(environ, start_response)

    return logged_in


class DashboardServer(WsgiServer):
    """The dashboard's ``handler`` served with the port limits of ``ledgerlink.service_http`` and, with
    ``token``, its login."""

    def __init__(self, host: str, port: int, handler: Handler, max_connections: int = MAX_CONNECTIONS,
                 connection_s: float = CONNECTION_S, token: str | None = None) -> None:
        super().__init__(host, port, dashboard_app(handler, token), max_connections=max_connections,
                         connection_s=connection_s)


def state_json(state: dict) -> bytes:
    """JSON with ``<``, ``>`` and ``&`` escaped, so no string can close or open markup if misread as HTML."""
    text = json.dumps(state, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


class BadRequest(ValueError):
    """A query the dashboard cannot answer (answered 400 with the reason)."""


def _query(query: str) -> dict[str, str]:
    try:
        parsed = urllib.parse.parse_qs(query, max_num_fields=8, strict_parsing=False)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return {k: v[0].strip() for k, v in parsed.items() if v}


def _device_arg(q: dict[str, str], name: str = "device") -> bytes:
    text = q.get(name, "").lower()
    if len(text) != DEVICE_HEX:
        raise BadRequest("%s must be a device id of %d hex digits" % (name, DEVICE_HEX))
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise BadRequest("%s must be a device id of %d hex digits" % (name, DEVICE_HEX)) from None


def _seq_arg(q: dict[str, str]) -> int:
    text = q.get("seq", "")
    if not text.isdigit() or len(text) > 19:
        raise BadRequest("seq must be an unsigned integer")
    return int(text)


def _receipt_arg(text: str) -> bytes:
    digits = "".join(text.split())
    try:
        receipt = bytes.fromhex(digits)
    except ValueError:
        raise BadRequest("the receipt must be hex") from None
    if not receipt or len(receipt) > explorer.MAX_RECEIPT_BYTES:
        raise BadRequest("the receipt must be 1..%d bytes" % explorer.MAX_RECEIPT_BYTES)
    return receipt


class Dashboard:
    """Serves the dashboard of ``metrics``; ``ledger`` (a ``LedgerClient``) is polled for the latest header;
    ``store`` (the gateway's ``Store``) answers the device pages and the proof explorer; ``history`` is
    sampled every ``SAMPLE_S`` (and fed readings by ``metrics``)."""

    def __init__(self, metrics: GatewayMetrics, ledger: Any = None, poll_s: float = 2.0,
                 static_dir: Path = STATIC_DIR, registrations: Callable[[], list] | None = None,
                 token: str | None = None, store: Any = None, history: History | None = None) -> None:
        self.metrics = metrics
        self.store = store
        self.history = history if history is not None else History(metrics.wall_ms, metrics.mono)
        metrics.history = self.history
        self.token = token
        self.registrations = registrations
        self.ledger = ledger
        self.poll_s = poll_s
        self.files = {path: ((static_dir / name).read_bytes(), ctype) for path, (name, ctype) in FILES.items()}
        self.server: DashboardServer | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._sampler: threading.Thread | None = None

    def handle(self, path: str, query: str) -> Response | None:
        if path in self.files:
            body, ctype = self.files[path]
            return 200, ctype, body
        try:
            return self._answer(path, _query(query))
        except BadRequest as exc:
            return 400, TEXT, (str(exc) + "\n").encode()

    def _answer(self, path: str, q: dict[str, str]) -> Response | None:
        if path in ("/", "/index.html"):
            return 200, HTML, pages.overview(self.metrics.state())
        if path == "/device":
            return 200, HTML, self.device_page(_device_arg(q, "id"))
        if path == "/proof":
            return 200, HTML, self.proof_page(q)
        if path == "/trace":
            from ledgerlink.gateway.trace_page import trace_page

            return 200, HTML, trace_page(self, q)
        if path == "/versions":
            from ledgerlink.gateway.update_versions import versions_page

            return 200, HTML, versions_page(self, q)
        if path == "/api/history":
            return 200, JSON, state_json(self.history.site_json())
        if path == "/api/readings":
            last = q.get("last", str(SPARK_POINTS))
            if not last.isdigit():
                raise BadRequest("last must be an unsigned integer")
            return 200, JSON, state_json(self.history.readings_json(min(int(last), READING_POINTS)))
        if path == "/api/device":
            return 200, JSON, state_json(self.device_json(_device_arg(q, "id")))
        if path == "/api/proof":
            return 200, JSON, state_json(self.proof_json(q))
        if path in ("/api/receipt", "/api/frame"):
            found = self._stored(_device_arg(q), _seq_arg(q))
            body = found.get("receipt" if path == "/api/receipt" else "frame")
            if body is None:
                return 404, TEXT, b"no anchored receipt for this reading yet\n"
            return 200, CBOR, body
        if path == "/api/state":
            return 200, "application/json; charset=utf-8", state_json(self.metrics.state())
        if path == "/metrics":
            return 200, CONTENT_TYPE, self.metrics.registry.exposition()
        if path == "/api/registrations" and self.registrations is not None:
            held = [{"device": r.device.hex(), "role": r.role, "attributes": r.attributes, "time_ms": r.time_ms,
                     "held_ms": r.held_ms, "request": r.request.hex()} for r in self.registrations()]
            return 200, "application/json; charset=utf-8", state_json({"registrations": held})
        return None

    # --- device pages and the proof explorer ------------------------------------------------------------

    def _site(self) -> tuple[str, str]:
        core = self.metrics.core
        return core.site, core.gateway_name

    def _device_facts(self, dev: bytes) -> tuple[dict | None, dict | None, int | None, list[dict]]:
        """(its row of ``/api/state``, its proven record, the height of that proof, its sessions)."""
        core = self.metrics.core
        hex_id = dev.hex()
        info = next((d for d in self.metrics.state()["devices"] if d["id"] == hex_id), None)
        entry = core.registry.get(dev)
        record = entry.record if entry is not None else None
        sessions = [{"id": s.session_id.hex(), "valid_until_s": s.valid_until_s}
                    for s in list(core.sessions.values()) if s.device_id == dev]
        return info, record, entry.height if entry is not None else None, sessions

    def device_page(self, dev: bytes) -> bytes:
        info, record, height, sessions = self._device_facts(dev)
        site, gateway = self._site()
        return pages.device_page(site, gateway, dev.hex(), info, record, height, sessions,
                                 self.history.device_json(dev))

    def device_json(self, dev: bytes) -> dict:
        info, record, height, sessions = self._device_facts(dev)
        return {"device": info, "record": jsonable(record) if record is not None else None,
                "record_height": height, "sessions": sessions, "history": self.history.device_json(dev)}

    def _stored(self, dev: bytes, seq: int) -> dict:
        if self.store is None:
            raise BadRequest("this dashboard has no store to look readings up in")
        return explorer.reading_proof(self.store, self.metrics.core.site, dev, seq)

    def _explain(self, receipt: bytes, frame: bytes | None) -> dict:
        core = self.metrics.core
        return explorer.explain(receipt, frame, core.chain_id, core.validator_keys, self._statement, core.group_key)

    def _statement(self, frame_hash: bytes, statement_hash: bytes) -> dict:
        """Step 6 of the explorer, against the store and the device's registered key (its proven record)."""
        core = self.metrics.core
        stored = self.store.message_by_hash(statement_hash) if self.store is not None else None
        entry = core.registry.get(stored.device) if stored is not None else None
        key = entry.record.get(2) if entry is not None and entry.record is not None else None
        if self.store is None:
            return explorer.statement_pending(frame_hash, statement_hash, None)
        return explorer.statement_step(self.store, core.site, core.chain_id, core.validator_keys, key, frame_hash,
                                       statement_hash, core.group_key)

    def _given_frame(self, receipt: bytes) -> bytes | None:
        """The stored frame a receipt names by its frame hash (None when it names none stored)."""
        try:
            r = cbor.loads(receipt, max_depth=12)
            h = r.get(1) if isinstance(r, dict) else None
        except Exception:  # noqa: BLE001 - the explorer reports the receipt as undecodable
            return None
        if not isinstance(h, bytes) or len(h) != 32 or self.store is None:
            return None
        return self.store.blob(h)

    def proof_json(self, q: dict[str, str]) -> dict:
        out: dict[str, Any] = {}
        if "device" in q or "seq" in q:
            found = self._stored(_device_arg(q), _seq_arg(q))
            out["found"] = found["found"]
            out["anchored"] = found["receipt"] is not None
            if found["receipt"] is not None:
                out["stored"] = self._explain(found["receipt"], found["frame"])
        if q.get("receipt"):
            receipt = _receipt_arg(q["receipt"])
            out["given"] = self._explain(receipt, self._given_frame(receipt))
        return out

    def proof_page(self, q: dict[str, str]) -> bytes:
        site, gateway = self._site()
        device, seq = q.get("device", ""), q.get("seq", "")
        found = stored = given = None
        message = ""
        if device or seq:
            try:
                found = self._stored(_device_arg(q), _seq_arg(q))
            except BadRequest as exc:
                message = str(exc)
            if found is not None and not found["found"]:
                message, found = "this gateway stores no reading %s of device %s" % (seq, device), None
            elif found is not None and found["receipt"] is None:
                message = "stored, not anchored yet: its batch waits for a ledger commit (reload in a moment)"
            elif found is not None:
                stored = self._explain(found["receipt"], found["frame"])
        else:
            message = "pick a reading (a device's page lists its readings with links here), or check a receipt below"
        text = q.get("receipt", "")
        if text:
            try:
                receipt = _receipt_arg(text)
                given = self._explain(receipt, self._given_frame(receipt))
            except BadRequest as exc:
                given = {"ok": False, "error": str(exc), "steps": []}
        return pages.proof_page(site, gateway, device, seq, found, stored, given, text, message)

    # --- threads --------------------------------------------------------------------------------------

    def sample(self) -> None:
        """One point of the site series from the metrics' running totals."""
        m = self.metrics
        self.history.sample(sum(m.accepted.values().values()), sum(m.refused.values().values()), m.receipts.value(),
                            m.receipt_latency_s_total, m.receipt_latency.count, m.ledger_height())

    def _sample(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_S):
                return

    def _poll(self) -> None:
        while True:
            self.metrics.poll_ledger(self.ledger)
            if self._stop.wait(self.poll_s):
                return

    def start(self, host: str = "127.0.0.1", port: int = 0) -> "Dashboard":
        self.server = DashboardServer(host, port, self.handle, token=self.token).start()
        self._sampler = threading.Thread(target=self._sample, name="ll-gw-dashboard-history", daemon=True)
        self._sampler.start()
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
        for thread in (self._poller, self._sampler):
            if thread is not None:
                thread.join(timeout=10)


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
                     registrations=lambda: gateway.service.store.registrations(MAX_LISTED), token=token,
                     store=gateway.service.store).start(
        str(http.get("host", "127.0.0.1")), int(http.get("port", 0)))
