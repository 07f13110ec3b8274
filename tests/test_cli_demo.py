"""The README's main-job command runs every step and exits 0 on both crypto backends."""

import subprocess
import sys

import pytest

from ledgerlink.tools.cli import main


@pytest.mark.parametrize("backend", ["portable", "cpython"])
def test_demo_runs_every_step(backend, capsys):
    assert main(["demo", "--backend", backend, "--readings", "3"]) == 0
    out = capsys.readouterr().out
    assert f"crypto backend: {backend}" in out
    assert out.count("[ok]") == 11
    assert "altered reading is refused" in out and "refused: " in out
    assert "all steps passed" in out


def test_console_entry_point_without_command_prints_help():
    result = subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "demo" in result.stdout


def test_bad_argument_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", "demo", "--readings", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "--readings must be at least 1" in result.stderr
