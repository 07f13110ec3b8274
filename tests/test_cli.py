"""The `ledgerlink` command forwards its tool subcommands to their modules."""

import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_every_command():
    out = _run("--help").stdout
    for name in ("demo", "deploy", "provision", "virtual-board", "cluster", "gateway", "bench", "leakage", "up",
                 "admin"):
        assert name in out


def test_deploy_without_config_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ledgerlink.tools.cli", "deploy", "--port", "/dev/none",
                             "--board", "esp32", "--config", str(tmp_path / "missing.json")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "config" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_board_is_refused():
    result = _run("deploy", "--port", "/dev/none", "--board", "no-such-board")
    assert result.returncode != 0 and "no-such-board" in result.stderr
