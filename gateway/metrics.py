"""Gateway metrics and live state: Prometheus families and the data of the dashboard.

``GatewayMetrics`` is the ``observer`` of a ``GatewayService``: it sees every frame (``frames``, a group at a time), the
effects of every input after they were carried out (``effects``: accepted frames are durable by then)
and registry answers (``registry_updated``); the ``MqttGateway`` reports when frames arrived from the
broker, before they wait in the check queue (``arrived``). ``instrument(gateway)`` attaches it to an
``MqttGateway`` and wraps, on the instance, the store's ``create_batch`` (batch sizes) and the batcher's
``receipts`` (receipt count and accept-to-receipt latency).

Families (``/metrics``): frames received; accepted by mode; refused by reason code; latency
histograms frame receipt -> accept and accept -> receipt; batch sizes; receipts; devices by state;
sessions; frames waiting for the registry; the verified ledger height. ``state()`` is the JSON of
``/api/state`` (see ``ledgerlink.gateway.dashboard``).

Protects against memory growth from traffic an attacker controls: devices (by topic), recent
messages, warnings and in-flight timestamps are kept in bounded structures, label sets are bounded
(reason codes, modes, states), and device-provided values (measurements, names, topics, refusal
details) are passed on as bounded JSON data only, never as markup. Tested in
tests/gateway/test_dashboard.py (GatewayCore fed real frames; the page rendered in headless Chromium).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left
from collections import OrderedDict, deque
from typing import Any, Callable, Iterable

from prometheus_client.core import HistogramMetricFamily, Metric

from ledgerlink.core import cbor
from ledgerlink.protocol import spv
from ledgerlink.gateway import checks as c
from ledgerlink.protocol.ledger_tx import reason_name
from ledgerlink.service_http import LATENCY_BUCKETS, Registry, format_value

log = logging.getLogger("ledgerlink.gateway.metrics")

STATES = ("online", "offline", "banned", "unregistered")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MAX_DEVICES = 10000
MAX_INFLIGHT = 100000
RECENT = 50
RATE_WINDOW_S = 10.0
MAX_TEXT = 200
MAX_ITEMS = 32
MAX_DEPTH = 4


def jsonable(value: Any, depth: int = 0) -> Any:
    """A device-provided CBOR value as bounded JSON data (bytes as hex, map keys as text, long text cut)."""
    if depth > MAX_DEPTH:
        return "..."
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2 ** 53 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, (bytes, bytearray)):
        return "h'%s'" % bytes(value[:MAX_TEXT // 2]).hex()
    if isinstance(value, dict):
        return {str(jsonable(k, MAX_DEPTH))[:MAX_TEXT]: jsonable(v, depth + 1)
                for k, v in list(value.items())[:MAX_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value[:MAX_ITEMS]]
    if isinstance(value, cbor.Tag):
        return {"tag": value.tag, "value": jsonable(value.value, depth + 1)}
    return str(type(value).__name__)


class GroupHistogram:
    """A histogram fed a group of observations at a time (``observe_many``: one lock, the buckets found by
    bisection), exposed like ``service_http.Histogram`` (cumulative buckets with ``le`` as Go writes it,
    count and sum). prometheus_client's ``observe`` takes two locks and walks the buckets per observation,
    a cost per frame for the latencies (tests/gateway/test_metrics_groups.py holds the two alike)."""

    def __init__(self, name: str, help: str, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.help = help
        self.buckets = tuple(sorted(float(b) for b in buckets))
        if not self.buckets or any(math.isinf(b) or math.isnan(b) for b in self.buckets):
            raise ValueError("buckets must be finite numbers")
        self._counts = [0] * (len(self.buckets) + 1)         # per bucket, the last one +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> None:
        bounds = self.buckets
        values = list(values)
        places = [bisect_left(bounds, v) for v in values]
        total = math.fsum(values)
        with self._lock:
            counts = self._counts
            for i in places:
                counts[i] += 1
            self._sum += total

    @property
    def count(self) -> int:
        return sum(self._counts)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.help)]

    def collect(self) -> list[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, n in zip(self.buckets + (math.inf,), counts):
            running += n
            cumulative.append((format_value(bound), running))
        return [HistogramMetricFamily(self.name, self.help, buckets=cumulative, sum_value=total)]


class _Device:
    def __init__(self, now_ms: int) -> None:
        self.first_ms = now_ms
        self.last_ms: int | None = None        # last frame
        self.accepted = 0
        self.refused = 0
        self.last_code: int | None = None
        self.registry: str | None = None       # "active", "banned", "unregistered" (ledger proof), None: unknown
        self.name: str | None = None
        self.ban_reason: str | None = None
        self.registry_height: int | None = None


class GatewayMetrics:
    """Metrics and dashboard state of the gateway whose checks are ``core`` (see the module docstring)."""

    def __init__(self, core: c.GatewayCore, offline_after_s: float = 30.0,
                 wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.offline_after_ms = int(offline_after_s * 1000)
        self.wall_ms = wall_ms
        self.mono = mono
        self.started = mono()
        self.lock = threading.Lock()
        self.devices: OrderedDict[bytes, _Device] = OrderedDict()
        self.recent: deque[tuple[c.Accept, int]] = deque(maxlen=RECENT)     # shown as JSON by ``state``
        self.warnings: deque[dict] = deque(maxlen=RECENT)
        self._arrived: OrderedDict[bytes, float] = OrderedDict()     # frame hash -> arrival (monotonic)
        self._accepted: OrderedDict[bytes, float] = OrderedDict()    # frame hash -> accept (monotonic)
        self._receipt_times: deque[tuple[float, int]] = deque()
        self.ledger: dict[str, Any] = {"height": None, "time_ms": None, "checked_ms": None, "error": None}
        self._ignored = 0
        self.receipt_latency_s_total = 0.0     # sum of the receipt latencies observed (for the history's mean)
        self.history: Any = None               # a ``history.History`` fed accepted readings and refusals

        self.registry = reg = Registry()
        self.received = reg.counter("ledgerlink_gateway_frames_received_total", "Frames received from devices.")
        self.accepted = reg.counter("ledgerlink_gateway_accepted_total",
                                    "Frames accepted (stored durably), by mode.", ("mode",))
        self.refused = reg.counter("ledgerlink_gateway_refused_total",
                                   "Frames refused, by reason code of docs/protocol.md.", ("code", "reason"))
        self.accept_latency = reg.register(GroupHistogram("ledgerlink_gateway_accept_latency_seconds",
                                                          "Time from frame arrival to its durable acceptance."))
        self.receipt_latency = reg.register(GroupHistogram(
            "ledgerlink_gateway_receipt_latency_seconds", "Time from acceptance to the frame's ledger receipt.",
            (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)))
        self.batch_size = reg.histogram("ledgerlink_gateway_batch_size", "Frames per anchored batch.",
                                        BATCH_BUCKETS)
        self.receipts = reg.counter("ledgerlink_gateway_receipts_total", "Receipts sent to devices.")
        reg.gauge("ledgerlink_gateway_devices", "Devices seen, by state.", ("state",), func=self._device_counts)
        reg.gauge("ledgerlink_gateway_sessions", "Session keys held.", func=lambda: len(core.sessions))
        reg.gauge("ledgerlink_gateway_pending_frames", "Frames waiting for a registry answer.",
                  func=lambda: sum(len(v) for v in list(core.pending.values())))
        reg.gauge("ledgerlink_gateway_ledger_height", "Height of the newest verified ledger header (NaN: none yet).",
                  func=lambda: self._height_or_nan())
        reg.counter_func("ledgerlink_gateway_ignored_inputs_total", "Ledger inputs not taken (forged, older).",
                         func=lambda: self._ignored)

    # --- inputs (check thread, MQTT thread, batch thread) -----------------------------------------------

    def arrived(self, hashes: list[bytes]) -> None:
        """Frames (by SHA-256) arrived from the broker, before they wait in the check queue (one time stamp)."""
        t = self.mono()
        with self.lock:
            for h in hashes:
                self._remember(self._arrived, h, t)

    @staticmethod
    def _remember(d: OrderedDict, key: bytes, value: float) -> None:
        if key not in d:
            d[key] = value
            if len(d) > MAX_INFLIGHT:
                d.popitem(last=False)

    def _device(self, dev: bytes, now_ms: int) -> _Device:
        d = self.devices.get(dev)
        if d is None:
            d = self.devices[dev] = _Device(now_ms)
            if len(self.devices) > MAX_DEVICES:
                self.devices.popitem(last=False)
        else:
            self.devices.move_to_end(dev)
        return d

    def frames(self, items: list[tuple[str, bytes, bytes]], now_ms: int) -> None:
        """``frame`` of each ``(topic, payload, its SHA-256)`` of a group."""
        self.received.inc(len(items))
        parsed = [(self.core._topic_device(topic), h) for topic, _, h in items]
        t = self.mono()
        with self.lock:
            for dev, h in parsed:
                self._remember(self._arrived, h, t)
                if dev is not None:
                    self._device(dev[0], now_ms).last_ms = now_ms

    def effects(self, effects: list, now_ms: int) -> None:
        """Effects of one input, after they were carried out."""
        t = self.mono()
        accepted: dict[str, int] = {}
        history = self.history
        readings: list[tuple[bytes, int, int, Any]] = []     # for the history, after the lock
        latencies: list[float] = []
        with self.lock:
            for e in effects:
                if isinstance(e, c.Accept):
                    accepted[e.mode] = accepted.get(e.mode, 0) + 1
                    t0 = self._arrived.pop(e.frame_hash, None)
                    if t0 is not None:
                        latencies.append(max(0.0, t - t0))
                    self._remember(self._accepted, e.frame_hash, t)
                    d = self._device(e.device_id, now_ms)
                    d.accepted += 1
                    self.recent.appendleft((e, now_ms))
                    if history is not None:
                        readings.append((e.device_id, e.time_ms, e.seq, e.measurements))
                elif isinstance(e, c.Refuse):
                    self.refused.inc(1, (str(e.code), reason_name(e.code)))
                    self._arrived.pop(e.warning_id, None)
                    if e.offender:
                        d = self._device(e.offender, now_ms)
                        d.refused += 1
                        d.last_code = e.code
                        if e.code == c.BANNED_DEVICE:
                            d.registry = "banned"
                        elif e.code == c.UNKNOWN_DEVICE:
                            d.registry = "unregistered"
                    warning = {"device": e.offender.hex(), "time_ms": now_ms, "code": e.code,
                               "reason": reason_name(e.code), "text": e.text[:MAX_TEXT],
                               "frame_hash": e.warning_id.hex(), "reported": e.report}
                    self.warnings.appendleft(warning)
                    if history is not None and e.offender:
                        history.refusal(e.offender, warning)
                elif isinstance(e, c.Reply) and e.frame_hash is not None:
                    self._arrived.pop(e.frame_hash, None)
                elif isinstance(e, c.Ignored):
                    self._ignored += 1
            for mode, n in accepted.items():
                self.accepted.inc(n, (mode,))
            if latencies:
                self.accept_latency.observe_many(latencies)
        if readings:
            history.readings(readings)

    def registry_updated(self, dev: bytes) -> None:
        """The core took (or refused) a registry answer for ``dev``."""
        entry = self.core.registry.get(dev)
        if entry is None:
            return
        rec = entry.record
        with self.lock:
            d = self._device(dev, self.wall_ms())
            d.registry_height = entry.height
            if rec is None:
                d.registry = "unregistered"
                return
            d.registry = "banned" if entry.banned else "active"
            attrs = rec.get(4)
            name = attrs.get("name") if isinstance(attrs, dict) else None
            d.name = name[:MAX_TEXT] if isinstance(name, str) else None
            ban = rec.get(9)
            reason = ban.get(3) if isinstance(ban, dict) and entry.banned else None
            d.ban_reason = reason[:MAX_TEXT] if isinstance(reason, str) else None

    def batch_created(self, size: int) -> None:
        self.batch_size.observe(size)

    def receipts_sent(self, frame_hashes: list[bytes]) -> None:
        t = self.mono()
        latencies = []
        with self.lock:
            for h in frame_hashes:
                t0 = self._accepted.pop(h, None)
                if t0 is not None:
                    latencies.append(max(0.0, t - t0))
            self.receipt_latency.observe_many(latencies)
            self.receipt_latency_s_total += math.fsum(latencies)
            self.receipts.inc(len(frame_hashes))
            self._receipt_times.append((t, len(frame_hashes)))
            self._trim_rate(t)

    def _trim_rate(self, t: float) -> None:
        while self._receipt_times and t - self._receipt_times[0][0] > RATE_WINDOW_S:
            self._receipt_times.popleft()

    def ledger_checked(self, height: int | None, time_ms: int | None, error: str | None) -> None:
        """Result of a dashboard poll of the ledger's latest certified header (verified by the caller)."""
        with self.lock:
            if height is not None:
                self.ledger.update(height=height, time_ms=time_ms)
            self.ledger.update(checked_ms=self.wall_ms(), error=error)

    def poll_ledger(self, ledger: Any) -> None:
        """Fetch the latest certified header from ``ledger`` and keep it if it verifies against the trusted set."""
        try:
            res = ledger.latest()
            if not isinstance(res, dict) or not res.get("ok"):
                raise ValueError("ledger answered %r" % (res.get("error") if isinstance(res, dict) else res))
            header = spv.verify_certified_header(cbor.dumps(res["certified_header"]), self.core.chain_id,
                                                 self.core.validator_keys, self.core.crypto, self.core.group_key)
        except Exception as exc:  # noqa: BLE001 - shown on the dashboard
            self.ledger_checked(None, None, str(exc)[:MAX_TEXT] or type(exc).__name__)
            return
        self.ledger_checked(header.height, header.time_ms, None)

    # --- outputs ------------------------------------------------------------------------------------

    def ledger_height(self) -> int | None:
        core_header = self.core.header
        heights = [h for h in (self.ledger["height"], core_header.height if core_header is not None else None)
                   if h is not None]
        return max(heights) if heights else None

    def _height_or_nan(self) -> float:
        h = self.ledger_height()
        return math.nan if h is None else h

    def _state_of(self, d: _Device, now_ms: int) -> str:
        if d.registry == "banned":
            return "banned"
        if d.registry == "unregistered":
            return "unregistered"
        if d.last_ms is not None and now_ms - d.last_ms <= self.offline_after_ms:
            return "online"
        return "offline"

    def _device_counts(self) -> dict:
        now = self.wall_ms()
        with self.lock:
            states = [self._state_of(d, now) for d in self.devices.values()]
        return {(s,): states.count(s) for s in STATES}

    def receipts_per_s(self) -> float:
        t = self.mono()
        with self.lock:
            self._trim_rate(t)
            n = sum(k for _, k in self._receipt_times)
        window = min(RATE_WINDOW_S, max(1.0, t - self.started))
        return round(n / window, 2)

    def state(self) -> dict:
        """The JSON of ``/api/state``."""
        now = self.wall_ms()
        core = self.core
        header = core.header
        rps = self.receipts_per_s()
        with self.lock:
            devices = [{"id": dev.hex(), "state": self._state_of(d, now), "name": d.name, "last_ms": d.last_ms,
                        "accepted": d.accepted, "refused": d.refused, "last_code": d.last_code,
                        "last_reason": reason_name(d.last_code) if d.last_code is not None else None,
                        "ban_reason": d.ban_reason, "registry_height": d.registry_height}
                       for dev, d in reversed(self.devices.items())]
            recent = [{"device": e.device_id.hex(), "seq": e.seq, "time_ms": e.time_ms, "received_ms": at,
                       "mode": e.mode, "frame_hash": e.frame_hash.hex(), "measurements": jsonable(e.measurements)}
                      for e, at in self.recent]
            warnings = list(self.warnings)
            ledger = dict(self.ledger)
        ledger.update(height=self.ledger_height(), chain_id=core.chain_id,
                      validators=[k.hex() for k in core.validator_keys],
                      quorum=2 * ((len(core.validator_keys) - 1) // 3) + 1,
                      gateway_header_height=header.height if header is not None else None)
        return {
            "now_ms": now,
            "gateway": {"id": core.gateway_name, "site": core.site,
                        "uptime_s": round(self.mono() - self.started, 1),
                        "offline_after_s": self.offline_after_ms / 1000, "sessions": len(core.sessions)},
            "devices": devices,
            "recent": recent,
            "warnings": warnings,
            "ledger": ledger,
            "rates": {"receipts_per_s": rps},
            "totals": {"received": self.received.value(), "accepted": sum(self.accepted.values().values()),
                       "refused": sum(self.refused.values().values()), "receipts": self.receipts.value(),
                       "batches": self.batch_size.count},
        }

    # --- wiring -------------------------------------------------------------------------------------

    def instrument(self, gateway: Any) -> "GatewayMetrics":
        """Observe an ``MqttGateway``: its service (which reports MQTT arrivals too), batch creation and
        receipts."""
        gateway.service.observer = self
        store = gateway.service.store
        create_batch = store.create_batch

        def observed_create_batch(batch_id: bytes, root: bytes, tx: bytes, message_ids: list[int],
                                  now_ms: int) -> None:
            create_batch(batch_id, root, tx, message_ids, now_ms)
            self.batch_created(len(message_ids))

        store.create_batch = observed_create_batch
        batcher = gateway.batcher
        receipts = batcher.receipts

        def observed_receipts(batch_id: bytes) -> list:
            out = receipts(batch_id)
            self.receipts_sent([o.frame_hash or b"" for o in out])
            return out

        batcher.receipts = observed_receipts
        return self
