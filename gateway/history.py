"""Bounded history for the dashboard's plots: site rates over the last hour and each device's readings.

``History.sample`` (the dashboard calls it every ``SAMPLE_S``) appends one point to each site series:
accepted, refused and receipts per second (from the metrics' counters), the verified ledger height and
the commit latency (mean time from a frame's acceptance to its receipt, i.e. to the certified commit of
its batch's anchor, over the interval; null when no receipt was sent). ``History.effects`` (called by
``GatewayMetrics.effects`` once per input) appends each accepted reading's numeric measurements to its
device's series (a reading without one is not kept) and each refusal to its device's last refusals.

Protects against memory growth from traffic an attacker controls: every series is a ring buffer with a
fixed cap (``SITE_POINTS`` per site series, ``READING_POINTS`` readings and ``REFUSALS_KEPT`` refusals
per device), at most ``READING_KEYS`` numeric values of a reading are kept, and at most
``DEVICES_KEPT`` devices have a series (the one updated longest ago is dropped first). Keys are
device-provided text, cut to ``KEY_TEXT`` characters and shown as text only. At every cap the history
holds about 27 MB with 2 numeric values per reading, 34 MB with 8 (measured with tracemalloc).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Callable

SAMPLE_S = 1.0             # one point of each site series a second
SITE_POINTS = 3600         # points per site series: the last hour
READING_POINTS = 300       # readings kept per device
READING_KEYS = 8           # numeric measurements kept per reading
REFUSALS_KEPT = 10         # refusals kept per device
DEVICES_KEPT = 256         # devices with a readings series
KEY_TEXT = 40              # characters of a measurement name
SITE_SERIES = ("accepted_per_s", "refused_per_s", "receipts_per_s", "ledger_height", "commit_latency_ms")


def numeric_values(measurements: Any) -> dict[str, float]:
    """The finite numeric entries (not booleans) of a reading's measurement map, at most ``READING_KEYS``."""
    out: dict[str, float] = {}
    if not isinstance(measurements, dict):
        return out
    for key, value in measurements.items():
        if len(out) >= READING_KEYS:
            break
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, int) and abs(value) >= 2 ** 53:
            continue
        out[str(key)[:KEY_TEXT]] = value
    return out


class _DeviceHistory:
    def __init__(self) -> None:
        self.readings: deque[tuple[int, int, dict[str, float]]] = deque(maxlen=READING_POINTS)  # (time_ms, seq, values)
        self.refusals: deque[dict] = deque(maxlen=REFUSALS_KEPT)


class History:
    """The bounded series of one gateway (see the module docstring)."""

    def __init__(self, wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.wall_ms = wall_ms
        self.mono = mono
        self.lock = threading.Lock()
        self.site_times: deque[int] = deque(maxlen=SITE_POINTS)
        self.site: dict[str, deque] = {name: deque(maxlen=SITE_POINTS) for name in SITE_SERIES}
        self.devices: OrderedDict[bytes, _DeviceHistory] = OrderedDict()
        self._last: tuple[float, float, float, float, float, float] | None = None   # (mono, counters...)

    # --- inputs ---------------------------------------------------------------------------------------

    def _device(self, dev: bytes) -> _DeviceHistory:
        d = self.devices.get(dev)
        if d is None:
            d = self.devices[dev] = _DeviceHistory()
            if len(self.devices) > DEVICES_KEPT:
                self.devices.popitem(last=False)
        else:
            self.devices.move_to_end(dev)
        return d

    def reading(self, dev: bytes, time_ms: int, seq: int, measurements: Any) -> None:
        values = numeric_values(measurements)
        if not values:
            return
        with self.lock:
            self._device(dev).readings.append((time_ms, seq, values))

    def refusal(self, dev: bytes, entry: dict) -> None:
        with self.lock:
            self._device(dev).refusals.appendleft(entry)

    def sample(self, accepted: float, refused: float, receipts: float, latency_s_total: float,
               latency_count: float, height: int | None) -> None:
        """One point of each site series from the metrics' running totals (counters since start)."""
        now_mono, now_ms = self.mono(), self.wall_ms()
        current = (now_mono, accepted, refused, receipts, latency_s_total, latency_count)
        with self.lock:
            last, self._last = self._last, current
            if last is None:
                return
            dt = now_mono - last[0]
            if dt <= 0:
                return
            self.site_times.append(now_ms)
            for name, i in (("accepted_per_s", 1), ("refused_per_s", 2), ("receipts_per_s", 3)):
                self.site[name].append(round(max(0.0, current[i] - last[i]) / dt, 3))
            self.site["ledger_height"].append(height)
            count = current[5] - last[5]
            self.site["commit_latency_ms"].append(round((current[4] - last[4]) / count * 1000, 1) if count > 0
                                                  else None)

    # --- outputs --------------------------------------------------------------------------------------

    def site_json(self) -> dict:
        """The site series: ``t`` (wall ms of each point) and one list of values per series (null: none)."""
        with self.lock:
            return {"step_s": SAMPLE_S, "cap": SITE_POINTS, "t": list(self.site_times),
                    "series": {name: list(values) for name, values in self.site.items()}}

    def device_json(self, dev: bytes, last: int = READING_POINTS) -> dict:
        """A device's readings (``t``, ``seq``, one list per measurement name, null where a reading lacks
        it) and its last refusals, newest first."""
        with self.lock:
            d = self.devices.get(dev)
            readings = list(d.readings)[-last:] if d is not None and last > 0 else []
            refusals = list(d.refusals) if d is not None else []
        names: list[str] = []
        for _, _, values in readings:
            for key in values:
                if key not in names and len(names) < READING_KEYS:
                    names.append(key)
        return {"cap": READING_POINTS, "t": [t for t, _, _ in readings], "seq": [s for _, s, _ in readings],
                "series": {k: [values.get(k) for _, _, values in readings] for k in names},
                "refusals": refusals}

    def readings_json(self, last: int) -> dict:
        """The newest ``last`` readings of every device with a series (hex id -> ``device_json``)."""
        with self.lock:
            devices = list(self.devices)
        return {dev.hex(): self.device_json(dev, last) for dev in devices}
