"""Two gateway processes of one site behind one MQTT 5 shared subscription (real mosquitto, real
ledger): a device's session opened through either process works through both, every reading gets
one receipt, and a replayed frame is refused whichever process receives it."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from ledgerlink.core import cbor
from ledgerlink.protocol import stored_ack
from ledgerlink.device.core import MODE_SESSION, DeviceCore, MemoryCounter, ReceiptResult, SequenceCounter
from ledgerlink.tools.stack import Stack, launch_gateway, stop_process
from tests.mqtt_helpers import subscriber

pytestmark = pytest.mark.slow



def _accepted(url: str) -> float:
    with urllib.request.urlopen(url + "metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(v) for v in re.findall(r"^ledgerlink_gateway_accepted_total(?:\{[^}]*\})? (\S+)$", text, re.M))


def test_two_gateway_processes_share_sessions_and_replay_protection(tmp_path):
    site = tmp_path / "site"
    s = Stack(site, site="two", broker="mosquitto")
    s.start()
    second = None
    app = None
    try:
        cfg = json.loads((site / "gateway.json").read_text())
        cfg["mqtt"]["client_id"] = "ll-gw-two-2"
        s.access.add("ll-gw-two-2", "gateway")
        cfg["mqtt"]["credentials"] = str(s.access.credentials_path("ll-gw-two-2"))
        cfg["store"] = str(site / cfg["store"])
        cfg["keys"] = {k: str(site / v) for k, v in cfg["keys"].items()}
        cfg["ledger"]["cluster"] = str(site / cfg["ledger"]["cluster"])
        (site / "gw2").mkdir()
        second, url2 = launch_gateway(cfg, site / "gw2", 30)
        dev = DeviceCore(bytes(range(3, 35)), "two", SequenceCounter(MemoryCounter()), s.chain_id, s.validators,
                         ca_public=s.public_key("gw-ca"))
        s.register([dev.registration_request(int(time.time() * 1000), attributes={"name": "probe"}).payload])
        app, q = subscriber(s.broker_port, "ll/two/dev/%s/down" % dev.device_id.hex(), "test-two-gw",
                            s.device_login(dev.device_id))

        def publish(frame) -> None:
            app.publish(frame.topic, frame.payload, qos=1).wait_for_publish(5)

        def answers(n: int, timeout: float = 40) -> list:
            out, deadline = [], time.monotonic() + timeout
            while len(out) < n:
                _, payload = q.get(timeout=max(0.1, deadline - time.monotonic()))
                if cbor.loads(payload)[0] != stored_ack.KIND_STORED:         # the device client checks these
                    out.append(dev.handle_down(payload, int(time.time() * 1000)))
            return out

        publish(dev.session_request(int(time.time() * 1000)))
        [opened] = answers(1)
        assert type(opened).__name__ == "SessionOpened", opened
        frames = [dev.reading({"i": i}, int(time.time() * 1000), MODE_SESSION) for i in range(30)]
        for f in frames:
            publish(f)
        results = answers(30)
        assert all(isinstance(r, ReceiptResult) and r.valid for r in results), results
        assert sorted(r.seq for r in results) == [f.seq for f in frames]
        a, b = _accepted(s.dashboard_url), _accepted(url2)
        assert a + b == 30 and a > 0 and b > 0, (a, b)                # both processes took part
        for f in frames[:6]:                                          # copies land on either process
            publish(f)
        replies = [cbor.loads(q.get(timeout=30)[1]) for _ in range(12)]
        # each stored frame is answered with its stored-ack and its receipt, never refused as a replay
        assert sorted(r[0] for r in replies) == [1] * 6 + [stored_ack.KIND_STORED] * 6, replies
        for kind in (1, stored_ack.KIND_STORED):
            assert sorted(r[1] for r in replies if r[0] == kind) == sorted(f.frame_hash for f in frames[:6])
        assert _accepted(s.dashboard_url) + _accepted(url2) == 30
    finally:
        if app is not None:
            app.loop_stop()
            app.disconnect()
        stop_process(second, 15)
        s.stop()
