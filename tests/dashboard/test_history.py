"""The dashboard's bounded history: caps of every series, rates and latency from running totals, readings
and refusals fed by the gateway's metrics."""

from __future__ import annotations

import math

from ledgerlink.gateway import history as hist
from ledgerlink.gateway.history import History, numeric_values

from tests.gateway.test_dashboard import feed_scenario, site  # noqa: F401 - pytest fixture


class Clock:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = 1_700_000_000_000

    def tick(self, seconds: float = 1.0) -> None:
        self.mono += seconds
        self.wall += int(seconds * 1000)


def test_site_series_rates_latency_and_cap():
    clock = Clock()
    h = History(lambda: clock.wall, lambda: clock.mono)
    h.sample(0, 0, 0, 0.0, 0, None)                       # the first sample only sets the totals
    assert h.site_json()["t"] == []
    clock.tick(2.0)
    h.sample(10, 4, 6, 1.5, 6, 7)                         # 6 receipts took 1.5 s in all: 250 ms each
    clock.tick(1.0)
    h.sample(10, 4, 6, 1.5, 6, 8)                         # no receipt: no latency
    s = h.site_json()
    assert s["t"] == [clock.wall - 1000, clock.wall] and s["cap"] == hist.SITE_POINTS
    assert s["series"] == {"accepted_per_s": [5.0, 0.0], "refused_per_s": [2.0, 0.0], "receipts_per_s": [3.0, 0.0],
                           "ledger_height": [7, 8], "commit_latency_ms": [250.0, None]}
    for i in range(hist.SITE_POINTS + 10):
        clock.tick()
        h.sample(10 + i, 4, 6, 1.5, 6, 8 + i)
    s = h.site_json()
    assert len(s["t"]) == hist.SITE_POINTS and all(len(v) == hist.SITE_POINTS for v in s["series"].values())
    assert s["series"]["ledger_height"][-1] == 8 + hist.SITE_POINTS + 9 and s["t"][-1] == clock.wall


def test_numeric_values_keeps_finite_numbers_only():
    meas = {"t": 21.5, "on": True, "name": "x", "nan": math.nan, "big": 2 ** 60, "n": -3, 7: 1.0, "k" * 100: 2}
    assert numeric_values(meas) == {"t": 21.5, "n": -3, "7": 1.0, "k" * hist.KEY_TEXT: 2}
    assert numeric_values([1, 2]) == {} and numeric_values(None) == {}
    assert len(numeric_values({"v%d" % i: i for i in range(50)})) == hist.READING_KEYS


def test_device_series_and_refusals_are_capped():
    h = History()
    dev = b"\x01" * 16
    for seq in range(hist.READING_POINTS + 20):
        h.reading(dev, 1000 + seq, seq, {"t": seq / 2, "rh": seq} if seq % 2 else {"t": seq / 2})
    h.reading(dev, 5, 999, {"label": "text only"})       # nothing to plot: not kept
    h.reading(dev, 5, 2 ** 64 - 1, {"t": 1})              # beyond the numbers kept: not kept, no error
    for i in range(hist.REFUSALS_KEPT + 5):
        h.refusal(dev, {"code": 5, "n": i})
    d = h.device_json(dev)
    assert len(d["t"]) == hist.READING_POINTS and d["seq"][0] == 20 and d["seq"][-1] == hist.READING_POINTS + 19
    assert d["series"]["t"][-1] == (hist.READING_POINTS + 19) / 2
    assert d["series"]["rh"][:2] == [None, 21]            # a reading without a value shows null there
    assert [r["n"] for r in d["refusals"]] == list(range(hist.REFUSALS_KEPT + 4, 4, -1))
    assert h.device_json(dev, last=3)["seq"] == d["seq"][-3:]
    for i in range(hist.DEVICES_KEPT + 5):                 # the device updated longest ago goes first
        h.reading(i.to_bytes(16, "big"), 1, 1, {"t": 1})
    assert len(h.devices) == hist.DEVICES_KEPT and dev not in h.devices
    assert h.device_json(dev) == {"cap": hist.READING_POINTS, "t": [], "seq": [], "series": {}, "refusals": []}


def test_a_device_that_takes_the_place_of_a_dropped_one_shows_only_its_own_readings():
    h = History()
    first = b"\x01" * 16
    for seq in range(hist.READING_POINTS + 3):
        h.reading(first, 1000 + seq, seq, {"t": seq, "rh": 50})
    h.refusal(first, {"code": 5})
    for i in range(2, hist.DEVICES_KEPT + 1):
        h.reading(i.to_bytes(16, "big"), 1, 1, {"t": 1})
    late = b"\x02" * 16                                    # drops ``first``, takes its arrays
    h.reading(late, 7, 3, {"p": 1.5})                      # a column of ``first``, reused
    h.reading(late, 8, 4, {"p": 2, "q": 1})
    assert first not in h.devices
    assert h.device_json(late) == {"cap": hist.READING_POINTS, "t": [7, 8], "seq": [3, 4],
                                   "series": {"p": [1.5, 2], "q": [None, 1]}, "refusals": []}


def test_metrics_feed_readings_and_refusals(site):  # noqa: F811 - the imported fixture
    h = History()
    site.metrics.history = h
    feed_scenario(site)
    sensor = h.device_json(site.net["sensor"].id)
    assert sensor["seq"] == [1, 2] and sensor["series"] == {"t": [21.5, 21.5]}
    assert [r["reason"] for r in sensor["refusals"]] == ["replay", "bad-signature"]
    evil = h.device_json(site.net["evil"].id)
    assert evil["seq"] == [1, 2, 3] and evil["series"] == {"n": [1, 2, 3]}      # the hostile text key is not a number
    assert [r["reason"] for r in evil["refusals"]] == ["rate-limited"]
