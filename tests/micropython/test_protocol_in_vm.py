"""The protocol code itself under MicroPython: results byte-identical to CPython for the same inputs."""

import os

import pytest

from ledgerlink.core import cbor, cose, ecdsa, ecqv, merkle, session_keys, smt
from tests.conftest import load_vectors

pytestmark = pytest.mark.micropython


def test_ecqv_camp_vector_in_vm(vm):
    v = load_vectors("ecqv/camp_p256_sha256.json")
    code = """
import json
from ledgerlink.core import ecqv, p256
v = json.load(open(INPUT + '/vectors/camp_p256_sha256.json'))
def pt(xy):
    return (int(xy['x'], 16), int(xy['y'], 16))
tbs = bytes.fromhex(v['tbsCert'])
r_u = p256.encode_point(pt(v['RU']), True)
cert, r, p_u = ecqv.issue_raw(r_u, p256.scalar_to_bytes(int(v['dCA'], 16)), lambda p: tbs + p, k=int(v['k'], 16))
d_u, q_u = ecqv.reconstruct_raw(p256.scalar_to_bytes(int(v['kU'], 16)), r, cert, p_u,
                                p256.encode_point(pt(v['QCA'])))
print(json.dumps([r.hex().upper(), d_u.hex().upper(), cert[-33:].hex().upper()]))
"""
    (r, d_u, p_u), fuel = vm.run_json(code)
    expected = v["sec4_leftmost_bits"]
    assert [r, d_u, p_u] == [expected["r"], expected["dU"], v["PU_compressed"]]
    assert fuel > 0 if vm.counts_fuel else fuel is None


def test_sign_encrypt_and_proofs_match_cpython(vm):
    priv = ecdsa.generate_private_key()
    key, base_iv = os.urandom(16), os.urandom(13)
    reading = {1: b"\x01" * 16, 2: 7, 3: 1_700_000_000_000, 4: {"t": 21.5, "rh": 40, "ok": True, "n": None}}
    entries = [b"frame-%d" % i for i in range(11)]
    tree = smt.SparseMerkleTree()
    for i in range(40):
        tree.set(bytes([i]) * 32, b"record-%d" % i)
    proof = smt.proof_to_cbor_obj(tree.prove(bytes([5]) * 32))
    absent = smt.proof_to_cbor_obj(tree.prove(b"\xee" * 32))
    code = f"""
import json
from ledgerlink.core import cbor, cose, ecdsa, merkle, smt
priv = bytes.fromhex({priv.hex()!r})
payload = cbor.dumps({reading!r})
signed = cose.sign1(payload, priv, kid=b'dev', external_aad=b'll/s/dev/x/up')
sealed = cose.encrypt0(payload, bytes.fromhex({key.hex()!r}), partial_iv=b'\\x07',
                       base_iv=bytes.fromhex({base_iv.hex()!r}), kid=b'sess', external_aad=b'll/s/dev/x/up')
entries = {entries!r}
t = merkle.MerkleTree(entries)
merkle.verify_inclusion(merkle.leaf_hash(entries[9]), 9, 11, t.inclusion_proof(9), t.root())
smt.verify(bytes.fromhex({tree.root().hex()!r}), bytes([5]) * 32, b'record-5', cbor.loads(bytes.fromhex({cbor.dumps(proof).hex()!r})))
smt.verify(bytes.fromhex({tree.root().hex()!r}), b'\\xee' * 32, None, cbor.loads(bytes.fromhex({cbor.dumps(absent).hex()!r})))
print(json.dumps([payload.hex(), signed.hex(), sealed.hex(), t.root().hex()]))
"""
    (payload, signed, sealed, root), _ = vm.run_json(code)
    assert bytes.fromhex(payload) == cbor.dumps(reading)
    assert bytes.fromhex(signed) == cose.sign1(cbor.dumps(reading), priv, kid=b"dev", external_aad=b"ll/s/dev/x/up")
    assert bytes.fromhex(sealed) == cose.encrypt0(cbor.dumps(reading), key, partial_iv=b"\x07", base_iv=base_iv,
                                                  kid=b"sess", external_aad=b"ll/s/dev/x/up")
    assert bytes.fromhex(root) == merkle.root_of(entries)


def test_session_keys_agree_between_vm_device_and_cpython_gateway(vm):
    ca_priv, gw_priv = ecdsa.generate_private_key(), ecdsa.generate_private_key()
    code = f"""
import json
from ledgerlink.core import ecqv
k_u, r_u = ecqv.create_request(host_urandom)
print(json.dumps([k_u.hex(), r_u.hex()]))
"""
    (k_u, r_u), _ = vm.run_json(code)
    cert, r = ecqv.issue(bytes.fromhex(r_u), ca_priv, b"serial01", b"fog-ca", b"dev-1", 0, 10**10)
    code = f"""
import json
from ledgerlink.core import ecqv, session_keys
d_u, q_u = ecqv.reconstruct(bytes.fromhex({k_u!r}), bytes.fromhex({cert.hex()!r}), bytes.fromhex({r.hex()!r}),
                            bytes.fromhex({ecdsa.public_key(ca_priv).hex()!r}))
keys = session_keys.derive(d_u, bytes.fromhex({ecdsa.public_key(gw_priv).hex()!r}), bytes.fromhex({cert.hex()!r}),
                           b'dev-1', b'gw-1')
print(json.dumps([keys.key.hex(), keys.base_iv.hex(), keys.session_id.hex()]))
"""
    (key, base_iv, sid), _ = vm.run_json(code)
    gateway = session_keys.derive(gw_priv, ecqv.public_key(cert, ecdsa.public_key(ca_priv)), cert, b"dev-1", b"gw-1")
    assert [key, base_iv, sid] == [gateway.key.hex(), gateway.base_iv.hex(), gateway.session_id.hex()]


def test_bad_input_raises_our_errors_in_vm(vm):
    code = """
import json
from ledgerlink.core import cbor, cose, p256
from ledgerlink.core.errors import LedgerlinkError
cases = [lambda: cbor.loads(b'\\x9f\\x01\\xff'), lambda: cbor.loads(b'\\x18\\x01'), lambda: cbor.loads(b'\\x43ab'),
         lambda: p256.decode_point(b'\\x04' + bytes(64)), lambda: p256.scalar_from_bytes(bytes(32)),
         lambda: cose.verify_sign1(b'\\xd2\\x80', b'\\x04' + bytes(64)), lambda: cose.decrypt0(b'\\x00', bytes(16))]
names = []
for case in cases:
    try:
        case()
        names.append('accepted')
    except LedgerlinkError as exc:
        names.append(type(exc).__name__)
print(json.dumps(names))
"""
    names, _ = vm.run_json(code)
    assert names == ["DecodeError", "DecodeError", "DecodeError", "InvalidPoint", "InvalidScalar",
                     "InvalidMessage", "InvalidMessage"]
