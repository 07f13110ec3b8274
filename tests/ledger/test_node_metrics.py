"""Prometheus exposition format of ``ledgerlink.service_http`` (parsed back by a strict parser here) and
the ``/metrics`` of real node processes started by ``LocalCluster(metrics=True)``."""

import math
import os
import re
import socket
import struct
import time
import urllib.request

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor
from ledgerlink import service_http as m
from ledgerlink.ledger.metrics import reason_label
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster
from ledgerlink.ledger.state import encoding as enc

# --- a strict parser of the text exposition format 0.0.4 ------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(r"^(%s)(\{(.*)\})? (\S+)( -?[0-9]+)?$" % _NAME)
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _unescape(s: str, label: bool) -> str:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            nxt = s[i + 1]
            if nxt == "n":
                out.append("\n")
            elif nxt == "\\":
                out.append("\\")
            elif nxt == '"' and label:
                out.append('"')
            else:
                raise ValueError("bad escape \\%s" % nxt)
            i += 2
        else:
            if label and c in '"\n':
                raise ValueError("unescaped %r in a label value" % c)
            out.append(c)
            i += 1
    return "".join(out)


def _parse_labels(text: str) -> dict:
    labels, i = {}, 0
    while i < len(text):
        mm = re.match(r'([a-zA-Z_][a-zA-Z0-9_]*)="', text[i:])
        if not mm:
            raise ValueError("bad label at %r" % text[i:])
        i += mm.end()
        j = i
        while text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        name = mm.group(1)
        if name in labels:
            raise ValueError("label %s twice" % name)
        labels[name] = _unescape(text[i:j], True)
        i = j + 1
        if i < len(text):
            if text[i] != ",":
                raise ValueError("expected ',' in %r" % text)
            i += 1
    return labels


def _value(s: str) -> float:
    if s in ("+Inf", "-Inf", "NaN"):
        return float(s.replace("+", ""))
    if not re.match(r"^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$", s):
        raise ValueError("bad value %r" % s)
    return float(s)


def parse_exposition(text: str) -> dict:
    """Families ``{name: {"type", "help", "samples": [(sample name, labels, value)]}}``; raises ValueError
    on anything the format does not allow (missing HELP/TYPE, samples of unknown families, histogram
    buckets that are not cumulative or lack +Inf, _count != +Inf bucket)."""
    if not text.endswith("\n"):
        raise ValueError("exposition must end with a line feed")
    fams: dict = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            if name in fams:
                raise ValueError("family %s twice" % name)
            fams[name] = {"help": _unescape(help_text, False), "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            if name != current or fams[name]["type"] is not None or kind not in _TYPES:
                raise ValueError("bad TYPE line %r" % line)
            fams[name]["type"] = kind
        elif line.startswith("#") or not line:
            raise ValueError("unexpected line %r" % line)
        else:
            mm = _SAMPLE.match(line)
            if not mm or current is None or fams[current]["type"] is None:
                raise ValueError("bad sample line %r" % line)
            name = mm.group(1)
            suffixes = ("_bucket", "_sum", "_count") if fams[current]["type"] == "histogram" else ("",)
            if name not in [current + s for s in suffixes]:
                raise ValueError("sample %s outside its family %s" % (name, current))
            labels = _parse_labels(mm.group(3)) if mm.group(3) else {}
            fams[current]["samples"].append((name, labels, _value(mm.group(4))))
    for name, fam in fams.items():
        if fam["type"] == "histogram":
            buckets = [(float(lb["le"].replace("+", "")), v) for n, lb, v in fam["samples"] if n == name + "_bucket"]
            if not buckets or buckets[-1][0] != math.inf:
                raise ValueError("%s lacks the +Inf bucket" % name)
            if [b for b, _ in buckets] != sorted(b for b, _ in buckets):
                raise ValueError("%s buckets out of order" % name)
            if any(v2 < v1 for (_, v1), (_, v2) in zip(buckets, buckets[1:])):
                raise ValueError("%s buckets not cumulative" % name)
            counts = [v for n, _, v in fam["samples"] if n == name + "_count"]
            sums = [v for n, _, v in fam["samples"] if n == name + "_sum"]
            if counts != [buckets[-1][1]] or len(sums) != 1:
                raise ValueError("%s _count/_sum wrong" % name)
    return fams


def sample(fams: dict, name: str, **labels) -> float:
    """The value of one sample (family found by prefix for histogram series)."""
    for fam in fams.values():
        for n, lb, v in fam["samples"]:
            if n == name and all(lb.get(k) == str(x) for k, x in labels.items()):
                return v
    raise KeyError("%s %s" % (name, labels))


# --- format -------------------------------------------------------------------------------------------

def test_histogram_buckets_sum_count():
    reg = m.Registry()
    h = reg.histogram("x_seconds", "latency", (0.01, 0.1, 1))
    for v in (0.005, 0.01, 0.05, 0.5, 5):
        h.observe(v)
    text = reg.render()
    assert "# HELP x_seconds latency\n# TYPE x_seconds histogram\n" in text
    fams = parse_exposition(text)
    assert [(lb["le"], v) for n, lb, v in fams["x_seconds"]["samples"] if n == "x_seconds_bucket"] == [
        ("0.01", 2), ("0.1", 3), ("1", 4), ("+Inf", 5)]
    assert sample(fams, "x_seconds_count") == 5 and sample(fams, "x_seconds_sum") == pytest.approx(5.565)


def test_counter_gauge_and_bad_input():
    reg = m.Registry()
    c = reg.counter("refused_total", "refusals", ("reason",))
    c.inc(2, ("replay",))
    c.inc(1, ("replay",))
    reg.gauge("height", "h", func=lambda: 7)
    reg.gauge("broken", "raises", func=lambda: 1 / 0)
    fams = parse_exposition(reg.render())
    assert sample(fams, "refused_total", reason="replay") == 3 and sample(fams, "height") == 7
    assert fams["broken"]["samples"] == [] and fams["broken"]["type"] == "gauge"
    with pytest.raises(ValueError):
        c.inc(-1, ("replay",))
    with pytest.raises(ValueError):
        c.inc(1)                                   # missing label
    with pytest.raises(ValueError):
        reg.counter("refused_total", "again")
    with pytest.raises(ValueError):
        m.Counter("bad-name", "x")
    with pytest.raises(ValueError):
        m.Counter("ok", "x", ("le",))


def test_label_sets_are_bounded():
    c = m.Counter("c_total", "c", ("reason",))
    for i in range(m.MAX_LABEL_SETS + 50):
        c.inc(1, ("r%d" % i,))
    vals = c.values()
    assert len(vals) == m.MAX_LABEL_SETS + 1 and vals[(m.OVERFLOW,)] == 50


def test_value_format():
    assert [m.format_value(v) for v in (3, 2.0, 0.25, math.inf, -math.inf, math.nan, True)] == [
        "3", "2", "0.25", "+Inf", "-Inf", "NaN", "1"]


def test_reason_label_is_bounded():
    assert reason_label("invalid tx 12") == "invalid tx"
    assert reason_label("rejected proposal: bad root 0x12") == "rejected proposal"
    assert len(reason_label("x" * 500)) == 64 and reason_label(":") == "unknown"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=5, unique=True), st.text(max_size=60),
       st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=20))
def test_roundtrip_any_text(label_values, help_text, observations):
    reg = m.Registry()
    c = reg.counter("any_total", help_text, ("v",))
    for i, lv in enumerate(label_values):
        c.inc(i + 1, (lv,))
    h = reg.histogram("obs", help_text, (1, 10, 1000))
    for o in observations:
        h.observe(o)
    fams = parse_exposition(reg.render())
    assert fams["any_total"]["help"] == help_text
    assert {lb["v"]: v for _, lb, v in fams["any_total"]["samples"]} == {
        lv: i + 1 for i, lv in enumerate(label_values)}
    assert sample(fams, "obs_count") == len(observations)
    assert sample(fams, "obs_bucket", le="10") == sum(1 for o in observations if o <= 10)
    assert sample(fams, "obs_sum") == pytest.approx(sum(observations))


@pytest.mark.parametrize("bad", [
    "x 1\n",                                                       # no HELP/TYPE
    "# HELP x h\n# TYPE x counter\ny 1\n",                         # another family
    '# HELP x h\n# TYPE x counter\nx{a="\n"} 1\n',                  # raw line feed in a label
    "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_sum 1\nx_count 2\n",   # no +Inf
    "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 1\nx_sum 1\nx_count 1\n",
    "# HELP x h\n# TYPE x gauge\nx one\n",
])
def test_parser_rejects(bad):
    with pytest.raises((ValueError, IndexError)):
        parse_exposition(bad)


def test_http_server_answers_metrics_and_404():
    reg = m.Registry()
    reg.counter("hits_total", "hits").inc(4)
    srv = m.WsgiServer("127.0.0.1", 0, m.handler_app(m.metrics_handler(reg))).start()
    try:
        with urllib.request.urlopen(srv.url + "metrics", timeout=5) as r:
            assert r.headers["Content-Type"] == m.CONTENT_TYPE
            assert sample(parse_exposition(r.read().decode()), "hits_total") == 4
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(srv.url + "../etc/passwd", timeout=5)
        assert exc.value.code == 404
    finally:
        srv.stop()


# --- node processes -------------------------------------------------------------------------------

def scrape(port: int) -> dict:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_exposition(r.read().decode())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("mcluster"), metrics=True) as c:
        yield c


def _wait_metrics(port: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return scrape(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_node_metrics_over_http(cluster):
    assert sorted(cluster.metrics_ports) == [0, 1, 2, 3]
    client = LedgerClient(cluster.config_path, prefer=0)
    try:
        gw = cluster.key("gateway")
        now = int(time.time() * 1000)
        txs = [enc.anchor_tx(cluster.config.chain_id, gw, 100 + i, os.urandom(32), 3, now) for i in range(6)]
        results = client.submit_many(txs)
        assert all(r["status"] == "committed" for r in results), results
        a = cluster.config.nodes[0]
        with socket.create_connection((a.host, a.peer_port)) as s:      # junk from "peer 2"
            hello = cbor.dumps(["ledgerlink-peer-v1", cluster.config.chain_id, 2])
            s.sendall(struct.pack(">I", len(hello)) + hello)
            for junk in (b"\x00", cbor.dumps([99, 2, b"x"])):
                s.sendall(struct.pack(">I", len(junk)) + junk)
        with socket.create_connection((a.host, a.peer_port)) as s:
            s.sendall(struct.pack(">I", 5) + b"hello")                   # bad hello
        time.sleep(0.5)
        info = client.request_to(0, "info")
        fams = _wait_metrics(cluster.metrics_ports[0])
        assert sample(fams, "ledgerlink_node_height") >= max(r["height"] for r in results)
        assert sample(fams, "ledgerlink_node_height") >= info["height"] - 1
        assert sample(fams, "ledgerlink_node_view") == info["view"]
        assert sample(fams, "ledgerlink_node_info", index=0, chain_id=cluster.config.chain_id) == 1
        assert sample(fams, "ledgerlink_node_validators") == 4
        assert sample(fams, "ledgerlink_node_committed_transactions_total") >= 6
        assert sample(fams, "ledgerlink_node_submitted_transactions_total") == 6
        assert sample(fams, "ledgerlink_node_commit_latency_seconds_count") == 6
        assert 0 < sample(fams, "ledgerlink_node_commit_latency_seconds_sum") < 60
        dropped = {lb["reason"]: v for n, lb, v in fams["ledgerlink_node_dropped_messages_total"]["samples"]}
        assert sum(dropped.values()) >= 2 and all(not re.search(r"[0-9]", r) for r in dropped)
        assert sample(fams, "ledgerlink_node_dropped_frames_total") >= 1
        other = _wait_metrics(cluster.metrics_ports[1])             # a node that got no submissions
        assert sample(other, "ledgerlink_node_committed_transactions_total") >= 6
        assert sample(other, "ledgerlink_node_commit_latency_seconds_count") == 0
    finally:
        client.close()


def test_metrics_port_survives_restart(cluster):
    port = cluster.metrics_ports[3]
    cluster.restart_node(3)
    assert cluster.metrics_ports[3] == port
    fams = _wait_metrics(port)
    assert sample(fams, "ledgerlink_node_info", index=3, chain_id=cluster.config.chain_id) == 1


def test_metrics_port_serves_beside_partial_requests_and_closes_them(cluster):
    """A node's ``/metrics`` port has the limits of ``ledgerlink.service_http``: a full set of connections
    holding partial requests does not stop a scrape, and the node closes them once idle."""
    port = cluster.metrics_ports[2]
    _wait_metrics(port)
    held = []
    for _ in range(m.MAX_CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Fill: " + b"a" * 1000)
        held.append(s)
    assert sample(_wait_metrics(port), "ledgerlink_node_validators") == 4
    deadline = time.monotonic() + m.IDLE_S + 15
    while held and time.monotonic() < deadline:
        for s in list(held):
            s.settimeout(0.05)
            try:
                if s.recv(65536):
                    continue
            except socket.timeout:
                continue
            except OSError:
                pass
            s.close()
            held.remove(s)
    for s in held:
        s.close()
    assert not held, "%d partial requests still open" % len(held)
