"""Sparse Merkle tree: canonical roots, membership and non-membership proofs, proof encoding."""

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink.core import smt
from ledgerlink.core.errors import DecodeError, InvalidProof
from ledgerlink.core.smt import (
    EMPTY,
    SMTProof,
    SparseMerkleTree,
    proof_from_cbor_obj,
    proof_to_cbor_obj,
    value_hash,
    verify,
)


def bit(key: bytes, i: int) -> int:
    return (int.from_bytes(key, "big") >> (255 - i)) & 1


def ref_root(items: dict[bytes, bytes], depth: int = 0) -> bytes:
    """The root straight from the definition in the module docstring."""
    if not items:
        return bytes(32)
    if len(items) == 1:
        ((k, v),) = items.items()
        return hashlib.sha256(b"\x00" + k + hashlib.sha256(v).digest()).digest()
    left = {k: v for k, v in items.items() if not bit(k, depth)}
    right = {k: v for k, v in items.items() if bit(k, depth)}
    lh, rh = ref_root(left, depth + 1), ref_root(right, depth + 1)
    if lh == rh == bytes(32):
        return bytes(32)
    return hashlib.sha256(b"\x01" + lh + rh).digest()


def one_bit_key(i: int) -> bytes:
    return (1 << (255 - i)).to_bytes(32, "big")


def flip(b: bytes, i: int) -> bytes:
    out = bytearray(b)
    out[i // 8] ^= 0x80 >> (i % 8)
    return bytes(out)


# Random keys give shallow trees; keys with few set bits share long prefixes and give deep ones.
keys = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 255).map(one_bit_key),
    st.tuples(st.integers(0, 255), st.integers(0, 255)).map(lambda t: flip(one_bit_key(t[0]), t[1])),
)
key_values = st.dictionaries(keys, st.binary(max_size=8), max_size=24)


def build(items: dict[bytes, bytes]) -> SparseMerkleTree:
    t = SparseMerkleTree()
    for k, v in items.items():
        t.set(k, v)
    return t


def test_empty_and_single():
    t = SparseMerkleTree()
    assert t.root() == EMPTY == bytes(32)
    assert len(t) == 0
    k = bytes(range(32))
    verify(t.root(), k, None, t.prove(k))
    with pytest.raises(InvalidProof):
        verify(t.root(), k, b"", t.prove(k))
    t.set(k, b"v")
    assert t.root() == hashlib.sha256(b"\x00" + k + hashlib.sha256(b"v").digest()).digest()
    assert value_hash(b"v") == hashlib.sha256(b"v").digest()
    p = t.prove(k)
    assert (p.depth, p.bitmap, p.siblings, p.other) == (0, b"", [], None)
    verify(t.root(), k, b"v", p)
    other = flip(k, 200)
    q = t.prove(other)
    assert q.other == (k, value_hash(b"v"))
    verify(t.root(), other, None, q)
    assert t.get(k) == b"v" and t.get(other) is None and k in t
    assert t.items() == [(k, b"v")]
    assert t.delete(other) is False
    assert t.delete(k) is True
    assert t.root() == EMPTY and len(t) == 0


def test_deepest_leaves():
    a = bytes(32)
    b = flip(a, 255)
    t = build({a: b"a", b: b"b"})
    assert t.root() == ref_root({a: b"a", b: b"b"})
    for k, v in ((a, b"a"), (b, b"b")):
        p = t.prove(k)
        assert p.depth == 256 and len(p.bitmap) == 32 and len(p.siblings) == 1
        verify(t.root(), k, v, p)
    c = flip(a, 254)
    p = t.prove(c)
    assert p.depth == 255 and p.other is None
    verify(t.root(), c, None, p)


@settings(max_examples=80, deadline=None)
@given(key_values, st.randoms(use_true_random=False))
def test_root_matches_definition_and_ignores_order(items, rnd):
    t = build(items)
    assert t.root() == ref_root(items)
    assert len(t) == len(items)
    assert t.items() == sorted(items.items())
    order = list(items.items())
    rnd.shuffle(order)
    u = SparseMerkleTree()
    for k, v in order:
        u.set(k, b"placeholder")
        u.root()
    for k, v in order:
        u.set(k, v)
    assert u.root() == t.root()


@settings(max_examples=150, deadline=None)
@given(key_values, st.lists(st.tuples(keys, st.binary(max_size=8)), max_size=24), st.lists(keys, max_size=4),
       st.booleans())
def test_update_is_set_one_by_one(items, changes, removed, hashed):
    t = build(items)
    u = build(items)
    if hashed:
        t.root()
        u.root()
    for k in removed:
        t.delete(k)
        u.delete(k)
    for k, v in changes:
        t.set(k, v)
    u.update(changes)
    assert u.root() == t.root() == ref_root(dict(t.items()))
    assert u.items() == t.items()
    for k, _ in changes[:4]:
        assert u.prove(k) == t.prove(k)


def test_update_refuses_bad_input_and_stores_nothing():
    t = build({bytes(32): b"a"})
    before = t.root()
    with pytest.raises(ValueError):
        t.update([(bytes(range(32)), b"b"), (b"short", b"c")])
    with pytest.raises(ValueError):
        t.update([(bytes(range(32)), "text")])
    t.update([])
    assert t.root() == before and len(t) == 1


@settings(max_examples=80, deadline=None)
@given(key_values, st.lists(keys, max_size=6), st.randoms(use_true_random=False))
def test_delete_restores_previous_root(items, extra, rnd):
    t = build(items)
    before = t.root()
    added = list(dict.fromkeys(k for k in extra if k not in items))
    for k in added:
        t.set(k, b"x")
    t.root()
    rnd.shuffle(added)
    for k in added:
        assert t.delete(k) is True
        assert t.delete(k) is False
    assert t.root() == before
    keys_left = list(items)
    rnd.shuffle(keys_left)
    remaining = dict(items)
    for k in keys_left:
        t.delete(k)
        del remaining[k]
        assert t.root() == ref_root(remaining)
    assert t.root() == EMPTY


@settings(max_examples=60, deadline=None)
@given(key_values, st.lists(keys, max_size=6))
def test_proofs_verify_and_false_claims_fail(items, probes):
    t = build(items)
    root = t.root()
    absent = [k for k in probes if k not in items]
    # Neighbours of present keys end at the key's leaf or at an empty subtree near it.
    for k in list(items)[:4]:
        for i in (0, 7, 100, 255):
            if flip(k, i) not in items:
                absent.append(flip(k, i))
    for k, v in items.items():
        p = t.prove(k)
        assert p.other is None
        verify(root, k, v, p)
        verify(root, k, v, proof_to_cbor_obj(p))
        with pytest.raises(InvalidProof):
            verify(root, k, v + b"?", p)
        with pytest.raises(InvalidProof):
            verify(root, k, None, p)
        for other in items:
            if other != k:
                with pytest.raises(InvalidProof):
                    verify(root, other, items[other], p)
    for k in absent:
        p = t.prove(k)
        verify(root, k, None, p)
        with pytest.raises(InvalidProof):
            verify(root, k, b"", p)
        if p.other is not None:
            # The other leaf's key is present: the same proof cannot show it absent.
            with pytest.raises(InvalidProof):
                verify(root, p.other[0], None, p)
    if items:
        # A present key's own absence proof cannot be built from another key's proof.
        k = next(iter(items))
        for a in absent:
            with pytest.raises(InvalidProof):
                verify(root, k, None, t.prove(a))


def tamperings(obj: list) -> list[list]:
    """Every single-field change of a proof object, as fresh lists."""
    depth, bitmap, sibs, other = obj
    out = []
    for d in (depth - 1, depth + 1, depth + 8, 0 if depth else 1):
        out.append([d, bitmap, sibs, other])
    for j in range(len(bitmap) * 8):
        out.append([depth, flip(bitmap, j), sibs, other])
    out.append([depth, bitmap + b"\x00", sibs, other])
    if bitmap:
        out.append([depth, bitmap[:-1], sibs, other])
    for j in range(len(sibs)):
        for i in (0, 131, 255):
            s = list(sibs)
            s[j] = flip(s[j], i)
            out.append([depth, bitmap, s, other])
        out.append([depth, bitmap, sibs[:j] + sibs[j + 1 :], other])
    out.append([depth, bitmap, sibs + [b"\x11" * 32], other])
    if len(sibs) > 1:
        out.append([depth, bitmap, sibs[1:] + sibs[:1], other])
    if other is None:
        out.append([depth, bitmap, sibs, [b"\x22" * 32, b"\x33" * 32]])
    else:
        out.append([depth, bitmap, sibs, None])
        for i in (0, depth // 2, 255):
            out.append([depth, bitmap, sibs, [flip(other[0], i), other[1]]])
        out.append([depth, bitmap, sibs, [other[0], flip(other[1], 9)]])
    return out


@settings(max_examples=60, deadline=None)
@given(key_values.filter(lambda d: len(d) >= 2), keys, st.integers(0, 255))
def test_tampered_proofs_fail(items, probe, rbit):
    t = build(items)
    root = t.root()
    claims = list(items.items())[:3] + [(probe, items.get(probe))]
    for k, v in claims:
        obj = proof_to_cbor_obj(t.prove(k))
        verify(root, k, v, obj)
        with pytest.raises(InvalidProof):
            verify(flip(root, rbit), k, v, obj)
        moved = flip(k, rbit)
        if v is None and rbit >= obj[0] and (obj[3] is None or moved != obj[3][0]):
            # Past the proof's depth the path is the same: the moved key is absent too.
            verify(root, moved, None, obj)
        else:
            with pytest.raises(InvalidProof):
                verify(root, moved, v, obj)
        for bad in tamperings(obj):
            with pytest.raises(InvalidProof):
                verify(root, k, v, bad)


@settings(max_examples=60, deadline=None)
@given(key_values, keys)
def test_proof_object_round_trip(items, probe):
    t = build(items)
    for k in list(items)[:5] + [probe]:
        p = t.prove(k)
        obj = proof_to_cbor_obj(p)
        assert isinstance(obj, list) and len(obj) == 4
        assert isinstance(obj[0], int) and isinstance(obj[1], bytes) and isinstance(obj[2], list)
        assert obj[3] is None or (isinstance(obj[3], list) and len(obj[3]) == 2)
        back = proof_from_cbor_obj(obj)
        assert back == p
        assert proof_to_cbor_obj(back) == obj
        assert proof_from_cbor_obj(tuple(obj)) == p


def test_decode_errors():
    good = [1, b"\x80", [b"\x01" * 32], None]
    assert proof_from_cbor_obj(good).depth == 1
    for bad in (
        None,
        b"",
        [1, b"\x80", [b"\x01" * 32]],
        good + [None],
        [True, b"\x80", [b"\x01" * 32], None],
        [1.0, b"\x80", [b"\x01" * 32], None],
        [1, "\x80", [b"\x01" * 32], None],
        [1, b"\x80", b"\x01" * 32, None],
        [1, b"\x80", [b"\x01" * 31], None],
        [1, b"\x80", [b"\x01" * 32], [b"\x02" * 32]],
        [1, b"\x80", [b"\x01" * 32], [b"\x02" * 32, b"\x03" * 31]],
        [1, b"\x80", [b"\x01" * 32], b"\x02" * 64],
    ):
        with pytest.raises(DecodeError):
            proof_from_cbor_obj(bad)
    for bad in (
        [-1, b"", [], None],
        [257, b"\x00" * 33, [], None],
        [1, b"\x80", [EMPTY], None],
        [1, b"\xc0", [b"\x01" * 32], None],
        [1, b"\x00", [], None],
        [9, b"\x00\xc0", [b"\x01" * 32] * 2, None],
        [1, b"\x80", [b"\x01" * 32] * 257, None],
    ):
        with pytest.raises(InvalidProof):
            proof_from_cbor_obj(bad)


def test_bad_arguments():
    t = build({b"\x01" * 32: b"a", b"\x02" * 32: b"b"})
    root = t.root()
    p = t.prove(b"\x01" * 32)
    for args in (
        (root[:31], b"\x01" * 32, b"a", p),
        (root, b"\x01" * 31, b"a", p),
        (root, b"\x01" * 32, "a", p),
        (root, b"\x01" * 32, b"a", SMTProof("x", None, 3, 4)),
    ):
        with pytest.raises(InvalidProof):
            verify(*args)
    with pytest.raises(ValueError):
        t.set(b"short", b"v")
    with pytest.raises(ValueError):
        t.set(b"\x03" * 32, "text")
    with pytest.raises(ValueError):
        t.get(b"short")


junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-300, 300),
        st.binary(max_size=33),
        st.sampled_from([EMPTY, b"\x01" * 32, b"\xff"]),
        st.text(max_size=2),
    ),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(junk, keys, st.one_of(st.none(), st.binary(max_size=4)))
def test_fuzzed_proof_objects_raise_only_our_errors(obj, key, value):
    try:
        proof_from_cbor_obj(obj)
    except (DecodeError, InvalidProof):
        pass
    try:
        verify(EMPTY, key, value, obj)
    except InvalidProof:
        pass


@settings(max_examples=150, deadline=None)
@given(key_values.filter(bool), keys, st.data())
def test_mutated_proof_objects_raise_only_our_errors(items, probe, data):
    t = build(items)
    obj = proof_to_cbor_obj(t.prove(probe))
    pos = data.draw(st.integers(0, 3))
    obj[pos] = data.draw(junk)
    try:
        verify(t.root(), probe, items.get(probe), obj)
    except InvalidProof:
        pass


def test_root_rehashes_only_changed_paths(monkeypatch):
    rnd = random.Random(7)
    t = SparseMerkleTree()
    keys_ = [rnd.randbytes(32) for _ in range(3000)]
    for k in keys_:
        t.set(k, b"v")
    t.root()
    calls = []

    class CountingHashlib:
        @staticmethod
        def sha256(data: bytes = b"") -> "hashlib._Hash":
            calls.append(1)
            return hashlib.sha256(data)

    monkeypatch.setattr(smt, "hashlib", CountingHashlib)
    assert t.root() is not None and not calls
    t.set(keys_[5], b"w")
    t.set(rnd.randbytes(32), b"new")
    t.delete(keys_[9])
    t.root()
    # Three paths of about log2(3000) ~ 12 nodes each; a full rehash would be ~3000.
    assert 0 < len(calls) <= 3 * 40 + 4          # + the two new leaves and value hashes
    monkeypatch.undo()
    expected = {k: b"v" for k in keys_}
    expected[keys_[5]] = b"w"
    del expected[keys_[9]]
    for k, v in t.items():
        assert expected.get(k, b"new") == v
    assert t.root() == build(dict(t.items())).root()
