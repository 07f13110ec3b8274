"""Every file that runs on a board compiles with mpy-cross (the portable library and micropython/)."""

import subprocess
from pathlib import Path

import pytest

from ledgerlink.tools.micropython_vm import mpy_cross, portable_sources
from tests.conftest import PROJECT_ROOT

BOARD_FILES = sorted(set(portable_sources().values()) | set((PROJECT_ROOT / "micropython").rglob("*.py")))


def test_there_is_something_to_compile():
    assert len(BOARD_FILES) >= 14


@pytest.mark.parametrize("source", BOARD_FILES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_compiles_with_mpy_cross(source: Path, tmp_path: Path):
    target = tmp_path / (source.stem + ".mpy")
    mpy_cross(source, target)
    assert target.read_bytes()[:1] == b"M"


def test_mpy_cross_reports_errors(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    with pytest.raises(Exception, match="mpy-cross failed"):
        mpy_cross(bad, tmp_path / "bad.mpy")
    assert subprocess.run(["mpy-cross", "--version"], capture_output=True).returncode == 0
