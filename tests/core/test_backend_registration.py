"""The portable core names no CPython backend: CPython's accelerations register themselves through
``backend.register`` and ``cbor.register_fast``, and are in use as soon as any core module is."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from ledgerlink.core import backend, cbor
from tests.conftest import PROJECT_ROOT

PORTABLE = (PROJECT_ROOT / "sdk" / "core", PROJECT_ROOT / "sdk" / "protocol")


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(node.module + "." + alias.name for alias in node.names)
    return names


def test_no_portable_module_imports_or_names_a_cpython_module():
    sources = [path for folder in PORTABLE for path in sorted(folder.glob("*.py"))]
    assert len(sources) >= 20
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        upward = [name for name in _imported_modules(tree) if name.startswith("ledgerlink.cpython")]
        assert upward == [], "%s imports %s" % (path.name, upward)
        named = [node.value for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str) and "cpython_" in node.value]
        assert named == [], "%s names a CPython module: %s" % (path.name, named)


def _fresh(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_core_cbor_first_makes_the_fast_codec_active_everywhere():
    seen = _fresh(
        "import json, sys\n"
        "from ledgerlink.core.cbor import dumps, loads\n"
        "from ledgerlink.core import cbor\n"
        "from ledgerlink.core.backend import get_backend\n"
        "print(json.dumps({'dumps': dumps.__module__, 'loads': loads.__module__,\n"
        "                  'portable': cbor.portable_dumps.__module__, 'backend': get_backend().name,\n"
        "                  'pycryptodome': get_backend('pycryptodome').name,\n"
        "                  'cryptography_loaded': 'cryptography' in sys.modules}))\n")
    assert seen == {"dumps": "ledgerlink.cpython_cbor", "loads": "ledgerlink.cpython_cbor",
                    "portable": "ledgerlink.core.cbor", "backend": "cpython", "pycryptodome": "pycryptodome",
                    "cryptography_loaded": True}


def test_importing_the_package_loads_no_crypto_library_until_a_backend_is_asked_for():
    seen = _fresh("import json, sys, ledgerlink\n"
                  "print(json.dumps(sorted(m for m in ('cryptography', 'Crypto') if m in sys.modules)))\n")
    assert seen == []


def test_a_registered_backend_is_returned_by_name_and_a_preferred_one_by_default(monkeypatch):
    monkeypatch.setattr(backend, "_factories", {"portable": backend.PortableBackend})
    monkeypatch.setattr(backend, "_preferred", [])
    monkeypatch.setattr(backend, "_cache", {})

    class Fake(backend.PortableBackend):
        name = "fake"

    def unavailable():
        raise ImportError("no such library")

    assert backend.get_backend().name == "portable"      # nothing preferred: the pure-Python core
    backend._cache.clear()
    backend.register("missing", unavailable, preferred=True)
    backend.register("fake", Fake, preferred=True)
    assert backend.get_backend().name == "fake"          # the first preferred one that loads
    assert backend.get_backend("fake") is backend.get_backend("fake")
    with pytest.raises(ImportError):
        backend.get_backend("missing")
    with pytest.raises(ValueError, match="unknown crypto backend 'nope': registered are fake, missing, portable"):
        backend.get_backend("nope")


def test_register_fast_rebinds_the_codec_only_when_the_pair_is_given(monkeypatch):
    monkeypatch.setattr(cbor, "dumps", cbor.dumps)
    monkeypatch.setattr(cbor, "loads", cbor.loads)

    def fast_dumps(obj):
        return cbor.portable_dumps(obj)

    def fast_loads(data, max_depth=cbor.DEFAULT_MAX_DEPTH, max_size=cbor.DEFAULT_MAX_SIZE):
        return cbor.portable_loads(data, max_depth, max_size)

    cbor.register_fast(fast_dumps, fast_loads)
    assert cbor.dumps is fast_dumps and cbor.loads is fast_loads
    assert cbor.portable_dumps.__module__ == "ledgerlink.core.cbor"
    with pytest.raises(TypeError):
        cbor.register_fast(fast_dumps, None)


def test_on_micropython_the_package_imports_nothing_more():
    from ledgerlink.tools.micropython_vm import MicroPythonVM

    code = ("import sys, json\n"
            "before = set(sys.modules)\n"
            "import ledgerlink\n"
            "package = sorted(set(sys.modules) - before)\n"
            "from ledgerlink.core import cbor\n"
            "print(json.dumps([package, sorted(set(sys.modules) - before), cbor.dumps is cbor.portable_dumps]))\n")
    with MicroPythonVM() as vm:
        (package, with_cbor, portable), _ = vm.run_json(code, timeout=120)
    assert package == ["ledgerlink"]
    assert with_cbor == ["ledgerlink", "ledgerlink.core", "ledgerlink.core.cbor", "ledgerlink.core.errors"]
    assert portable is True
