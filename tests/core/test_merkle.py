"""RFC 9162 Merkle tree: tree hashes, inclusion and consistency proofs."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import merkle
from ledgerlink.core.errors import InvalidProof
from ledgerlink.core.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)


def mth(entries: list[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH, written directly from the definition."""
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(entries[:k]) + mth(entries[k:])).digest()


def path(m: int, entries: list[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(m, D[n])."""
    n = len(entries)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return path(m, entries[:k]) + [mth(entries[k:])]
    return path(m - k, entries[k:]) + [mth(entries[:k])]


def subproof(m: int, entries: list[bytes], complete: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1 SUBPROOF(m, D[n], b)."""
    n = len(entries)
    if m == n:
        return [] if complete else [mth(entries)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return subproof(m, entries[:k], complete) + [mth(entries[k:])]
    return subproof(m - k, entries[k:], False) + [mth(entries[:k])]


def inclusion_shape(m: int, n: int) -> list[bool]:
    """Sides of the siblings in PATH(m, D[n]), deepest first (True: sibling on the right)."""
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return inclusion_shape(m, k) + [True]
    return inclusion_shape(m - k, n - k) + [False]


def consistency_shape(m: int, n: int, complete: bool = True) -> list[str]:
    """The structure of SUBPROOF(m, D[n], b): which hash sits where, independent of the entries."""
    if m == n:
        return ["pow2" if m & (m - 1) == 0 else "whole"] if complete else ["old-subtree"]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return consistency_shape(m, k, complete) + ["R"]
    return consistency_shape(m - k, n - k, False) + ["L"]


def flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


entry_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=70)


def test_known_hashes():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert MerkleTree().root() == EMPTY_ROOT
    assert root_of([]) == EMPTY_ROOT
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert leaf_hash(b"") != EMPTY_ROOT
    assert node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    # Leaf and node hashes are domain-separated: 64 bytes hashed as a leaf differ from the node.
    assert leaf_hash(b"a" * 32 + b"b" * 32) != node_hash(b"a" * 32, b"b" * 32)


def test_roots_match_definition_for_every_size():
    entries = [bytes([i]) * (i % 5) for i in range(70)]
    tree = MerkleTree()
    for n in range(71):
        assert tree.root() == mth(entries[:n])
        assert root_of(entries[:n]) == mth(entries[:n])
        if n < 70:
            assert tree.append(entries[n]) == n
    for n in range(71):
        assert tree.root(n) == mth(entries[:n])


def test_from_leaf_hashes_and_types():
    entries = [b"x", bytearray(b"y"), memoryview(b"z")]
    tree = MerkleTree(entries)
    same = MerkleTree.from_leaf_hashes([leaf_hash(b"x"), leaf_hash(b"y"), leaf_hash(b"z")])
    assert tree.root() == same.root() == mth([b"x", b"y", b"z"])
    assert tree.size == len(tree) == 3
    assert tree.leaf_hash_at(1) == leaf_hash(b"y")
    with pytest.raises(TypeError):
        leaf_hash("text")
    with pytest.raises(ValueError):
        MerkleTree.from_leaf_hashes([b"short"])
    with pytest.raises(ValueError):
        tree.root(4)
    with pytest.raises(ValueError):
        tree.inclusion_proof(3)
    with pytest.raises(ValueError):
        tree.inclusion_proof(2, 2)
    with pytest.raises(ValueError):
        tree.consistency_proof(3, 2)
    with pytest.raises(ValueError):
        tree.leaf_hash_at(-1)


@settings(max_examples=60, deadline=None)
@given(entry_lists)
def test_every_inclusion_proof_verifies(entries):
    tree = MerkleTree(entries)
    n = len(entries)
    for size in {n, max(1, n // 2), 1}:
        root = tree.root(size)
        for i in range(size):
            proof = tree.inclusion_proof(i, size)
            assert proof == path(i, entries[:size])
            assert len(proof) == merkle.inclusion_proof_length(i, size)
            assert verify_inclusion(leaf_hash(entries[i]), i, size, proof, root) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=70, unique=True), st.data())
def test_tampered_inclusion_fails(entries, data):
    # Distinct entries: with duplicates, a proof for one index is also valid for its twin.
    tree = MerkleTree(entries)
    n = len(entries)
    i = data.draw(st.integers(0, n - 1))
    proof = tree.inclusion_proof(i)
    root = tree.root()
    lh = leaf_hash(entries[i])
    verify_inclusion(lh, i, n, proof, root)

    bit = data.draw(st.integers(0, 255))
    with pytest.raises(InvalidProof):
        verify_inclusion(flip(lh, bit), i, n, proof, root)
    with pytest.raises(InvalidProof):
        verify_inclusion(lh, i, n, proof, flip(root, bit))
    for j in range(len(proof)):
        bad = list(proof)
        bad[j] = flip(bad[j], bit)
        with pytest.raises(InvalidProof):
            verify_inclusion(lh, i, n, bad, root)
    for other in range(n):
        if other != i:
            with pytest.raises(InvalidProof):
                verify_inclusion(lh, other, n, proof, root)
    # The root, not the proof, commits to the size: another size whose audit path has the same
    # shape verifies; every other size must fail.
    for size in range(i + 1, n + 8):
        if inclusion_shape(i, size) == inclusion_shape(i, n):
            verify_inclusion(lh, i, size, proof, root)
        else:
            with pytest.raises(InvalidProof):
                verify_inclusion(lh, i, size, proof, root)
    with pytest.raises(InvalidProof):
        verify_inclusion(lh, n, n, proof, root)
    with pytest.raises(InvalidProof):
        verify_inclusion(lh, i, n, proof + [root], root)
    if proof:
        with pytest.raises(InvalidProof):
            verify_inclusion(lh, i, n, proof[:-1], root)
        with pytest.raises(InvalidProof):
            verify_inclusion(lh, i, n, [proof[0][:31]] + proof[1:], root)
    with pytest.raises(InvalidProof):
        verify_inclusion(lh[:31], i, n, proof, root)
    with pytest.raises(InvalidProof):
        verify_inclusion(lh, i, n, proof, root + b"\x00")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=4), min_size=1, max_size=40))
def test_all_consistency_proofs_verify(entries):
    tree = MerkleTree(entries)
    n_max = len(entries)
    for n in range(0, n_max + 1):
        new_root = tree.root(n)
        for m in range(0, n + 1):
            proof = tree.consistency_proof(m, n)
            if 0 < m < n:
                assert proof == subproof(m, entries[:n], True)
            assert len(proof) == merkle.consistency_proof_length(m, n)
            assert verify_consistency(m, n, tree.root(m), new_root, proof) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=2, max_size=70, unique=True), st.data())
def test_tampered_consistency_fails(entries, data):
    tree = MerkleTree(entries)
    n = data.draw(st.integers(2, len(entries)))
    m = data.draw(st.integers(1, n - 1))
    proof = tree.consistency_proof(m, n)
    old_root, new_root = tree.root(m), tree.root(n)
    verify_consistency(m, n, old_root, new_root, proof)

    bit = data.draw(st.integers(0, 255))
    with pytest.raises(InvalidProof):
        verify_consistency(m, n, flip(old_root, bit), new_root, proof)
    with pytest.raises(InvalidProof):
        verify_consistency(m, n, old_root, flip(new_root, bit), proof)
    for j in range(len(proof)):
        bad = list(proof)
        bad[j] = flip(bad[j], bit)
        with pytest.raises(InvalidProof):
            verify_consistency(m, n, old_root, new_root, bad)
    with pytest.raises(InvalidProof):
        verify_consistency(m, n, old_root, new_root, proof + [old_root])
    with pytest.raises(InvalidProof):
        verify_consistency(m, n, old_root, new_root, proof[:-1])
    with pytest.raises(InvalidProof):
        verify_consistency(m, n, new_root, old_root, proof)
    with pytest.raises(InvalidProof):
        verify_consistency(n, m, old_root, new_root, proof)
    # As for inclusion, sizes whose proof has the same shape verify; all others must fail.
    for m2 in range(1, n + 3):
        for n2 in range(m2 + 1, n + 3):
            if consistency_shape(m2, n2) == consistency_shape(m, n):
                verify_consistency(m2, n2, old_root, new_root, proof)
            else:
                with pytest.raises(InvalidProof):
                    verify_consistency(m2, n2, old_root, new_root, proof)
    # A different history of the same size is not consistent with the new root.
    changed = list(entries[:m])
    changed[data.draw(st.integers(0, m - 1))] += b"!"
    with pytest.raises(InvalidProof):
        verify_consistency(m, n, root_of(changed), new_root, proof)


def test_consistency_edge_cases():
    tree = MerkleTree([b"a", b"b", b"c"])
    r3 = tree.root()
    verify_consistency(0, 3, EMPTY_ROOT, r3, [])
    verify_consistency(3, 3, r3, r3, [])
    with pytest.raises(InvalidProof):
        verify_consistency(0, 3, r3, r3, [])
    with pytest.raises(InvalidProof):
        verify_consistency(3, 3, r3, tree.root(2), [])
    with pytest.raises(InvalidProof):
        verify_consistency(3, 3, r3, r3, [r3])
    with pytest.raises(InvalidProof):
        verify_consistency(-1, 3, r3, r3, [])
    with pytest.raises(InvalidProof):
        verify_consistency(True, 3, r3, r3, [])


junk = st.one_of(
    st.none(),
    st.integers(-5, 100),
    st.booleans(),
    st.binary(max_size=40),
    st.text(max_size=3),
    st.lists(st.binary(min_size=30, max_size=33), max_size=8),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(junk, junk, junk, junk, junk)
def test_verifiers_raise_only_invalid_proof(a, b, c, d, e):
    for fn in (verify_inclusion, verify_consistency):
        try:
            fn(a, b, c, d, e)
        except InvalidProof:
            pass
