"""The header-check measurement (tools/header_check.py) runs small, and the device's threshold-certificate
check costs the same QEMU instructions at N = 4 and N = 100 (every per-validator cost would be 25 times
larger at 100). The vote check's growth is in the table (``python3 -m ledgerlink.tools.header_check``)."""

import json

import pytest

from ledgerlink.tools import header_check

pytestmark = [pytest.mark.micropython, pytest.mark.slow]

# Each signature's verification costs between about -5% and +4% of the mean (public scalars, the board
# collector's phase); the means over header_check.SIGNATURES signatures agree within 0.4% at N = 4 and 100.
SAME_COST = 0.02


def test_frost_header_check_does_not_grow_with_n(tmp_path, capsys):
    out = tmp_path / "header_check.json"
    assert header_check.main(["--sizes", "4,100", "--checks", "frost", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.strip().startswith(("4 ", "100 "))]
    assert "FROST" in printed and len(rows) == 2
    result = json.loads(out.read_text())
    qemu = result["qemu_instructions"]
    small, large = qemu["4"]["frost"], qemu["100"]["frost"]
    assert 30e6 < small < 200e6
    assert abs(large / small - 1) < SAME_COST, (small, large)
    assert len(qemu["100"]["frost each"]) == header_check.SIGNATURES
    peaks = result["board32_peak_bytes"]
    assert 0 < peaks["4"]["frost"] < 16 * 1024 and 0 < peaks["100"]["frost"] < 16 * 1024
    assert result["gateway_us"]["100"]["frost"] > 0

