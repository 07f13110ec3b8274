"""A device follows a validator set change under MicroPython: the same new set as CPython from the
set-change proof, and an altered record refused."""

from ledgerlink.core import cbor, smt
from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.state import RecordKind as RK
from ledgerlink.protocol import ledger_tx, validator_set
from tests.devnet import DevNet


def set_change_proof():
    """(chain id, old keys, encoded set-change proof, new keys) of a replacement of validator 3."""
    net = DevNet()
    state = net.genesis()
    privs = [net[n].priv for n in net.validator_names]
    old = [net[n].pub for n in net.validator_names]
    new = old[:3] + [net["validator-new"].pub]
    approvals = [[i, ledger_tx.approve_set_change(net.chain_id, privs[i], 1, new, 5, net.backend)] for i in range(3)]
    tx = ledger_tx.validator_set_change_tx(net.chain_id, net["admin"].priv, 1, new, 5, approvals, net.time_ms,
                                           backend=net.backend, nonce=net.nonce())
    assert net.block(state, [tx]) == [(True, 0)]
    header = m.Header(net.chain_id, 1, bytes(32), net.time_ms, bytes(32), state.state_root(), m.validators_hash(old))
    msg = m.commit_sign_bytes(net.chain_id, 1, 0, header.hash())
    cert = m.CommitCertificate(1, 0, header.hash(), tuple((i, net.backend.sign(privs[i], msg)) for i in range(3)))
    _, record, proof = state.prove(RK.VALIDATOR_SET, 1)
    data = validator_set.encode_set_change_proof([header.to_obj(), cert.to_obj()], record, smt.proof_to_cbor_obj(proof))
    return net.chain_id, old, data, new


def test_a_device_follows_a_set_change_in_micropython(vm):
    chain_id, old, data, new = set_change_proof()
    tampered = cbor.loads(data)
    tampered[1] = cbor.dumps({**cbor.loads(tampered[1]), 3: 6})
    code = f"""
import json
from ledgerlink.core import cbor
from ledgerlink.protocol import validator_set as vs
keys = cbor.loads(bytes.fromhex({cbor.dumps(old).hex()!r}))
trusted = vs.TrustedSet({chain_id!r}, keys)
refused = ""
try:
    vs.follow_set_change_proof(trusted, bytes.fromhex({cbor.dumps(tampered).hex()!r}))
except Exception as exc:
    refused = type(exc).__name__
nxt = vs.follow_set_change_proof(trusted, bytes.fromhex({data.hex()!r}))
print(json.dumps([nxt.epoch, nxt.from_height, [k.hex() for k in nxt.keys], refused]))
"""
    (epoch, start, keys, refused), _ = vm.run_json(code)
    assert (epoch, start, [bytes.fromhex(k) for k in keys]) == (1, 5, new)
    assert refused == "InvalidProof"
