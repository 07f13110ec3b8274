"""``python3 -m ledgerlink.tools.chaos`` on real processes: a seeded fault schedule (gateways, ledger nodes,
the broker and devices, CPython and one MicroPython client on board32, killed, stopped and started again)
after which every reading is stored once, anchored and its receipt checked by its device, no anchored
transaction is missing from the ledger and no process is left; and the backlog of a device that was
offline drains."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

CHAOS = [sys.executable, "-m", "ledgerlink.tools.chaos"]


def test_a_seeded_fault_schedule_loses_nothing(tmp_path):
    # seed 324 kills the broker, both gateways at once, a device and the primary, and stops a node
    p = subprocess.run(CHAOS + ["--seeds", "324:325", "--duration", "8", "--board", "--keep", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    seed = re.search(r"seed 324: ok; (\d+) readings \((\d+) by the board32 client\): lost 0, stored twice 0, "
                     r"not anchored 0, without receipt 0; ledger txs lost 0; processes left 0", p.stdout)
    # the board32 client makes 2 readings a second once it runs; on a loaded machine it starts late (4 seen)
    assert seed and int(seed.group(1)) >= 20 and int(seed.group(2)) >= 2, p.stdout
    for fault in ("broker-kill 1", "node-stop 1", "gateways-kill 1", "device-kill 1", "primary-kill 1"):
        assert fault in p.stdout, p.stdout
    waits = re.search(r"first new receipt after a gateway restart p50 \S+ s, p99 (\S+) s", p.stdout)
    assert waits and float(waits.group(1)) < 30, p.stdout
    assert (tmp_path / "seed324" / "site" / "status.json").exists()


def test_an_offline_backlog_drains(tmp_path):
    p = subprocess.run(CHAOS + ["--outage", "--outage-s", "40", "--outage-rate", "40", "--keep", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"outage: a 1 Hz device offline 40 s \(4\d readings, made at 40/s\): drained in \S+ s; "
                     r"refusals seen \d+ \(each retried\); lost 0, stored twice 0, without receipt 0; processes left 0",
                     p.stdout), p.stdout
