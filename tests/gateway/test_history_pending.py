"""The dashboard history takes a group's readings with one hold of its lock and puts them into the series
when it is read: the devices and series of one reading at a time (a device's series may reach further back,
never past its cap), and readings the caps drop cost no parse."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from ledgerlink.gateway import history as hist
from ledgerlink.gateway.history import History


def model(events: list[tuple], points: int, devices: int) -> dict[bytes, list[int]]:
    """The seqs each device's series holds after ``events``: its last ``points`` readings with a number, for the
    ``devices`` devices touched last (a refusal touches its device too)."""
    series: dict[bytes, list[int]] = {}
    for kind, dev, seq, meas in events:
        if kind == "reading" and not any(type(v) in (int, float) for v in meas.values()):
            continue
        got = series.pop(dev, [])
        series[dev] = (got + [seq])[-points:] if kind == "reading" else got
        while len(series) > devices:
            del series[next(iter(series))]
    return series


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["reading", "reading", "reading", "refusal"]), st.integers(0, 7),
                          st.booleans(), st.integers(1, 5)), max_size=80), st.integers(1, 40))
def test_series_are_those_of_readings_taken_one_at_a_time(steps, read_every):
    points, devices = 4, 3                              # small caps, so that they are reached
    saved = hist.READING_POINTS, hist.DEVICES_KEPT
    hist.READING_POINTS, hist.DEVICES_KEPT = points, devices
    try:
        h = History()
        events, group = [], []
        for n, (kind, d, numeric, size) in enumerate(steps):
            dev = bytes([d]) * 16
            meas = {"t": n} if numeric else {"label": "x"}
            events.append((kind, dev, n, meas))
            if kind == "reading":
                group.append((dev, 1000 + n, n, meas))
                if len(group) >= size:
                    h.readings(group)
                    group = []
            else:
                h.readings(group)
                group = []
                h.refusal(dev, {"code": 5})
            if n % read_every == 0:
                h.device_json(dev)
        h.readings(group)
        got = {dev: h.device_json(dev)["seq"] for dev in h.devices}
        want = model(events, points, devices)
        assert list(h.devices) == list(want)
        for dev, seqs in got.items():           # the newest readings with a number, in order, with no gap
            numbered = [n for kind, d, n, meas in events if kind == "reading" and d == dev and "t" in meas]
            assert seqs == numbered[len(numbered) - len(seqs):] and len(want[dev]) <= len(seqs) <= points
    finally:
        hist.READING_POINTS, hist.DEVICES_KEPT = saved


def test_readings_the_caps_drop_are_not_parsed(monkeypatch):
    parsed = []
    numeric_values = hist.numeric_values
    monkeypatch.setattr(hist, "numeric_values", lambda m: parsed.append(1) or numeric_values(m))
    h = History()
    devs = [i.to_bytes(16, "big") for i in range(8 * hist.DEVICES_KEPT)]
    for k in range(0, len(devs), 64):
        h.readings([(dev, 1000, 1, {"t": 1.5}) for dev in devs[k:k + 64]])
    assert len(h.devices) == hist.DEVICES_KEPT and list(h.devices) == devs[-hist.DEVICES_KEPT:]
    assert len(parsed) <= 2 * hist.DEVICES_KEPT, len(parsed)
    assert h.device_json(devs[-1])["series"] == {"t": [1.5]}
