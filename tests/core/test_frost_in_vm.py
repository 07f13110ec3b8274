"""The RFC 9591 FROST(P-256, SHA-256) vectors replayed by the portable core inside MicroPython: on
board32 (collector on, library from ROMFS at a plain ESP32's heap) and in the WASI build."""

from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.micropython.conftest import make_runtime

pytestmark = pytest.mark.micropython

VECTORS = PROJECT_ROOT / "tests" / "vectors" / "frost-p256-sha256.json"

REPLAY = """
import json
from binascii import unhexlify
from ledgerlink.core import frost

v = json.loads(%r)
inputs = v["inputs"]
out = {}

def replay(values):
    it = iter(values)
    return lambda size: next(it)

def num(text):
    return int.from_bytes(unhexlify(text), "big")

coefficients = [unhexlify(c) for c in inputs["share_polynomial_coefficients"]]
shares, verifying, group_key = frost.trusted_dealer_keygen(num(inputs["group_secret_key"]), 3, 2, replay(coefficients))
out["group_key"] = group_key == unhexlify(inputs["group_public_key"])
out["shares"] = all(shares[p["identifier"]] == num(p["participant_share"]) for p in inputs["participant_shares"])
msg = unhexlify(inputs["message"])
nonces = {}
commitments = []
ok = True
for o in v["round_one_outputs"]["outputs"]:
    i = o["identifier"]
    rng = replay([unhexlify(o["hiding_nonce_randomness"]), unhexlify(o["binding_nonce_randomness"])])
    nonces[i], c = frost.commit(shares[i], rng, i)
    ok = ok and nonces[i].hiding == num(o["hiding_nonce"]) and nonces[i].binding == num(o["binding_nonce"])
    ok = ok and c[1] == unhexlify(o["hiding_nonce_commitment"]) and c[2] == unhexlify(o["binding_nonce_commitment"])
    commitments.append(c)
out["round_one"] = ok
z = {}
ok = True
for o in v["round_two_outputs"]["outputs"]:
    i = o["identifier"]
    z[i] = frost.sign(i, shares[i], group_key, nonces[i], msg, commitments)
    ok = ok and z[i] == num(o["sig_share"]) and frost.verify_share(i, verifying[i], group_key, commitments, msg, z[i])
out["round_two"] = ok
sig = frost.aggregate(group_key, commitments, msg, z)
out["signature"] = sig == unhexlify(v["final_output"]["sig"])
out["verify"] = frost.verify(group_key, msg, sig)
bad = bytearray(sig)
bad[40] ^= 1
out["tampered"] = frost.verify(group_key, msg, bytes(bad))
print(json.dumps(out))
"""


@pytest.fixture(scope="module", params=["board32-romfs", "wasm"])
def runtime(request, tmp_path_factory):
    rt = make_runtime(request.param, Path(tmp_path_factory.mktemp("frost-mpy")), {}, {})
    yield rt
    rt.close()


def test_rfc9591_vectors_in_micropython(runtime):
    result, _ = runtime.run_json(REPLAY % VECTORS.read_text(), fuel=40_000_000_000, timeout=600,
                                 heap_bytes=64 * 1024 * 1024)
    assert result == {"group_key": True, "shares": True, "round_one": True, "round_two": True,
                      "signature": True, "verify": True, "tampered": False}
