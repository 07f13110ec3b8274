"""Bounded history for the dashboard's plots: site rates over the last hour and each device's readings.

``History.sample`` (the dashboard calls it every ``SAMPLE_S``) appends one point to each site series:
accepted, refused and receipts per second (from the metrics' counters), the verified ledger height and
the commit latency (mean time from a frame's acceptance to its receipt, i.e. to the certified commit of
its batch's anchor, over the interval; null when no receipt was sent). ``GatewayMetrics.effects`` hands
each accepted reading to ``History.reading`` (its numeric measurements are appended to its device's
series; a reading without one is not kept) and each refusal to ``History.refusal``. The readings of a
group are taken with one hold of the lock and put into the series at the next read of the history (or
once ``PENDING_READINGS`` wait), newest first, so a reading that a cap drops by then is not parsed.

Protects against memory growth from traffic an attacker controls: every series is a ring buffer with a
fixed cap (``SITE_POINTS`` per site series, ``READING_POINTS`` readings and ``REFUSALS_KEPT`` refusals
per device), at most ``READING_KEYS`` numeric values of a reading are kept, and at most
``DEVICES_KEPT`` devices have a series (the one updated longest ago is dropped first). Keys are
device-provided text, cut to ``KEY_TEXT`` characters and shown as text only. At every cap the history
holds about 4.6 MB with 2 numeric values per reading, 8.4 MB with 8 (refusals included; measured with
tracemalloc): readings are kept in fixed arrays of machine numbers, not as Python objects, once they leave
the at most ``PENDING_READINGS`` pending ones.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections import OrderedDict, deque
from typing import Any, Callable

SAMPLE_S = 1.0             # one point of each site series a second
SITE_POINTS = 3600         # points per site series: the last hour
READING_POINTS = 300       # readings kept per device
READING_KEYS = 8           # numeric measurements kept per reading
REFUSALS_KEPT = 10         # refusals kept per device
DEVICES_KEPT = 256         # devices with a readings series
KEY_TEXT = 40              # characters of a measurement name
NAN = math.nan
EXACT_INT = 2 ** 53       # integers a float holds exactly
INT64_END = 2 ** 63       # times and seqs are kept as signed 64-bit numbers
PENDING_READINGS = 2048    # readings taken and not yet put into the series
SITE_SERIES = ("accepted_per_s", "refused_per_s", "receipts_per_s", "ledger_height", "commit_latency_ms")


def numeric_values(measurements: Any) -> dict[str, float]:
    """The finite numeric entries (not booleans) of a reading's measurement map as floats, at most
    ``READING_KEYS`` (integers beyond 2^53 are left out: a float would not hold them exactly)."""
    out: dict[str, float] = {}
    if type(measurements) is not dict:
        return out
    for key, value in measurements.items():
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                continue
        elif kind is int:
            if not -EXACT_INT < value < EXACT_INT:
                continue
            value = float(value)
        else:
            continue
        out[key if type(key) is str and len(key) <= KEY_TEXT else str(key)[:KEY_TEXT]] = value
        if len(out) == READING_KEYS:
            break
    return out


class _DeviceHistory:
    """A device's last ``READING_POINTS`` readings in fixed arrays (a ring: ``start`` is the oldest, NaN where a
    reading lacks a value; the first ``READING_KEYS`` measurement names seen get a column) and its refusals."""

    def __init__(self) -> None:
        self.times = array("q", bytes(8 * READING_POINTS))
        self.seqs = array("q", bytes(8 * READING_POINTS))
        self.columns: dict[str, array] = {}
        self.spare: list[array] = []          # columns of the device this one took the place of
        self.start = 0
        self.count = 0
        self.refusals: deque[dict] = deque(maxlen=REFUSALS_KEPT)

    def clear(self) -> None:
        """Empty, for another device (the arrays are kept: a reading writes every column at its place)."""
        self.spare = list(self.columns.values())
        self.columns.clear()
        self.start = self.count = 0
        self.refusals.clear()

    def append(self, time_ms: int, seq: int, values: dict[str, float]) -> None:
        first = self.count == 0
        if self.count == READING_POINTS:
            i = self.start
            self.start = (i + 1) % READING_POINTS
        else:
            i = (self.start + self.count) % READING_POINTS
            self.count += 1
        self.times[i] = time_ms
        self.seqs[i] = seq
        columns = self.columns
        if not columns.keys() >= values.keys():
            for key in values:
                if key not in columns and len(columns) < READING_KEYS:
                    # a spare column's old values are never read: each reading from now on writes its place
                    columns[key] = self.spare.pop() if first and self.spare else array("d", [NAN]) * READING_POINTS
        if first:
            self.spare = []
        for key, column in columns.items():
            column[i] = values.get(key, NAN)

    def newest(self, last: int) -> tuple[list[int], list[int], dict[str, list[float | None]]]:
        """(times, seqs, values by name: null where missing) of the newest ``last`` readings, oldest first."""
        n = min(last, self.count)
        order = [(self.start + self.count - n + k) % READING_POINTS for k in range(n)]
        series = {key: [None if math.isnan(column[i]) else _number(column[i]) for i in order]
                  for key, column in self.columns.items()}
        return ([self.times[i] for i in order], [self.seqs[i] for i in order],
                {key: values for key, values in series.items() if any(v is not None for v in values)})


def _number(value: float) -> float | int:
    """A stored value as the device sent it when that was an integer (JSON shows 57, not 57.0)."""
    return int(value) if value.is_integer() and abs(value) < 2 ** 53 else value


class History:
    """The bounded series of one gateway (see the module docstring)."""

    def __init__(self, wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.wall_ms = wall_ms
        self.mono = mono
        self.lock = threading.Lock()
        self.site_times: deque[int] = deque(maxlen=SITE_POINTS)
        self.site: dict[str, deque] = {name: deque(maxlen=SITE_POINTS) for name in SITE_SERIES}
        self._series: OrderedDict[bytes, _DeviceHistory] = OrderedDict()
        self._pending: list[list[tuple[bytes, int, int, Any]]] = []     # groups of readings, oldest first
        self._pending_count = 0
        self._last: tuple[float, float, float, float, float, float] | None = None   # (mono, counters...)

    # --- inputs ---------------------------------------------------------------------------------------

    @property
    def devices(self) -> OrderedDict[bytes, _DeviceHistory]:
        """The devices with a series, the one updated longest ago first."""
        with self.lock:
            self._put_pending()
            return self._series

    def _device(self, dev: bytes) -> _DeviceHistory:
        series = self._series
        d = series.get(dev)
        if d is None:
            if len(series) >= DEVICES_KEPT:             # the arrays of the device updated longest ago are reused
                d = series.popitem(last=False)[1]
                d.clear()
            else:
                d = _DeviceHistory()
            series[dev] = d
        else:
            series.move_to_end(dev)
        return d

    def reading(self, dev: bytes, time_ms: int, seq: int, measurements: Any) -> None:
        self.readings([(dev, time_ms, seq, measurements)])

    def readings(self, items: list[tuple[bytes, int, int, Any]]) -> None:
        """``reading`` of each (device, time_ms, seq, measurements), in order (``items`` is kept, not copied)."""
        if not items:
            return
        with self.lock:
            self._pending.append(items)
            self._pending_count += len(items)
            if self._pending_count >= PENDING_READINGS:
                self._put_pending()

    def _put_pending(self) -> None:
        """Under the lock: put the pending readings into the series. Newest first, each device's readings and
        the devices are picked as the caps keep them (its last ``READING_POINTS`` readings with a number, of
        the ``DEVICES_KEPT`` devices updated last); then they are appended oldest first."""
        if not self._pending:
            return
        groups, self._pending, self._pending_count = self._pending, [], 0
        picked: dict[bytes, list[tuple[int, int, dict[str, float]]]] = {}    # device -> readings, newest first
        for items in reversed(groups):
            for dev, time_ms, seq, measurements in reversed(items):
                got = picked.get(dev)
                if got is None:
                    if len(picked) >= DEVICES_KEPT:
                        continue
                elif len(got) >= READING_POINTS:
                    continue
                values = numeric_values(measurements)
                if values and 0 <= time_ms < INT64_END and 0 <= seq < INT64_END:
                    if got is None:
                        got = picked[dev] = []
                    got.append((time_ms, seq, values))
        order = list(picked)[::-1]                      # the device whose newest reading is oldest first
        series = self._series
        for dev in order:                               # series the picked devices have are not dropped for them
            if dev in series:
                series.move_to_end(dev)
        for dev in order:
            d = self._device(dev)
            for time_ms, seq, values in reversed(picked[dev]):
                d.append(time_ms, seq, values)

    def refusal(self, dev: bytes, entry: dict) -> None:
        with self.lock:
            self._put_pending()
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
            self._put_pending()
            d = self._series.get(dev)
            times, seqs, series = d.newest(max(0, last)) if d is not None else ([], [], {})
            refusals = list(d.refusals) if d is not None else []
        return {"cap": READING_POINTS, "t": times, "seq": seqs, "series": series, "refusals": refusals}

    def readings_json(self, last: int) -> dict:
        """The newest ``last`` readings of every device with a series (hex id -> ``device_json``)."""
        with self.lock:
            self._put_pending()
            devices = list(self._series)
        return {dev.hex(): self.device_json(dev, last) for dev in devices}
