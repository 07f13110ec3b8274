"""The dashboard in headless Chromium against a running gateway process (mosquitto, a 4-node ledger): the
plots draw exactly the values the API served, the proof explorer shows a stored reading's chain verified
and a tampered receipt failed, and the receipt it offers for download passes ``ledgerlink admin
verify-receipt`` offline while the same file with one byte changed fails."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ledgerlink.core import cbor, cose
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster

from tests.gateway.test_dashboard import (CRYPTO, MOSQUITTO, _free_port, chromium, register, render_dom, start_gateway,
                                         stop_live)

SITE = "dashplot"
READINGS = 8
ATTR_RE = re.compile(r'([\w:-]+)="([^"]*)"')
VERTEX_RE = re.compile(r"([ML])(-?[\d.]+) (-?[\d.]+)")


def attrs(tag: str) -> dict[str, str]:
    return dict(ATTR_RE.findall(tag))


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A gateway process with its dashboard, fed READINGS signed readings of one device and one forged frame."""
    import paho.mqtt.client as mqtt

    chromium()                                             # fails, does not skip, when missing
    tmp = tmp_path_factory.mktemp("dash")
    port = _free_port()
    broker = subprocess.Popen([MOSQUITTO, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = LocalCluster(tmp / "ledger", nodes=4)
    gw_proc = client = pub = None
    try:
        cluster.start()
        client = LedgerClient(cluster.config_path)
        priv, dev = register(client, cluster, {"name": "boiler-7"})
        gw_proc, url = start_gateway(tmp, port, SITE, "gw-plot-1")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dash-plot", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        topic = "ll/%s/dev/%s/up" % (SITE, dev.hex())
        for seq in range(1, READINGS + 1):
            body = cbor.dumps({1: dev, 2: seq, 3: int(time.time() * 1000), 4: {"t": 20 + seq / 4, "rh": 60 - seq}})
            pub.publish(topic, cose.sign1(body, priv, dev, topic.encode(), CRYPTO), qos=1).wait_for_publish(5)
            time.sleep(0.3)
        forged = cbor.dumps({1: dev, 2: READINGS + 1, 3: int(time.time() * 1000), 4: {"t": 99}})
        pub.publish(topic, cose.sign1(forged, CRYPTO.generate_private_key(), dev, topic.encode(), CRYPTO),
                    qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 30
        while True:
            st = json.loads(fetch(url + "api/state"))
            hist = json.loads(fetch(url + "api/history"))
            if st["totals"]["receipts"] >= READINGS and st["totals"]["refused"] >= 1 and len(hist["t"]) >= 4 \
                    and sum(hist["series"]["receipts_per_s"]) > 0:
                break
            assert time.monotonic() < deadline, (st["totals"], hist)
            time.sleep(0.3)
        yield type("Live", (), {"url": url, "dev": dev.hex(), "tmp": tmp, "cluster": cluster.config_path})
    finally:
        stop_live(pub, gw_proc, client, cluster, broker)


def plots(dom: str, holder_attr: str) -> dict[str, tuple[dict, dict]]:
    """(svg attributes, line attributes) of each plot in a figure with ``holder_attr``, by its value."""
    out = {}
    for holder, inner in re.findall(r'<(?:figure|span)([^>]*%s="[^"]*"[^>]*)>(.*?)</(?:figure|span)>' % holder_attr,
                                    dom, re.S):
        svg = re.search(r"<svg([^>]*)>", inner)
        line = re.search(r'<path([^>]*class="line"[^>]*)>', inner)
        if svg and line:
            out[attrs(holder)[holder_attr]] = (attrs(svg.group(1)), attrs(line.group(1)))
    return out


def check_plot(svg: dict, line: dict, served_t: list, served_v: list) -> int:
    """The line's points are values the API served at those times, and each vertex sits where the plot's
    scale puts that value; returns the number of points drawn."""
    served = dict(zip(served_t, served_v))
    t = [int(x) for x in line["data-t"].split(",")] if line["data-t"] else []
    v = [None if x == "" else float(x) for x in line["data-v"].split(",")] if t else []
    assert len(t) == len(v) == int(svg["data-points"]) >= 3
    for ti, vi in zip(t, v):
        assert ti in served and served[ti] == vi, (ti, vi, served.get(ti))
    x0, y0, w, h = (float(svg[k]) for k in ("data-x", "data-y", "data-w", "data-h"))
    t0, t1, lo, hi = (float(svg[k]) for k in ("data-t0", "data-t1", "data-y0", "data-y1"))
    drawn = [(ti, vi) for ti, vi in zip(t, v) if vi is not None]
    vertices = VERTEX_RE.findall(line["d"])
    assert len(vertices) == len(drawn)
    for (_, x, y), (ti, vi) in zip(vertices, drawn):
        assert float(x) == pytest.approx(x0 + (ti - t0) / (t1 - t0) * w, abs=0.01)
        assert float(y) == pytest.approx(y0 + h - (vi - lo) / (hi - lo) * h, abs=0.01)
    assert lo <= min(vi for _, vi in drawn) and max(vi for _, vi in drawn) <= hi
    return len(drawn)


@pytest.mark.slow
def test_plots_draw_the_values_the_api_served(live):
    dom = render_dom(live.url, live.tmp / "profile-overview")
    hist = json.loads(fetch(live.url + "api/history"))        # after the page's fetch: a superset of its points
    site_plots = plots(dom, "data-series")
    assert set(site_plots) == set(hist["series"])
    for name, (svg, line) in site_plots.items():
        check_plot(svg, line, hist["t"], hist["series"][name])
    assert any(float(v) > 0 for v in site_plots["receipts_per_s"][1]["data-v"].split(",") if v)
    readings = json.loads(fetch(live.url + "api/readings?last=60"))[live.dev]
    svg, line = plots(dom, "data-device")[live.dev]
    assert check_plot(svg, line, readings["t"], readings["series"]["t"]) == READINGS

    dom = render_dom(live.url + "device?id=" + live.dev, live.tmp / "profile-device")
    device = json.loads(fetch(live.url + "api/device?id=" + live.dev))["history"]
    device_plots = plots(dom, "data-key")
    assert set(device_plots) == {"t", "rh"}
    for key, (svg, line) in device_plots.items():
        assert check_plot(svg, line, device["t"], device["series"][key]) == READINGS
    assert [float(x) for x in device_plots["rh"][1]["data-v"].split(",")] == [60 - s for s in range(1, READINGS + 1)]
    assert "boiler-7" in dom and "<td>bad-signature</td>" in dom and '<code class="key">' in dom


def verify_receipt_cli(live, receipt: Path, frame: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", "admin", "--cluster", str(live.cluster),
                           "verify-receipt", str(receipt), "--frame", str(frame)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_explorer_download_verifies_offline_and_tampered_receipt_fails(live):
    dom = render_dom(live.url + "proof?device=%s&seq=3" % live.dev, live.tmp / "profile-proof")
    assert '<p class="verdict-line ok" data-ok="true">' in dom and dom.count('data-ok="true"') == 6
    for step in ("frame", "batch", "anchor", "header", "receipt"):
        assert '<li class="step ok" data-step="%s" data-ok="true">' % step in dom
    receipt_href = attrs(re.search(r'<a ([^>]*id="download-receipt"[^>]*)>', dom).group(1))["href"]
    frame_href = attrs(re.search(r'<a ([^>]*id="download-frame"[^>]*)>', dom).group(1))["href"]
    receipt = fetch(live.url + receipt_href.replace("&amp;", "&").lstrip("/"))
    frame = fetch(live.url + frame_href.replace("&amp;", "&").lstrip("/"))
    (live.tmp / "receipt.cbor").write_bytes(receipt)
    (live.tmp / "frame.cbor").write_bytes(frame)
    ok = verify_receipt_cli(live, live.tmp / "receipt.cbor", live.tmp / "frame.cbor")
    assert ok.returncode == 0 and ok.stdout.startswith("receipt verified: frame"), ok.stdout + ok.stderr

    tampered = bytearray(receipt)
    tampered[-10] ^= 0x01                                   # inside the last commit signature of the header
    (live.tmp / "tampered.cbor").write_bytes(bytes(tampered))
    bad = verify_receipt_cli(live, live.tmp / "tampered.cbor", live.tmp / "frame.cbor")
    assert bad.returncode == 1 and "receipt does NOT verify" in bad.stderr, bad.stdout + bad.stderr

    dom = render_dom(live.url + "proof?device=%s&seq=3&receipt=%s" % (live.dev, tampered.hex()),
                     live.tmp / "profile-tampered")
    given = dom[dom.index('id="given-chain"'):]
    assert given.startswith('id="given-chain"><p class="verdict-line failed" data-ok="false">does NOT verify')
    assert '<li class="step failed" data-step="header" data-ok="false">' in given
    assert '<li class="step failed" data-step="receipt" data-ok="false">' in given
    assert '<li class="step ok" data-step="batch" data-ok="true">' in given      # what was not changed still checks


@pytest.mark.slow
def test_explorer_checks_a_receipt_file_chosen_in_the_page(live):
    """Through the page as an operator uses it (DevTools protocol): choose the receipt file, the script reads
    it into the form, submit; the stored receipt verifies, the same file with one byte changed fails."""
    from tests.dashboard.cdp import Browser

    receipt = fetch(live.url + "api/receipt?device=%s&seq=2" % live.dev)
    tampered = bytearray(receipt)
    tampered[10] ^= 0x01                                    # inside the frame hash (the batch leaf)
    browser = Browser(chromium(), live.tmp / "profile-cdp")
    try:
        browser.call("Page.enable")
        for data, name, verdict in ((receipt, "good.cbor", "true"), (bytes(tampered), "bad.cbor", "false")):
            path = live.tmp / name
            path.write_bytes(data)
            browser.navigate(live.url + "proof?device=%s&seq=2" % live.dev)
            root = browser.call("DOM.getDocument")["root"]["nodeId"]
            node = browser.call("DOM.querySelector", nodeId=root, selector="#receipt-file")["nodeId"]
            browser.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])
            assert browser.wait_for("document.getElementById('receipt-hex').value") == data.hex()
            browser.events.clear()
            browser.evaluate("document.querySelector('form.check').submit()")
            browser.wait_event("Page.loadEventFired")
            shown = browser.wait_for("(() => { const v = document.querySelector('#given-chain .verdict-line');"
                                     " return v && [v.dataset.ok, [...document.querySelectorAll("
                                     "'#given-chain li.step')].map((s) => s.dataset.step + ':' + s.dataset.ok)]; })()")
            assert shown[0] == verdict, shown
            if verdict == "false":
                assert shown[1] == ["frame:false", "batch:false", "anchor:true", "header:true", "receipt:false"]
            else:
                assert all(s.endswith(":true") for s in shown[1]) and len(shown[1]) == 5
    finally:
        browser.close()
