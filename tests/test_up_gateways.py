"""``ledgerlink up`` with two gateway processes in one shared subscription: a member stopped with SIGTERM
(today it kept its share of the frames for its 3600 s session expiry) or killed is started again and
resumes its session, so every frame the broker dealt it gets its receipt within seconds, while the other
member keeps serving."""

import os
import re
import signal
import time

import pytest

from tests.test_up import (_SiteDevice, _all_gone, _cmdline, _pids_of, _rest, _start_up, _status, _stop_up, _wait_line,
                           free_port, write_config)

pytestmark = pytest.mark.slow


def test_a_stopped_gateway_member_strands_no_frame(tmp_path):
    cfg = write_config(tmp_path / "up.json", data_dir="site", site="two", ledger={"nodes": 4},
                       broker={"port": free_port()}, gateway={"processes": 2})
    proc, q, text = _start_up("--broker", "mosquitto", "--config", str(cfg))
    site_dir = tmp_path / "site"
    seen: list[str] = []
    dev = None
    pids: list[int] = []
    try:
        broker = int(re.search(r"broker: mqtt://127.0.0.1:(\d+)", text).group(1))
        pids = _pids_of(text)
        gateways = [p for p in pids if b"ledgerlink.gateway.main" in _cmdline(p)]
        assert len(gateways) == 2
        second = [p for p in gateways if b"gateway-2.json" in _cmdline(p)][0]
        dev = _SiteDevice(site_dir, "two", broker, 11)
        warm = [dev.publish() for _ in range(2)]
        assert dev.receipts(warm, 30) == {f.seq for f in warm}

        os.kill(second, signal.SIGTERM)
        _wait_line(q, seen, r"gateway 2 exited with status 0 \(see .*gateway-2\.log\); starting it again")
        during = [dev.publish() for _ in range(10)]             # about half are dealt to the stopped member
        started = time.monotonic()
        assert dev.receipts(during, 30) == {f.seq for f in during}
        assert time.monotonic() - started < 20
        _wait_line(q, seen, r"gateway 2 restarted")
        first = [p for p in gateways if p != second][0]
        os.kill(first, signal.SIGKILL)
        _wait_line(q, seen, r"gateway 1 exited with status -9")
        after = [dev.publish() for _ in range(10)]
        assert dev.receipts(after, 30) == {f.seq for f in after}
        status = _status(site_dir)
        assert status["gateway 1"]["restarts"] == 1 and status["gateway 2"]["restarts"] == 1
        assert status["gateway 2"]["last_exit"] == 0 and status["gateway 1"]["last_exit"] == -9
        pids += [status["gateway 1"]["pid"], status["gateway 2"]["pid"]]
        lines = _stop_up(proc, q, seen)
    finally:
        if dev is not None:
            dev.close()
        if proc.poll() is None:
            _rest(proc, q)
    assert "stopped" in lines[-1]
    assert _all_gone(pids)
