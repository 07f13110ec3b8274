"""The gateway's latency histograms take a group's observations at once and expose what prometheus_client's
histogram exposes for the same observations."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from ledgerlink.gateway import checks as c
from ledgerlink.gateway.metrics import GatewayMetrics, GroupHistogram
from ledgerlink.service_http import Registry

BUCKETS = (0.001, 0.0025, 0.01, 0.5, 1, 2.5, 60)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.one_of(st.sampled_from(BUCKETS), st.floats(0, 100, allow_nan=False)), max_size=12),
                max_size=6))
def test_group_histogram_exposes_what_prometheus_client_does(groups):
    ours, theirs = Registry(), Registry()
    mine = ours.register(GroupHistogram("x_seconds", "Latency.", BUCKETS))
    ref = theirs.histogram("x_seconds", "Latency.", BUCKETS)
    for group in groups:
        mine.observe_many(group)
        for v in group:
            ref.observe(v)
    assert mine.count == ref.count == sum(len(g) for g in groups)
    lines = [sorted(r.render().splitlines()) for r in (ours, theirs)]
    sums = [[ln for ln in got if ln.startswith("x_seconds_sum")] for got in lines]
    assert [ln for ln in lines[0] if ln not in sums[0]] == [ln for ln in lines[1] if ln not in sums[1]]
    assert abs(float(sums[0][0].split()[1]) - float(sums[1][0].split()[1])) <= 1e-9 * (1 + sum(map(sum, groups)))


def test_a_groups_accept_latencies_are_one_observation():
    class Core:
        sessions: dict = {}
        pending: dict = {}

    metrics = GatewayMetrics(Core())
    accepts = [c.Accept(bytes([i]) * 16, 1, 1000, {"t": i}, b"f", bytes([i]) * 32, "t", "sign1", b"p")
               for i in range(5)]
    metrics.arrived([e.frame_hash for e in accepts])
    calls = []
    observe_many = metrics.accept_latency.observe_many
    metrics.accept_latency.observe_many = lambda values: calls.append(len(values)) or observe_many(values)
    metrics.effects(accepts, 1000)
    assert calls == [5] and metrics.accept_latency.count == 5
