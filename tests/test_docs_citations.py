"""Every test file the code and the docs cite exists: ``tests/...`` paths (a glob matches at least one
file, a folder ending in ``/`` exists, ``path.py::name`` names a test in it) and bare ``test_*.py`` names."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import PROJECT_ROOT

CITING = ("sdk", "gateway", "ledger", "tools", "micropython", "hardware", "docs")
PATH = re.compile(r"tests/[\w./*-]*[\w/*](?:::\w+)?")
BARE = re.compile(r"(?<![\w/.])(test_[\w*]+\.py)")


def _citing_files() -> list[Path]:
    files = [PROJECT_ROOT / "README.md"]
    for folder in CITING:
        files += sorted(p for p in (PROJECT_ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".toml"))
    return files


def _cited_paths(text: str) -> list[str]:
    return [c for c in PATH.findall(text) if c != "tests/"]


def _missing(cite: str) -> str | None:
    path, _, name = cite.partition("::")
    if "*" in path:
        return None if any(PROJECT_ROOT.glob(path)) else "no file matches"
    target = PROJECT_ROOT / path
    if path.endswith("/"):
        return None if target.is_dir() else "no such folder"
    if not target.is_file():
        return "no such file"
    if name and not re.search(r"^(async )?def %s\(" % name, target.read_text(encoding="utf-8"), re.M):
        return "no test %s in it" % name
    return None


def test_the_citation_patterns_find_what_they_should():
    text = ("Tested in tests/core/test_cbor.py, tests/ledger/test_pbft_*.py and tests/access/ "
            "(`tests/gateway/test_delivery.py::test_x`); see test_smt.py. Not: tests/... or docs/x.py.")
    assert _cited_paths(text) == ["tests/core/test_cbor.py", "tests/ledger/test_pbft_*.py", "tests/access/",
                                  "tests/gateway/test_delivery.py::test_x"]
    assert BARE.findall(text) == ["test_smt.py"]
    assert _missing("tests/core/test_p256.py") == "no such file"
    assert _missing("tests/ledger/test_pbft_*.py") is None
    assert _missing("tests/gateway/test_delivery.py::test_x") == "no test test_x in it"


def test_every_cited_test_file_exists():
    known = {p.name for p in (PROJECT_ROOT / "tests").rglob("test_*.py")}
    cited = 0
    wrong = []
    for path in _citing_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        where = path.relative_to(PROJECT_ROOT)
        for cite in _cited_paths(text):
            cited += 1
            problem = _missing(cite)
            if problem:
                wrong.append("%s cites %s: %s" % (where, cite, problem))
        for name in BARE.findall(text):
            cited += 1
            if not any(Path(k).match(name) for k in known):
                wrong.append("%s cites %s: no such test file" % (where, name))
    assert cited > 50
    assert wrong == []
