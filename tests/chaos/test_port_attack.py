"""The partial-frame attack of issue 12 on our ports (loopback only, bounded in time): 1,000 connections each
send all but the last byte of a packet at the size limit, to the embedded broker (after a CONNECT with keep
alive 0), to the dashboard's HTTP server and to the virtual board (a program never ended, in the raw REPL);
the server's RSS grows by less than 50 MB, another client is served (meanwhile; on the virtual board, which
serves one client at a time, after them), and every attack connection is closed by the server within its
time limit. The virtual board before its limits let the first connection hold it for ever, with the others
unable to connect (a listen backlog of 1)."""

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
    found = re.search(r"virtual board port: 1000 connections .* grew (\S+) MiB \(target < 50\); another client served "
                      r"after them \(one client at a time, as on a serial port\): yes; closed by the server: 1000 within "
                      r"\S+ s: ok", p.stdout)
    assert found and float(found.group(1)) < 50, p.stdout
