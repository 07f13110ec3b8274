"""The sparse Merkle tree built under MicroPython: same root and proofs as CPython, through set, delete and update.

Building trees is the ledger's work; a board only checks proofs (smt_proof, covered at board heaps by
the protocol tests). On board32 the tree therefore gets ``TREE_HEAP``, with the collector on.
"""

import random

from ledgerlink.core import cbor, smt

TREE_HEAP = 256 * 1024


def test_tree_built_in_micropython_matches_cpython(vm):
    rnd = random.Random(11)
    keys = [rnd.randbytes(32) for _ in range(30)] + [b"\x80" + bytes(31), b"\x80" + bytes(30) + b"\x01"]
    tree = smt.SparseMerkleTree()
    for i, k in enumerate(keys):
        tree.set(k, b"v%d" % i)
    for k in keys[:5]:
        tree.delete(k)
    tree.set(keys[7], b"changed")
    tree.update([(k, b"u%d" % i) for i, k in enumerate(keys[3:12])])
    proofs = [smt.proof_to_cbor_obj(tree.prove(k)) for k in (keys[0], keys[7], keys[-1])]
    code = f"""
import json
from ledgerlink.core import cbor, smt
keys = cbor.loads(bytes.fromhex({cbor.dumps(keys).hex()!r}))
t = smt.SparseMerkleTree()
for i, k in enumerate(keys):
    t.set(k, b"v%d" % i)
for k in keys[:5]:
    t.delete(k)
t.set(keys[7], b"changed")
t.update([(k, b"u%d" % i) for i, k in enumerate(keys[3:12])])
proofs = [smt.proof_to_cbor_obj(t.prove(k)) for k in (keys[0], keys[7], keys[-1])]
print(json.dumps([t.root().hex(), cbor.dumps(proofs).hex()]))
"""
    (root, proofs_hex), _ = vm.run_json(code, board_heap=TREE_HEAP)
    assert bytes.fromhex(root) == tree.root()
    assert bytes.fromhex(proofs_hex) == cbor.dumps(proofs)
