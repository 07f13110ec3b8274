"""Prometheus metrics: counters, gauges and histograms, the text exposition format, a small HTTP server,
and the metrics of a ledger node.

``Registry.render()`` writes the Prometheus text exposition format 0.0.4: one ``# HELP`` and one
``# TYPE`` line per family, label values escaped (backslash, double quote, line feed), histograms as
cumulative ``_bucket{le="..."}`` series ending in ``le="+Inf"`` plus ``_sum`` and ``_count``. The
primitives are thread-safe (the gateway updates them from its check thread and renders them on the
HTTP thread). ``HttpServer`` serves GET requests from a handler function on a daemon thread
(``http.server``; nothing outside the standard library).

``NodeMetrics.attach(node)`` observes a running ``ledgerlink.ledger.node.Node``: it wraps the
instance's ``effects`` and ``_submit_all`` so committed transactions, dropped messages (by reason) and the
submit-to-commit latency of transactions submitted at this node are counted; view, height, pool size,
peer state and the port limits that bit (``ledgerlink_node_port_limited_total{port, limit}``, with the
bytes and connections they bound) are read when scraped. A node started without ``--metrics-port`` runs unchanged.

The HTTP server only answers GET and HEAD of known paths, with request lines and headers bounded by
``http.server``; it serves no files named by the request. Tested in tests/ledger/test_node_metrics.py
(format parsed back, a node process scraped over HTTP).
"""

from __future__ import annotations

import http.server
import logging
import math
import re
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from typing import Any, Callable, Iterable

log = logging.getLogger("ledgerlink.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_LABEL_SETS = 256          # per family; further label sets are counted under the overflow value
OVERFLOW = "other"


def format_value(v: float) -> str:
    """A sample value as the exposition format writes it (``+Inf``, ``-Inf``, ``NaN``, integers plain)."""
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


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = list(zip(names, values)) + list(extra)
    if not pairs:
        return ""
    return "{" + ",".join('%s="%s"' % (k, escape_label(str(v))) for k, v in pairs) + "}"


class _Family:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()) -> None:
        if not NAME_RE.match(name):
            raise ValueError("bad metric name %r" % name)
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        for ln in self.labelnames:
            if not LABEL_RE.match(ln) or ln.startswith("__") or ln == "le":
                raise ValueError("bad label name %r" % ln)
        self._lock = threading.Lock()

    def _key(self, labels: tuple) -> tuple[str, ...]:
        if len(labels) != len(self.labelnames):
            raise ValueError("%s takes labels %s" % (self.name, self.labelnames))
        return tuple(str(v) for v in labels)

    def header(self) -> list[str]:
        return ["# HELP %s %s" % (self.name, escape_help(self.help)), "# TYPE %s %s" % (self.name, self.kind)]

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> list[str]:
        return self.header() + self.samples()


class Counter(_Family):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self._values[()] = 0

    def inc(self, amount: float = 1, labels: tuple = ()) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            if key not in self._values and len(self._values) >= MAX_LABEL_SETS:
                key = tuple(OVERFLOW for _ in key)
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, labels: tuple = ()) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0)

    def values(self) -> dict[tuple[str, ...], float]:
        with self._lock:
            return dict(self._values)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return ["%s%s %s" % (self.name, _labels(self.labelnames, k), format_value(v)) for k, v in items]


class Gauge(_Family):
    """A value that goes up and down; ``func`` (returning a number, or a dict label tuple -> number)
    computes it at render time instead."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (),
                 func: Callable[[], Any] | None = None) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._func = func

    def set(self, value: float, labels: tuple = ()) -> None:
        key = self._key(labels)
        with self._lock:
            if key not in self._values and len(self._values) >= MAX_LABEL_SETS:
                return
            self._values[key] = value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def samples(self) -> list[str]:
        if self._func is not None:
            try:
                got = self._func()
            except Exception as exc:  # noqa: BLE001 - a failing probe must not break the whole scrape
                log.warning("gauge %s failed: %s", self.name, exc)
                return []
            items = sorted(got.items()) if isinstance(got, dict) else [((), got)]
        else:
            with self._lock:
                items = sorted(self._values.items())
        return ["%s%s %s" % (self.name, _labels(self.labelnames, tuple(str(x) for x in k)), format_value(v))
                for k, v in items]


class CounterFunc(Gauge):
    """A counter kept elsewhere, read by ``func`` at render time."""

    kind = "counter"


class Histogram(_Family):
    """Observations counted in cumulative buckets with upper bounds ``buckets`` (plus +Inf)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        if not self.buckets or any(math.isinf(b) or math.isnan(b) for b in self.buckets):
            raise ValueError("buckets must be finite numbers")
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0

    def observe(self, v: float) -> None:
        i = bisect_left(self.buckets, v)       # the first bucket with v <= bound (NaN: the first)
        with self._lock:
            self._counts[i] += 1
            self._sum += v

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def samples(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, acc = [], 0
        for b, c in zip(self.buckets + (math.inf,), counts):
            acc += c
            out.append('%s_bucket{le="%s"} %d' % (self.name, format_value(b), acc))
        out.append("%s_sum %s" % (self.name, format_value(total)))
        out.append("%s_count %d" % (self.name, acc))
        return out


class Registry:
    """The metric families of one process, rendered in registration order."""

    def __init__(self) -> None:
        self._families: OrderedDict[str, _Family] = OrderedDict()

    def register(self, family: _Family) -> Any:
        if family.name in self._families:
            raise ValueError("metric %s registered twice" % family.name)
        self._families[family.name] = family
        return family

    def counter(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Counter:
        return self.register(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = (),
              func: Callable[[], Any] | None = None) -> Gauge:
        return self.register(Gauge(name, help, labelnames, func))

    def histogram(self, name: str, help: str, buckets: Iterable[float] = LATENCY_BUCKETS) -> Histogram:
        return self.register(Histogram(name, help, buckets))

    def render(self) -> str:
        lines: list[str] = []
        for fam in self._families.values():
            lines.extend(fam.render())
        return "\n".join(lines) + "\n"


# --- HTTP -------------------------------------------------------------------------------------------

Response = tuple[int, str, bytes]
Handler = Callable[[str, str], Response | None]      # (path, query) -> (status, content type, body) or None


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    server_version = "ledgerlink"
    sys_version = ""

    def _answer(self, body: bool) -> None:
        path, _, query = self.path.partition("?")
        try:
            res = self.server.handler(path, query)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - answer 500, keep serving
            log.exception("HTTP handler failed for %s", path)
            res = (500, "text/plain; charset=utf-8", b"internal error\n")
        if res is None:
            res = (404, "text/plain; charset=utf-8", b"not found\n")
        status, ctype, data = res
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                         " object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s: " + format, self.address_string(), *args)


class HttpServer:
    """GET requests answered by ``handler(path, query)`` on ``host:port`` (0: any free port), on a thread."""

    def __init__(self, host: str, port: int, handler: Handler) -> None:
        self.httpd = http.server.ThreadingHTTPServer((host, port), _RequestHandler)
        self.httpd.daemon_threads = True
        self.httpd.handler = handler  # type: ignore[attr-defined]
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ll-http", daemon=True)

    def start(self) -> "HttpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return "http://%s:%d/" % (self.host, self.port)


def metrics_handler(registry: Registry) -> Handler:
    """A handler answering ``/metrics`` from ``registry``."""

    def handle(path: str, query: str) -> Response | None:
        if path == "/metrics":
            return 200, CONTENT_TYPE, registry.render().encode()
        return None

    return handle


# --- ledger node ------------------------------------------------------------------------------------

def reason_label(reason: str) -> str:
    """A bounded label of a drop reason: the text before any ':' with numbers removed."""
    head = reason.split(":", 1)[0]
    return re.sub(r"\s+", " ", re.sub(r"[0-9]+", "", head)).strip()[:64] or "unknown"


class NodeMetrics:
    """Metrics of one ledger node (see the module docstring)."""

    MAX_TRACKED = 100000

    def __init__(self, node: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.clock = clock
        self.registry = reg = Registry()
        r = lambda: node.replica  # noqa: E731
        reg.gauge("ledgerlink_node_info", "Validator index and chain of this node (value 1).",
                  ("index", "chain_id"), lambda: {(str(node.index), node.config.chain_id): 1})
        reg.gauge("ledgerlink_node_height", "Height of the newest committed block.", func=lambda: r().height)
        reg.gauge("ledgerlink_node_view", "Current PBFT view.", func=lambda: r().view)
        reg.gauge("ledgerlink_node_primary", "Index of the primary of the current view.",
                  func=lambda: node.rconfig.primary(r().view))
        reg.gauge("ledgerlink_node_in_view_change", "1 while a view change is in progress.",
                  func=lambda: 1 if r().in_view_change else 0)
        reg.gauge("ledgerlink_node_pool_transactions", "Transactions waiting in the pool.", func=lambda: len(r().pool))
        reg.gauge("ledgerlink_node_validators", "Number of validators.", func=lambda: node.config.n)
        reg.register(CounterFunc("ledgerlink_node_slow_primary_demands_total",
                                 "View changes this node demanded because the primary served too slowly.",
                                 func=lambda: r().slow_primary_demands))
        reg.gauge("ledgerlink_node_equivocators", "Validators this node holds an equivocation proof against.",
                  func=lambda: len(r().convicted))
        self.committed_blocks = reg.counter("ledgerlink_node_committed_blocks_total",
                                            "Blocks committed since the node started.")
        self.committed_txs = reg.counter("ledgerlink_node_committed_transactions_total",
                                         "Transactions committed since the node started.")
        self.submitted = reg.counter("ledgerlink_node_submitted_transactions_total",
                                     "Client submissions received by this node.")
        reg.register(CounterFunc("ledgerlink_node_dropped_frames_total",
                                 "Peer frames dropped by the transport (framing, bad hello).",
                                 func=lambda: getattr(node.net, "dropped", 0)))
        self.dropped = reg.counter("ledgerlink_node_dropped_messages_total",
                                   "Peer messages and transactions dropped, by reason.", ("reason",))
        reg.register(CounterFunc("ledgerlink_node_port_limited_total",
                                 "Times a limit of the peer or client port bit (see ledger/transport.py), by limit.",
                                 ("port", "limit"), func=lambda: _limited(node)))
        reg.gauge("ledgerlink_node_peer_queued_bytes", "Bytes queued for the peers, all links.",
                  func=lambda: node.net.queued_bytes())
        reg.gauge("ledgerlink_node_peer_unsent_bytes",
                  "Bytes on their way to the peers not taken by them yet (queues, stream and kernel buffers), all links.",
                  func=lambda: sum(node.net.unsent_bytes(i) for i in node.net.links))
        reg.gauge("ledgerlink_node_peer_connections", "Authenticated inbound peer connections.",
                  func=lambda: len(node.net.peers))
        reg.gauge("ledgerlink_node_client_connections", "Open client port connections.",
                  func=lambda: len(node.client.conns))
        reg.gauge("ledgerlink_node_client_buffered_bytes", "Bytes of partial client frames held.",
                  func=lambda: node.client.buffered_bytes())
        self.commit_latency = reg.histogram("ledgerlink_node_commit_latency_seconds",
                                            "Time from a client submission at this node to its commit.")
        self._submitted_at: OrderedDict[bytes, float] = OrderedDict()

    def attach(self) -> "NodeMetrics":
        """Wrap the node's ``effects`` and ``_submit_all`` (every submission goes through it) on the instance."""
        import hashlib

        from ledgerlink.ledger.consensus.replica import Committed, Dropped

        node = self.node
        effects, submit_all = node.effects, node._submit_all

        def observed_effects(items: list) -> None:
            for e in items:
                if isinstance(e, Committed):
                    self.on_committed(e.txs)
                elif isinstance(e, Dropped):
                    self.dropped.inc(1, (reason_label(e.reason),))
            effects(items)

        async def observed_submit_all(txs: list, wait: int) -> list[dict]:
            for tx in txs:
                if isinstance(tx, bytes):
                    self.submitted.inc()
                    h = hashlib.sha256(tx).digest()
                    if h not in self._submitted_at:
                        self._submitted_at[h] = self.clock()
                        if len(self._submitted_at) > self.MAX_TRACKED:
                            self._submitted_at.popitem(last=False)
            return await submit_all(txs, wait)

        node.effects = observed_effects
        node._submit_all = observed_submit_all
        return self

    def on_committed(self, txs: Iterable[bytes]) -> None:
        import hashlib

        txs = list(txs)
        self.committed_blocks.inc()
        self.committed_txs.inc(len(txs))
        if not self._submitted_at:
            return
        now = self.clock()
        for tx in txs:
            t0 = self._submitted_at.pop(hashlib.sha256(tx).digest(), None)
            if t0 is not None:
                self.commit_latency.observe(now - t0)

    def serve(self, host: str, port: int) -> HttpServer:
        return HttpServer(host, port, metrics_handler(self.registry)).start()


def _limited(node: Any) -> dict[tuple[str, str], int]:
    out = {("peer", k): v for k, v in list(node.net.limited.items())}
    out.update({("client", k): v for k, v in list(node.client.limited.items())})
    return out


def serve_node(node: Any, host: str, port: int) -> HttpServer:
    """Attach ``NodeMetrics`` to ``node`` and serve ``/metrics`` on ``host:port``."""
    server = NodeMetrics(node).attach().serve(host, port)
    log.info("node %d metrics on http://%s:%d/metrics", node.index, host, server.port)
    return server
