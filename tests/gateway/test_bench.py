"""``python3 -m ledgerlink.gateway.bench`` in a small run: every phase accepts every reading and the table
gives a number in every row."""

import re
import subprocess
import sys

import pytest

from ledgerlink.gateway import bench

pytestmark = pytest.mark.slow


def test_small_run_accepts_everything_and_fills_the_table(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ledgerlink.gateway.bench", "--devices", "40", "--messages", "400", "--latency-s", "0.5",
         "--rate", "200", "--session-devices", "20", "--window", "200", "--reg-batch", "20"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "signed mode: 400 of 400 accepted" in text, text
    assert "session mode: 420 of 420 accepted" in text, text      # 400 readings and a chain statement per device
    assert "0 without receipt" in text, text
    shares = re.findall(r"CPU ms per message: gateway ([\d.]+), broker ([\d.]+), ledger ([\d.]+), "
                        r"load generator ([\d.]+); machine (\d+)% busy", text)
    assert len(shares) == 2, text
    # /proc counts CPU in clock ticks (10 ms), so a small phase may show 0 for a process; 400 signature
    # checks take more than 20 ms of the gateway's
    assert float(shares[0][0]) > 0 and all(0 <= int(busy) <= 100 for *_, busy in shares), shares
    table = text[text.index("gateway bench (40 devices)"):].splitlines()[1:]
    assert len(table) == 14, table
    for row in table:
        label, measured, target, verdict = re.split(r"\s{2,}", row.strip())
        assert re.search(r"\d", measured) and "nan" not in measured, row


def test_cpu_left_is_what_the_cores_leave_after_the_rest():
    assert bench.cpu_left(1000.0, 0.5) == pytest.approx(bench.CORES - 0.5)
    assert bench.cpu_left(bench.CORES * 1000.0, 2.0) == pytest.approx(-1.0)


def test_verify_ceiling_takes_the_best_part(monkeypatch):
    # per part: start, the loop's two checks (one round of 16 verifications), the end
    clock = iter([0.0, 0.0, 1.0, 1.0,        # part 1: 16 in 1 s
                  1.0, 1.0, 1.5, 1.5])       # part 2: 16 in 0.5 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    assert bench.verify_ceiling(seconds=1.0, parts=2) == pytest.approx(32.0)
