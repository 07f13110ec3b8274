"""The partial-frame attack of issue 12 on our ports (loopback only, bounded in time): 1,000 connections each
send all but the last byte of a packet at the size limit, to the embedded broker (after a CONNECT with keep
alive 0) and to the dashboard's HTTP server; the server's RSS grows by less than 50 MB, another client is
served meanwhile, and every attack connection is closed by the server within its time limit."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_partial_frames_on_1000_connections_are_bounded_and_closed():
    p = subprocess.run([sys.executable, "-m", "ledgerlink.tools.chaos", "--ports", "--packet-timeout", "3"],
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    for port in ("embedded MQTT broker", "dashboard HTTP"):
        found = re.search(r"%s port: 1000 connections .* grew (\S+) MiB \(target < 50\); another client served: yes; "
                          r"closed by the server: 1000 within \S+ s: ok" % port, p.stdout)
        assert found and float(found.group(1)) < 50, p.stdout
