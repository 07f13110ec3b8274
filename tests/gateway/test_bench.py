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
    # 400 readings, each device's chain statement every EVERY_FRAMES of its readings from spread-out starting points
    statements = int(re.search(r"of them (\d+) chain statements: each device states its chain every %d readings"
                               % bench.session_chain.EVERY_FRAMES, text).group(1))
    assert statements == sum(1 for j in range(20) if j * bench.session_chain.EVERY_FRAMES // 20 + 20
                             >= bench.session_chain.EVERY_FRAMES) > 0, text
    assert "session mode: %d of %d accepted" % (400 + statements, 400 + statements) in text, text
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


def test_compared_runs_get_the_options_each_bench_has():
    argv = ["--devices", "40", "--against", "/x", "--rounds=2", "--chain-every", "8", "--repeat", "3"]
    assert bench.strip_compare_args(argv) == ["--devices", "40", "--chain-every", "8", "--repeat", "3"]
    older_help = "usage: bench [-h] [--devices DEVICES] [--repeat REPEAT]"
    assert bench.known_args(older_help.replace("[", " ").replace("]", " "), bench.strip_compare_args(argv)) == \
        ["--devices", "40", "--repeat", "3"]


def test_checkout_path_imports_the_other_checkout(tmp_path):
    root = tmp_path / "other"
    for part in ("sdk", "gateway", "ledger", "tools"):
        (root / part).mkdir(parents=True)
    (root / "sdk" / "__init__.py").write_text("WHERE = 'other sdk'\n")
    (root / "gateway" / "__init__.py").write_text("")
    (root / "gateway" / "bench.py").write_text("WHERE = 'other gateway'\n")
    path = bench.checkout_path(root, tmp_path / "shim")
    out = subprocess.run([sys.executable, "-c", "import ledgerlink, ledgerlink.gateway.bench as b; "
                          "print(ledgerlink.WHERE, '/', b.WHERE)"], env={"PYTHONPATH": path}, capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.strip() == "other sdk / other gateway", out.stderr
