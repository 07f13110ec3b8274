"""The layers: core below protocol below device, gateway and ledger; each protocol code defined once."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from ledgerlink.ledger.state import codes as ledger_codes
from ledgerlink.protocol import codes, ledger_tx

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"sdk": "ledgerlink", "gateway": "ledgerlink.gateway", "ledger": "ledgerlink.ledger",
            "tools": "ledgerlink.tools"}
UPPER = ("ledgerlink.device", "ledgerlink.gateway", "ledgerlink.ledger", "ledgerlink.tools")
GATEWAY_MAY_IMPORT = ("ledgerlink.ledger.client", "ledgerlink.ledger.transport")   # what it talks to the ledger through
GROUPS = {"KIND_": None, "REASON_": "Reason", "TX_": "TxKind", "RECORD_": "RecordKind", "ROLE_": "Role",
          "STATUS_": "DeviceStatus", "IMAGE_": "ImageType"}


def module_files(folder: str) -> dict[str, Path]:
    """{module name: file} of the product modules under ``folder`` (a key of PACKAGES, or sdk/<sub>)."""
    top = folder.split("/")[0]
    out = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT / top).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join([PACKAGES[top]] + parts)] = path
    return out


def imported(path: Path) -> set[str]:
    """Every module an ``import`` anywhere in the file names (at the top or inside a function)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update("%s.%s" % (node.module, alias.name) for alias in node.names)
    return names


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_core_and_protocol_import_nothing_above_them():
    bad = []
    for folder, forbidden in (("sdk/core", UPPER + ("ledgerlink.protocol",)), ("sdk/protocol", UPPER)):
        for module, path in module_files(folder).items():
            bad += ["%s imports %s" % (module, name) for name in sorted(imported(path)) if under(name, forbidden)]
    assert bad == []


def test_gateway_imports_only_the_ledger_client():
    bad = []
    for module, path in module_files("gateway").items():
        bad += ["%s imports %s" % (module, name) for name in sorted(imported(path))
                if under(name, ("ledgerlink.ledger",)) and name != "ledgerlink.ledger"
                and not under(name, GATEWAY_MAY_IMPORT)]
    assert bad == []


def test_importing_core_and_protocol_loads_no_upper_layer():
    modules = sorted(list(module_files("sdk/core")) + list(module_files("sdk/protocol")))
    code = ("import importlib, json, sys\nfor m in %r:\n    importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))" % modules)
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       timeout=60).stdout)
    assert [m for m in loaded if under(m, UPPER)] == []


# --- each protocol code once ----------------------------------------------------------------------

CODE_FILES = (ROOT / "sdk/protocol/codes.py", ROOT / "sdk/protocol/ledger_tx.py")


def shared_codes() -> dict[str, object]:
    """The protocol's codes and strings: those of ``codes`` and ``ledger_tx``."""
    return {name: value for module in (codes, ledger_tx) for name, value in vars(module).items()
            if name.isupper() and type(value) in (int, str, bytes)}


def group(prefix: str) -> dict[str, int]:
    return {name[len(prefix):]: value for name, value in shared_codes().items()
            if name.startswith(prefix) and type(value) is int}


def literal_bindings(path: Path):
    """(name, value, line) of each ``NAME = literal`` at module level or in a class body at module level."""
    tree = ast.parse(path.read_text(), str(path))
    bodies = [tree.body] + [node.body for node in tree.body if isinstance(node, ast.ClassDef)]
    for body in bodies:
        for node in body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name):
                try:
                    yield target.id, ast.literal_eval(value), node.lineno
                except ValueError:
                    pass


def copies_of_codes(files, root: Path = ROOT) -> list[str]:
    """Bindings in ``files`` of a protocol code: its name (or its name without the group prefix) with its
    value, or any name with the value of one of its strings."""
    by_name = {}
    for name, value in shared_codes().items():
        by_name[name] = value
        for prefix in GROUPS:
            if name.startswith(prefix) and type(value) is int:
                by_name.setdefault(name[len(prefix):], value)
    strings = {value: name for name, value in shared_codes().items() if type(value) is not int}
    found = []
    for path in files:
        for name, value, line in literal_bindings(path):
            if type(value) is bool:
                continue
            if (name in by_name and by_name[name] == value and type(value) is type(by_name[name])) \
                    or (type(value) in (str, bytes) and value in strings):
                found.append("%s:%d %s = %r" % (path.relative_to(root), line, name, value))
    return found


def product_files() -> list[Path]:
    """The modules above the portable core (which cannot import the protocol), but for the code tables."""
    files = []
    for folder in ("sdk", "gateway", "ledger", "tools", "micropython"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [p for p in files if "sdk/core/" not in p.as_posix() and p not in CODE_FILES]


def test_each_protocol_code_is_defined_once():
    assert copies_of_codes(product_files()) == []
    names = [{name for name, _, _ in literal_bindings(path)} for path in CODE_FILES]
    assert names[0] & names[1] == set()
    values = {}
    for prefix in GROUPS:
        for name, value in group(prefix).items():
            assert values.setdefault((prefix, value), name) == name, "%s%s and %s%s are both %d" % (
                prefix, name, prefix, values[(prefix, value)], value)


def test_the_copy_finder_finds_copies(tmp_path):
    copy = tmp_path / "copy.py"
    copy.write_text('REPLAY = 7\nKIND_RECEIPT = 1\nDOMAIN = "ledgerlink-tx-v1"\n'
                    'class Kind:\n    ANCHOR = 5\nREPLAY_WINDOW = 7\nMAX_SEQ = 5\n')
    found = [line.split(" ", 1)[1] for line in copies_of_codes([copy], tmp_path)]
    assert found == ["REPLAY = 7", "KIND_RECEIPT = 1", "DOMAIN = 'ledgerlink-tx-v1'", "ANCHOR = 5"]


def test_ledger_views_are_the_protocol_codes():
    for prefix, view in GROUPS.items():
        if view is not None:
            assert {m.name: int(m) for m in getattr(ledger_codes, view)} == group(prefix), view


def test_gateway_names_are_the_protocol_codes():
    from ledgerlink.gateway import checks

    for name, value in vars(codes).items():
        if name.startswith("REASON_") and 1 <= value <= 15:
            assert getattr(checks, name[len("REASON_"):]) == value, name
            assert value in checks.REASON_TEXT
        if name.startswith("KIND_") and value <= 4:
            assert getattr(checks, name) == value


def cddl_choices(text: str, rule: str) -> dict[str, int]:
    """{NAME: value} of a CDDL rule ``rule = &(name: value, ...)`` in docs/protocol.md."""
    m = re.search(r"^%s\s*=\s*&\((.*?)\)" % re.escape(rule), text, re.S | re.M)
    assert m, rule
    body = re.sub(r";[^\n]*", "", m.group(1))
    return {k.upper().replace("-", "_"): int(v) for k, v in re.findall(r"([a-z][a-z-]*)\s*:\s*(\d+)", body)}


def test_docs_and_codes_agree():
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert cddl_choices(text, "role") == group("ROLE_")
    assert cddl_choices(text, "record-kind") == group("RECORD_")
    reasons = cddl_choices(text, "reason-code")
    reasons.update(cddl_choices(text, "ledger-reason"))
    assert reasons == group("REASON_")
