"""What a ledgerlink service serves over HTTP: its Prometheus metrics, and a WSGI server with port limits.

Metrics. A ``Registry`` is one component's own ``prometheus_client.CollectorRegistry`` (several ledger nodes
and gateways may run in one process; the library's global default registry is never used). Counters and
histograms are prometheus_client's ``Counter`` and ``Histogram`` behind a thin wrapper that bounds the label
sets of a family (at most ``MAX_LABEL_SETS``; further ones are counted under ``OVERFLOW``), leaves out the
``_created`` series (the text format 0.0.4 has none) and writes histogram bounds as Go does (``le="1"``,
not ``le="1.0"``). Gauges, and counters kept elsewhere, are read by a function when scraped (a failing
function leaves its family empty, the rest of the scrape stands). ``Registry.exposition()`` is
``prometheus_client.generate_latest``: the text format 0.0.4.

Serving. ``WsgiServer`` runs a WSGI app on waitress (one thread reads and writes every connection, a few
worker threads run the app) on a thread of its own. Protects against clients that hold the port: at most
``max_connections`` connections are open (a new one beyond them closes the oldest one not being answered);
a connection is closed after ``idle_s`` without a byte either way and, unless a request of it is being
answered, ``connection_s`` after it opened; a request's line and headers are at most ``MAX_REQUEST_HEAD``
bytes (431 beyond) and it has no body (413). Incomplete requests wait in waitress's buffers, not in a
thread each. ``handler_app`` answers GET and HEAD from a ``(path, query)`` handler, each answer with
``SECURITY_HEADERS``; no path of a request reaches the file system. Tested in tests/test_service_http.py,
tests/ledger/test_node_metrics.py and, under 1,000 partial requests, tests/chaos/test_port_attack.py.
"""

from __future__ import annotations

import http
import logging
import math
import re
import threading
from typing import Any, Callable, Iterable

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger("ledgerlink.service_http")

# --- metrics --------------------------------------------------------------------------------------------

CONTENT_TYPE = prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4
NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_LABEL_SETS = 256          # per family; further label sets are counted under the overflow value
OVERFLOW = "other"


def format_value(v: float) -> str:
    """A number as Go writes it in the exposition format (``+Inf``, ``-Inf``, ``NaN``, integers plain)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _checked_names(name: str, labelnames: Iterable[str]) -> tuple[str, ...]:
    """``labelnames`` as a tuple; ValueError unless the names fit the text format 0.0.4."""
    if not NAME_RE.match(name):
        raise ValueError("bad metric name %r" % name)
    names = tuple(labelnames)
    for ln in names:
        if not LABEL_RE.match(ln) or ln.startswith("__") or ln == "le":
            raise ValueError("bad label name %r" % ln)
    return names


def _count(v: float) -> float:
    return int(v) if v.is_integer() else v


class Counter:
    """A count per label set that only goes up (a prometheus_client ``Counter``, its name ending in
    ``_total``)."""

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()) -> None:
        self.labelnames = _checked_names(name, labelnames)
        if not name.endswith("_total"):
            raise ValueError("a counter's name ends in _total: %r" % name)
        self.name = name
        self._family = prometheus_client.Counter(name, help, self.labelnames, registry=None)
        self._children: dict[tuple[str, ...], Any] = {} if self.labelnames else {(): self._family}
        self._lock = threading.Lock()

    def _child(self, labels: tuple) -> Any:
        child = self._children.get(labels)
        if child is not None:
            return child
        if len(labels) != len(self.labelnames):
            raise ValueError("%s takes labels %s" % (self.name, self.labelnames))
        key = tuple(str(v) for v in labels)
        with self._lock:
            if key not in self._children and len(self._children) >= MAX_LABEL_SETS:
                key = (OVERFLOW,) * len(key)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._family.labels(*key)
        return child

    def inc(self, amount: float = 1, labels: tuple = ()) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._child(labels).inc(amount)

    def values(self) -> dict[tuple[str, ...], float]:
        """Each label set's count."""
        return {tuple(s.labels[n] for n in self.labelnames): _count(s.value)
                for s in self._family.collect()[0].samples if s.name == self.name}

    def value(self, labels: tuple = ()) -> float:
        if len(labels) != len(self.labelnames):
            raise ValueError("%s takes labels %s" % (self.name, self.labelnames))
        return self.values().get(tuple(str(v) for v in labels), 0)

    def describe(self) -> list[Metric]:
        return self._family.describe()

    def collect(self) -> list[Metric]:
        metric = self._family.collect()[0]
        metric.samples = [s for s in metric.samples if s.name == self.name]
        return [metric]


class Histogram:
    """Observations counted in cumulative buckets with upper bounds ``buckets`` (plus +Inf): a
    prometheus_client ``Histogram`` without labels."""

    def __init__(self, name: str, help: str, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        _checked_names(name, ())
        self.name = name
        self.buckets = tuple(sorted(float(b) for b in buckets))
        if not self.buckets or any(math.isinf(b) or math.isnan(b) for b in self.buckets):
            raise ValueError("buckets must be finite numbers")
        self._family = prometheus_client.Histogram(name, help, buckets=self.buckets, registry=None)
        self.observe: Callable[[float], None] = self._family.observe

    @property
    def count(self) -> int:
        return next(int(s.value) for s in self._family.collect()[0].samples if s.name == self.name + "_count")

    def describe(self) -> list[Metric]:
        return self._family.describe()

    def collect(self) -> list[Metric]:
        metric = self._family.collect()[0]
        bucket = self.name + "_bucket"
        metric.samples = [s._replace(labels={"le": format_value(float(s.labels["le"]))}) if s.name == bucket else s
                          for s in metric.samples if s.name != self.name + "_created"]
        return [metric]


class Scraped:
    """A gauge, or a counter kept elsewhere (``counter``), whose value ``func`` returns when scraped: a number,
    or a dict label values -> number."""

    def __init__(self, name: str, help: str, labelnames: Iterable[str], func: Callable[[], Any],
                 counter: bool = False) -> None:
        self.labelnames = _checked_names(name, labelnames)
        if counter and not name.endswith("_total"):
            raise ValueError("a counter's name ends in _total: %r" % name)
        self.name = name
        self.help = help
        self.func = func
        self.kind = CounterMetricFamily if counter else GaugeMetricFamily

    def describe(self) -> list[Metric]:
        return [self.kind(self.name, self.help, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        family = self.kind(self.name, self.help, labels=self.labelnames)
        try:
            got = self.func()
            items = sorted(got.items()) if isinstance(got, dict) else [((), got)]
            for k, v in items:
                family.add_metric([str(x) for x in k], v)
        except Exception as exc:  # noqa: BLE001 - a failing probe must not break the whole scrape
            log.warning("metric %s failed: %s", self.name, exc)
            family.samples = []
        return [family]


class Registry:
    """The metric families of one component, written in the order they were made."""

    def __init__(self) -> None:
        self.collectors = prometheus_client.CollectorRegistry(auto_describe=True)

    def register(self, family: Any) -> Any:
        self.collectors.register(family)
        return family

    def counter(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Counter:
        return self.register(Counter(name, help, labelnames))

    def counter_func(self, name: str, help: str, labelnames: Iterable[str] = (), *,
                     func: Callable[[], Any]) -> Scraped:
        return self.register(Scraped(name, help, labelnames, func, counter=True))

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = (), *, func: Callable[[], Any]) -> Scraped:
        return self.register(Scraped(name, help, labelnames, func))

    def histogram(self, name: str, help: str, buckets: Iterable[float] = LATENCY_BUCKETS) -> Histogram:
        return self.register(Histogram(name, help, buckets))

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.collectors)

    def render(self) -> str:
        return self.exposition().decode()


# --- HTTP -----------------------------------------------------------------------------------------------

Response = tuple[int, str, bytes]                     # status, content type, body
Handler = Callable[[str, str], "Response | None"]      # (path, query) -> answer, None: 404
WsgiApp = Callable[[dict, Callable], Iterable[bytes]]

TEXT = "text/plain; charset=utf-8"
SECURITY_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                                " object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
]
MAX_CONNECTIONS = 64              # connections open at once
IDLE_S = 5                        # longest wait for the next byte of a request (or for the client to read)
CONNECTION_S = 10.0               # longest life of a connection when none of its requests is being answered
MAX_REQUEST_HEAD = 65536          # bytes of a request line and its headers
WORKER_THREADS = 4
LISTEN_BACKLOG = 128              # a burst of connections is taken, then bounded here


def answer(environ: dict, start_response: Callable, res: Response,
           headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    """Start ``res`` with the security headers (and ``headers``); its body unless the request is HEAD."""
    status, ctype, body = res
    start_response("%d %s" % (status, http.HTTPStatus(status).phrase),
                   [("Content-Type", ctype), ("Content-Length", str(len(body)))] + SECURITY_HEADERS + list(headers))
    return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]


def handler_app(handler: Handler) -> WsgiApp:
    """A WSGI app answering GET and HEAD by ``handler(path, query)`` (an exception answers 500)."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return answer(environ, start_response, (501, TEXT, b"only GET and HEAD\n"), [("Allow", "GET, HEAD")])
        path = environ.get("PATH_INFO", "")
        try:
            res = handler(path, environ.get("QUERY_STRING", ""))
        except Exception:  # noqa: BLE001 - answer 500, keep serving
            log.exception("HTTP handler failed for %s", path)
            res = (500, TEXT, b"internal error\n")
        return answer(environ, start_response, res if res is not None else (404, TEXT, b"not found\n"))

    return app


def metrics_handler(registry: Registry) -> Handler:
    """A handler answering ``/metrics`` from ``registry``."""

    def handle(path: str, query: str) -> Response | None:
        if path == "/metrics":
            return 200, CONTENT_TYPE, registry.exposition()
        return None

    return handle


class _BoundedServer(TcpWSGIServer):
    """waitress's server, which closes the oldest connection for a new one beyond ``max_connections`` and
    every connection ``connection_s`` after it opened unless a request of it is being answered."""

    max_connections = MAX_CONNECTIONS
    connection_s = CONNECTION_S
    evicted = 0                   # closed to make room for a newer one
    expired = 0                   # closed after connection_s

    def handle_accept(self) -> None:
        if len(self.active_channels) >= self.max_connections:
            channels = list(self.active_channels.values())
            oldest = next((ch for ch in channels if not ch.requests), channels[0])
            self.evicted += 1
            oldest.handle_close()
        super().handle_accept()

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        cutoff = now - self.connection_s
        for ch in list(self.active_channels.values()):
            if ch.creation_time < cutoff and not ch.requests and not ch.will_close:
                ch.will_close = True
                self.expired += 1


class WsgiServer:
    """``app`` served on ``host:port`` (0: any free port) with the limits of the module docstring, on a thread
    from ``start()`` to ``stop()``."""

    def __init__(self, host: str, port: int, app: WsgiApp, max_connections: int = MAX_CONNECTIONS,
                 idle_s: int = IDLE_S, connection_s: float = CONNECTION_S, threads: int = WORKER_THREADS) -> None:
        adj = Adjustments(
            host=host, port=port, threads=threads, backlog=LISTEN_BACKLOG,
            connection_limit=max_connections + 8,          # never reached: handle_accept makes room first
            channel_timeout=idle_s, cleanup_interval=1, max_request_header_size=MAX_REQUEST_HEAD,
            max_request_body_size=0, asyncore_use_poll=True, ident="ledgerlink", expose_tracebacks=False,
            log_socket_errors=False)
        self._map: dict = {}
        dispatcher = ThreadedTaskDispatcher()
        self.server = _BoundedServer(app, map=self._map, dispatcher=dispatcher, adj=adj)
        dispatcher.set_thread_count(threads)          # once the port is bound: no threads left behind otherwise
        self.server.max_connections = max_connections
        self.server.connection_s = connection_s
        self.host = host
        self.port = int(self.server.effective_port)
        self._stopping = threading.Event()
        self._closing = threading.Lock()            # the trigger is pulled only while it is open
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ll-http", daemon=True)

    def start(self) -> "WsgiServer":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while self._map and not self._stopping.is_set():
                wasyncore.loop(timeout=1.0, map=self._map, use_poll=True, count=1)
        finally:
            self._close()

    def _close(self) -> None:
        with self._closing:
            if self._closed:
                return
            self._closed = True
            for ch in list(self.server.active_channels.values()):
                ch.handle_close()
            self.server.close()
        self.server.task_dispatcher.shutdown(timeout=5)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            with self._closing:
                if not self._closed:            # else the loop saw the stop on its own and closed the trigger
                    self.server.pull_trigger()
            self._thread.join(10)
        elif self._thread.ident is None:
            self._close()

    @property
    def url(self) -> str:
        return "http://%s:%d/" % (self.host, self.port)
