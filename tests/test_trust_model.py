"""The Trust model in docs/protocol.md names a test for each line: every one it names exists."""

from __future__ import annotations

import re

from tests.conftest import PROJECT_ROOT

DOC = PROJECT_ROOT / "docs" / "protocol.md"


def named_tests() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Trust model", 1)[1].split("\n## ", 1)[0]
    out, last = [], None
    for path, name in re.findall(r"`([\w/]*\.py)?::(\w+)`", section):
        last = path or last
        out.append((last, name))
    return out


def test_every_test_the_trust_model_names_exists():
    named = named_tests()
    assert len(named) >= 20
    for path, name in named:
        source = (PROJECT_ROOT / "tests" / path).read_text(encoding="utf-8")
        assert re.search(r"^(async )?def %s\(" % name, source, re.M), "%s::%s is not a test" % (path, name)
