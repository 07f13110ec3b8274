"""Gateway metrics and dashboard: ``/metrics`` and ``/api/state`` of a GatewayService fed real frames, and
the page rendered by headless Chromium against a running gateway process (mosquitto, a 4-node ledger).

Device-provided text (a registered device name, measurement keys and values, a hostile topic) carries
markup that would run script if the page ever inserted it as HTML; the tests check it arrives as text.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest

from ledgerlink.core import cbor, cose
from ledgerlink.core.backend import get_backend
from ledgerlink.gateway import checks as c
from ledgerlink.gateway.batcher import Batcher
from ledgerlink.gateway.dashboard import Dashboard, state_json
from ledgerlink.gateway.metrics import GatewayMetrics, jsonable
from ledgerlink.gateway.service import GatewayService, fetch_registry
from ledgerlink.gateway.store import Store
from ledgerlink.ledger.client import LedgerClient
from ledgerlink.ledger.cluster import LocalCluster, write_key
from ledgerlink.service_http import CONTENT_TYPE
from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import Role
from tests.devnet import DevNet
from ledgerlink.tools.stack import stop_process

from tests.gateway.fake_ledger import FakeLedgerAdapter
from tests.gateway.test_checks import NOW, SITE, reading, up
from tests.ledger.test_node_metrics import parse_exposition, sample

CRYPTO = get_backend("cpython")
EVIL_NAME = "<img src=x onerror=\"document.body.setAttribute('data-pwned','name')\">"
EVIL_KEY = "<script>document.body.setAttribute('data-pwned','key')</script>"
EVIL_VALUE = "</td><b id=pwned>&amp;</b>"


class Clock:
    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += int(seconds * 1000)
        self.mono += seconds


class Msg:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload, self.mid, self.qos = topic, payload, 1, 1


@pytest.fixture
def site(tmp_path):
    """A GatewayService with metrics over a FakeLedgerAdapter; ``deliver`` runs a frame like the adapter."""
    ledger = FakeLedgerAdapter(clock=lambda: DevNet().time_ms)
    net = ledger.net
    ledger.commit_block([net.register("admin", "evil", Role.SENSOR, {"name": EVIL_NAME},
                                      time_ms=ledger.state.last_time)], ledger.state.last_time)
    keys = c.GatewayKeys(net["gateway"].priv, net["gw-ca"].priv, net["gw-site"].priv)
    core = c.GatewayCore(SITE, keys, net.chain_id, ledger.keys, c.Limits(rate_per_s=1, burst=3), backend=CRYPTO)
    svc = GatewayService(core, Store(tmp_path / "gw.db"))
    batcher = Batcher(svc.store, ledger, SITE, net.chain_id, ledger.keys, net["gateway"].priv)
    clock = Clock()
    queued: list = []
    gw = types.SimpleNamespace(service=svc, batcher=batcher, ledger=ledger,
                               client=types.SimpleNamespace(on_message=lambda cl, u, m: queued.append(m)))
    metrics = GatewayMetrics(core, offline_after_s=30, wall_ms=lambda: clock.wall,
                             mono=lambda: clock.mono).instrument(gw)

    def deliver(topic: str, frame: bytes, wait: float = 0.0):
        metrics.arrived([CRYPTO.sha256(frame)])                  # as the MQTT adapter stamps an arrival
        gw.client.on_message(None, None, Msg(topic, frame))     # then the check queue
        clock.advance(wait)
        m = queued.pop()
        h = svc.handle_frame(m.topic, m.payload, clock.wall)
        for dev in h.fetch:
            clock.advance(0.005)
            more = svc.handle_registry(dev, fetch_registry(ledger, dev), clock.wall)
            h.outgoing += more.outgoing
        return h

    yield types.SimpleNamespace(ledger=ledger, net=net, core=core, svc=svc, batcher=batcher, clock=clock,
                                metrics=metrics, deliver=deliver, gw=gw)
    svc.store.close()


def codes(h) -> list[int]:
    return [cbor.loads(o.payload)[2] for o in h.outgoing if o.topic.endswith("/down") and cbor.loads(o.payload)[0] == 2]


def feed_scenario(s) -> None:
    """Accepted, bad signature, replay, unknown, banned, rate-limited and hostile frames."""
    net, t = s.net, s.clock
    for seq in (1, 2):
        assert codes(s.deliver(up(net["sensor"].id), reading(net, "sensor", seq, t=t.wall), wait=0.02)) == []
    assert codes(s.deliver(up(net["sensor"].id), reading(net, "sensor", 3, t=t.wall, key="actuator"))) == [
        c.BAD_SIGNATURE]
    assert codes(s.deliver(up(net["sensor"].id), reading(net, "sensor", 1, t=t.wall))) == [c.REPLAY]
    assert codes(s.deliver(up(net["stranger"].id), reading(net, "stranger", 1, t=t.wall))) == [c.UNKNOWN_DEVICE]
    s.ledger.ban("actuator")
    assert codes(s.deliver(up(net["actuator"].id), reading(net, "actuator", 1, t=t.wall))) == [c.BANNED_DEVICE]
    evil = net["evil"].id
    for seq in (1, 2, 3, 4):
        h = s.deliver(up(evil), reading(net, "evil", seq, t=t.wall, meas={EVIL_KEY: EVIL_VALUE, "n": seq}))
    assert codes(h) == [c.RATE_LIMITED]
    h = s.deliver("ll/%s/dev/<b>x</b>/up" % SITE, b"\xd2junk")       # refused without a reply topic
    assert h.outgoing == [] and len(h.decided) == 1 and s.metrics.warnings[0]["code"] == c.WRONG_TOPIC


def test_metrics_count_refusals_latency_batches_receipts(site):
    feed_scenario(site)
    site.clock.advance(0.5)
    out = site.batcher.step(site.clock.wall, force=True)
    receipts = [o for o in out if o.topic.endswith("/down")]
    assert len(receipts) == 5                          # sensor 1, 2 and evil 1..3
    fams = parse_exposition(site.metrics.registry.render())
    assert sample(fams, "ledgerlink_gateway_frames_received_total") == 11
    assert sample(fams, "ledgerlink_gateway_accepted_total", mode="sign1") == 5
    for code, name in ((5, "bad-signature"), (7, "replay"), (3, "unknown-device"), (4, "banned-device"),
                       (9, "rate-limited"), (12, "wrong-topic")):
        assert sample(fams, "ledgerlink_gateway_refused_total", code=code, reason=name) == 1
    assert sample(fams, "ledgerlink_gateway_accept_latency_seconds_count") == 5
    assert sample(fams, "ledgerlink_gateway_accept_latency_seconds_bucket", le="0.01") == 3   # evil: no wait
    assert sample(fams, "ledgerlink_gateway_accept_latency_seconds_sum") == pytest.approx(0.02 * 2 + 0.005 * 2)
    assert sample(fams, "ledgerlink_gateway_receipts_total") == 5
    assert sample(fams, "ledgerlink_gateway_receipt_latency_seconds_count") == 5
    assert sample(fams, "ledgerlink_gateway_receipt_latency_seconds_bucket", le="0.25") == 0
    assert sample(fams, "ledgerlink_gateway_receipt_latency_seconds_bucket", le="1") == 5
    assert sample(fams, "ledgerlink_gateway_batch_size_count") == 1
    assert sample(fams, "ledgerlink_gateway_batch_size_bucket", le="4") == 0
    assert sample(fams, "ledgerlink_gateway_batch_size_bucket", le="8") == 1
    assert sample(fams, "ledgerlink_gateway_batch_size_sum") == 5
    assert {lb["state"]: v for _, lb, v in fams["ledgerlink_gateway_devices"]["samples"]} == {
        "online": 2, "offline": 0, "banned": 1, "unregistered": 1}
    assert sample(fams, "ledgerlink_gateway_ledger_height") == site.core.header.height


def test_api_state_devices_warnings_and_offline(site):
    feed_scenario(site)
    net = site.net
    dash = Dashboard(site.metrics, site.ledger, poll_s=0.05).start("127.0.0.1", 0)
    try:
        deadline = time.monotonic() + 5
        while site.metrics.ledger["height"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with urllib.request.urlopen(dash.url + "api/state", timeout=5) as r:
            assert r.headers["Content-Type"] == "application/json; charset=utf-8"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            raw = r.read()
        assert b"<" not in raw and b">" not in raw        # markup characters escaped inside JSON strings
        st = json.loads(raw)
        states = {d["id"]: d for d in st["devices"]}
        assert states[net["sensor"].id.hex()]["state"] == "online"
        assert states[net["actuator"].id.hex()]["state"] == "banned"
        assert states[net["actuator"].id.hex()]["ban_reason"] == "test ban"
        assert states[net["stranger"].id.hex()]["state"] == "unregistered"
        assert states[net["evil"].id.hex()]["name"] == EVIL_NAME
        assert (states[net["sensor"].id.hex()]["accepted"], states[net["sensor"].id.hex()]["refused"]) == (2, 2)
        assert [w["reason"] for w in st["warnings"]] == [
            "wrong-topic", "rate-limited", "banned-device", "unknown-device", "replay", "bad-signature"]
        assert st["recent"][0]["measurements"] == {EVIL_KEY: EVIL_VALUE, "n": 3}
        assert st["ledger"]["height"] == site.ledger.height and st["ledger"]["error"] is None
        assert st["ledger"]["validators"] == [k.hex() for k in site.ledger.keys] and st["ledger"]["quorum"] == 3
        site.clock.advance(31)                             # no frame for longer than offline_after_s
        st = site.metrics.state()
        assert {d["id"]: d["state"] for d in st["devices"]}[net["sensor"].id.hex()] == "offline"
        with urllib.request.urlopen(dash.url + "metrics", timeout=5) as r:
            assert r.headers["Content-Type"] == CONTENT_TYPE
            assert sample(parse_exposition(r.read().decode()), "ledgerlink_gateway_devices", state="offline") == 2
        with urllib.request.urlopen(dash.url, timeout=5) as r:
            page = r.read().decode()
        assert '<script src="/static/app.js"' in page and "<script>" not in page
        for bad in ("static/../dashboard.py", "static/app.js.map", "etc/passwd"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(dash.url + bad, timeout=5)
            assert exc.value.code == 404
    finally:
        dash.stop()


def test_ledger_poll_refuses_forged_header(site):
    forged = FakeLedgerAdapter(DevNet(chain_id=site.net.chain_id, seed=b"other validators"))
    site.metrics.poll_ledger(forged)
    assert site.metrics.ledger["height"] is None and site.metrics.ledger["error"]
    site.ledger.available = False
    site.metrics.poll_ledger(site.ledger)
    assert "down" in site.metrics.ledger["error"]
    site.ledger.available = True
    site.metrics.poll_ledger(site.ledger)
    assert site.metrics.ledger["height"] == site.ledger.height and site.metrics.ledger["error"] is None


def test_jsonable_bounds_device_values():
    v = jsonable({b"\x01": [1.5, float("nan"), 2 ** 70, "x" * 1000, {"deep": {"er": {"still": {"more": {}}}}}],
                  3: cbor.Tag(1, 5)})
    assert v["h'01'"][:3] == [1.5, "nan", str(2 ** 70)] and len(v["h'01'"][3]) == 200
    assert v["3"] == {"tag": 1, "value": 5}
    assert json.loads(state_json({"s": "</script><b>&"})) == {"s": "</script><b>&"}
    assert b"<" not in state_json({"s": "</script>"})


# --- the page in headless Chromium against a running gateway ------------------------------------------

MOSQUITTO = "/usr/sbin/mosquitto"
E2E_SITE = "dash"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise FileNotFoundError("chromium is required for the dashboard test: apt-get install -y chromium")
    return path


def render_dom(url: str, profile: Path) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--user-data-dir=%s" % profile, "--virtual-time-budget=5000",
           "--dump-dom", url]
    res = subprocess.run(cmd, capture_output=True, timeout=90)
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    return res.stdout.decode()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_log(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 30.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text()) if path.exists() else None
        if found:
            return found
        if proc.poll() is not None:
            raise RuntimeError("gateway exited: " + path.read_text())
        time.sleep(0.05)
    raise TimeoutError("no %r in %s" % (pattern, path))


def register(client: LedgerClient, cluster: LocalCluster, attrs: dict) -> tuple[int, bytes]:
    """A new device key registered by the cluster's admin with ``attrs``: (private key, device id)."""
    priv = CRYPTO.generate_private_key()
    req = enc.registration_request(priv, 1, attrs, int(time.time() * 1000))
    res = client.submit(enc.register_tx(cluster.config.chain_id, cluster.key("admin"), req, int(time.time() * 1000)))
    assert res["status"] == "committed" and res["code"] == 0, res
    return priv, enc.device_id(CRYPTO.public_key(priv, True))


def start_gateway(tmp: Path, port: int, site: str, client_id: str) -> tuple[subprocess.Popen, str]:
    """A gateway process for ``site`` on the broker at ``port`` and the cluster in ``tmp``/ledger, subscribed,
    with its dashboard: (process, dashboard URL)."""
    for name in ("gw-ca", "gw-site"):
        write_key(tmp / "ledger" / "keys" / (name + ".key"), CRYPTO.generate_private_key())
    cfg = {"site": site, "mqtt": {"host": "127.0.0.1", "port": port, "client_id": client_id},
           "store": str(tmp / "gw.db"),
           "keys": {"identity": "ledger/keys/gateway.key", "ca": "ledger/keys/gw-ca.key",
                    "site": "ledger/keys/gw-site.key"},
           "ledger": {"cluster": "ledger/cluster.json"}, "batch": {"max": 64, "interval_ms": 100},
           "http": {"host": "127.0.0.1", "port": 0, "offline_after_s": 60, "poll_s": 0.5}}
    (tmp / "gw.json").write_text(json.dumps(cfg))
    log = tmp / "gw.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "ledgerlink.gateway.main", "--config", str(tmp / "gw.json")],
                                stdout=f, stderr=subprocess.STDOUT)
    try:
        url = _wait_log(log, r"dashboard on (http://127\.0\.0\.1:\d+/)", proc).group(1)
        _wait_log(log, "subscribed", proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


def stop_live(pub, gw_proc, client, cluster: LocalCluster, broker: subprocess.Popen) -> None:
    """Stop what a live dashboard test started (the parts that were not started are None)."""
    if pub is not None:
        pub.loop_stop()
        pub.disconnect()
    stop_process(gw_proc, 15)
    if client is not None:
        client.close()
    cluster.stop()
    broker.terminate()
    broker.wait(10)


def test_dashboard_renders_in_chromium_against_running_gateway(tmp_path):
    import paho.mqtt.client as mqtt

    chromium()                                             # fails, does not skip, when missing
    port = _free_port()
    broker = subprocess.Popen([MOSQUITTO, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = LocalCluster(tmp_path / "ledger", nodes=4)
    gw_proc = client = pub = None
    try:
        cluster.start()
        client = LedgerClient(cluster.config_path)
        devs = {"good": register(client, cluster, {"name": "boiler-1"}),
                "evil": register(client, cluster, {"name": EVIL_NAME})}
        gw_proc, url = start_gateway(tmp_path, port, E2E_SITE, "gw-dash-1")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dash-test", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", port)
        pub.loop_start()

        def send(name: str, seq: int, meas: dict, key: str | None = None) -> None:
            priv, dev = devs[name]
            topic = "ll/%s/dev/%s/up" % (E2E_SITE, dev.hex())
            body = cbor.dumps({1: dev, 2: seq, 3: int(time.time() * 1000), 4: meas})
            frame = cose.sign1(body, devs[key or name][0], dev, topic.encode(), CRYPTO)
            pub.publish(topic, frame, qos=1).wait_for_publish(5)

        send("good", 1, {"t": 21})
        send("good", 2, {"t": 22})
        send("evil", 1, {EVIL_KEY: EVIL_VALUE})
        send("good", 3, {"t": 23}, key="evil")             # bad signature
        deadline = time.monotonic() + 20
        while True:
            with urllib.request.urlopen(url + "api/state", timeout=5) as r:
                st = json.loads(r.read())
            if st["totals"]["receipts"] >= 3 and st["totals"]["refused"] >= 1 and st["ledger"]["height"]:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
        height = st["ledger"]["height"]

        dom = render_dom(url, tmp_path / "chromium-profile")
        good, evil = devs["good"][1].hex(), devs["evil"][1].hex()
        assert 'id="devices"' in dom and 'title="%s"' % good in dom and 'title="%s"' % evil in dom
        assert "boiler-1" in dom and 'class="state state-online">online<' in dom
        assert re.search(r"<td>5</td><td>bad-signature</td><td>signature does not verify", dom)
        shown = int(re.search(r'id="ledger-height">(\d+)<', dom).group(1))
        assert height <= shown <= height + 20
        assert re.search(r'id="status" class="status ok">updated', dom)
        for k in cluster.config.validators:
            assert "<li>%s</li>" % k.hex() in dom
        # hostile text is shown as text: escaped in the serialized DOM, no element or attribute it asked for
        assert "&lt;img src=x onerror=\"document.body.setAttribute('data-pwned','name')\"&gt;" in dom
        assert "&lt;script&gt;document.body.setAttribute" in dom and "&lt;/td&gt;&lt;b id=pwned&gt;" in dom
        assert "data-pwned=" not in dom and 'id="pwned"' not in dom and "<img" not in dom
    finally:
        stop_live(pub, gw_proc, client, cluster, broker)
