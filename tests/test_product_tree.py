"""Test fixtures stay out of the product: no shipped module holds the fixed test keys or imports tests/."""

from __future__ import annotations

import ast

from tests.conftest import PROJECT_ROOT

PRODUCT = ("sdk", "gateway", "ledger", "tools", "micropython")


def test_no_product_module_defines_test_keys_or_imports_tests():
    sources = [p for d in PRODUCT for p in sorted((PROJECT_ROOT / d).rglob("*.py"))]
    assert len(sources) > 50
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                assert node.name != "DevNet", "%s ships the fixed-key DevNet" % path
            elif isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("tests"), "%s imports %s" % (path, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("tests") for a in node.names), path


def test_no_product_module_defines_a_top_level_name_twice():
    """A second ``def`` of a name silently replaces the first for every caller in the module."""
    for d in PRODUCT:
        for path in sorted((PROJECT_ROOT / d).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            seen: set[str] = set()
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    assert node.name not in seen, "%s defines %s twice" % (path.relative_to(PROJECT_ROOT), node.name)
                    seen.add(node.name)
