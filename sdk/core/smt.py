"""Sparse Merkle tree over 256-bit keys with shortcut leaves and compact proofs (SHA-256).

Tree. Keys are 32 bytes. Bit i of a key (i = 0 is the most significant bit of byte 0) chooses the
child at depth i: 0 left, 1 right; the root is at depth 0. The tree is canonical, a function of the
key set only: a subtree holding no key is empty, a subtree holding exactly one key is that key's
leaf (stored at the shortest prefix where the key is alone), a subtree holding two or more keys is
an interior node. Leaves therefore sit at depth 0..256.

Hashes.
  empty subtree        EMPTY = 32 zero bytes, at every depth
  value_hash(value)    SHA-256(value)
  leaf(key, value)     SHA-256(0x00 || key || value_hash(value))
  interior(l, r)       SHA-256(0x01 || l || r), except interior(EMPTY, EMPTY) = EMPTY
The root of the empty tree is EMPTY; the root of a one-key tree is that key's leaf hash.

Proof of `key` (membership or non-membership). Walking from the root along the key's bits stops at
depth d (0 <= d <= 256) at the key's leaf, at an empty subtree, or at the leaf of another key that
shares the key's first d bits. The proof is the CBOR-friendly list
    [depth, bitmap, siblings, other_leaf]
  depth      int d
  bitmap     bytes of length ceil(d / 8); bit j (byte j // 8, mask 0x80 >> (j % 8)) is set when the
             sibling at depth j + 1 is non-empty; bits at positions >= d are zero
  siblings   list of the non-empty sibling hashes, 32 bytes each, none equal to EMPTY, deepest
             first (depth d up to depth 1); its length is the number of set bitmap bits
  other_leaf null, or [other_key, other_value_hash] (32 bytes each) for a path ending at
             another key's leaf
The verifier starts from leaf(key, value) (membership), EMPTY (absence, other_leaf null) or
SHA-256(0x00 || other_key || other_value_hash) (absence, other_leaf given), folds in the siblings
from depth d up to depth 1 (an elided sibling is EMPTY; key bit j - 1 set puts the running hash on
the right at depth j) and compares with the root. It also requires the canonical form: for d > 0 the
sibling at depth d is non-empty (otherwise the leaf or empty subtree would sit higher), and other_key
differs from key and shares its first d bits.

What this protects against, and how it is tested:
- forged membership (wrong value, absent key) and forged absence (present key) -- the fold must
  reach the root; leaf and interior hashes are domain-separated (0x00 / 0x01) and leaves bind the
  full key, so a leaf cannot be presented at another position. Tests tamper every field of proofs
  on random key sets and check each false claim is refused.
- non-canonical or malformed proofs -- strict shape checks in proof_from_cbor_obj (DecodeError for
  wrong types or lengths, InvalidProof for inconsistent contents); verify raises only InvalidProof;
  fuzzed proof objects in the tests raise nothing else.
The root is tested to be independent of insertion order and restored by deletion.

The hashes, the proof form and ``verify`` live in ``smt_proof`` (re-exported here), so a board that
only checks proofs does not load the tree. Implementation: an explicit node tree with cached interior
hashes; set/delete clear the cache along one path and root() rehashes only those nodes, so n updates
cost O(n log n) hashes in total.
"""

import hashlib

from ledgerlink.core.smt_proof import (  # noqa: F401  (part of this module's API)
    EMPTY, HASH_LEN, KEY_LEN, MAX_DEPTH, SMTProof, _bit, _first_diff, _is_bytes, interior_hash, leaf_hash,
    proof_from_cbor_obj, proof_to_cbor_obj, value_hash, verify)


def _check_key(key):
    if not _is_bytes(key, KEY_LEN):
        raise ValueError("key must be 32 bytes")
    return bytes(key)


class _Leaf:
    __slots__ = ("key", "vh", "h")   # CPython: no dict per node (MicroPython ignores __slots__)

    def __init__(self, key, vhash):
        self.key = key
        self.vh = vhash
        self.h = hashlib.sha256(b"\x00" + key + vhash).digest()


class _Branch:
    __slots__ = ("l", "r", "h")

    def __init__(self):
        self.l = None
        self.r = None
        self.h = None


def _hash_of(node):
    """Hash of a subtree, rehashing only the interior nodes whose cache was cleared.

    Iterative (no recursion 256 deep on a board); an interior node in the tree always has a
    non-empty subtree below it, so its hash is never the EMPTY special case."""
    if node is None:
        return EMPTY
    if node.h is not None:
        return node.h
    sha = hashlib.sha256
    stack = [node]
    push = stack.append
    pop = stack.pop
    while stack:
        n = stack[-1]
        l = n.l
        r = n.r
        if l is not None and l.h is None:
            push(l)
            if r is not None and r.h is None:
                push(r)
            continue
        if r is not None and r.h is None:
            push(r)
            continue
        pop()
        if l is None:
            n.h = sha(b"\x01" + EMPTY + r.h).digest()
        elif r is None:
            n.h = sha(b"\x01" + l.h + EMPTY).digest()
        else:
            n.h = sha(b"\x01" + l.h + r.h).digest()
    return node.h


def _split(key, leaf, node, depth, dirty):
    """The subtree that replaces ``node`` (a leaf of another key met at ``depth``) so that ``node`` and
    ``leaf`` part where their keys first differ; its new branches are added to ``dirty`` top-down."""
    split = _first_diff(key, node.key)
    top = _Branch()
    if (key[split >> 3] >> (7 - (split & 7))) & 1:
        top.l, top.r = node, leaf
    else:
        top.l, top.r = leaf, node
    chain = [top]
    d = split - 1
    while d >= depth:
        b = _Branch()
        if (key[d >> 3] >> (7 - (d & 7))) & 1:
            b.r = top
        else:
            b.l = top
        chain.append(b)
        top = b
        d -= 1
    if dirty is not None:
        chain.reverse()
        dirty.extend(chain)
    return top


class SparseMerkleTree:
    """Mutable sparse Merkle tree mapping 32-byte keys to byte-string values."""

    def __init__(self):
        self._root = None
        self._values = {}

    def __len__(self):
        return len(self._values)

    def __contains__(self, key):
        return key in self._values

    def get(self, key):
        """The value stored under key, or None."""
        return self._values.get(_check_key(key))

    def items(self):
        """List of (key, value) pairs sorted by key."""
        return sorted(self._values.items())

    def root(self):
        """Root hash (EMPTY for the empty tree)."""
        return _hash_of(self._root)

    def _attach(self, parent, side, node):
        if parent is None:
            self._root = node
        elif side:
            parent.r = node
        else:
            parent.l = node

    def set(self, key, value):
        """Store value (bytes) under key, replacing any previous value."""
        key = _check_key(key)
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError("value must be bytes")
        value = bytes(value)
        leaf = _Leaf(key, hashlib.sha256(value).digest())
        self._values[key] = value
        parent = None
        side = 0
        node = self._root
        depth = 0
        branch = _Branch
        while type(node) is branch:
            node.h = None
            side = (key[depth >> 3] >> (7 - (depth & 7))) & 1
            parent = node
            node = node.r if side else node.l
            depth += 1
        if node is None or node.key == key:
            self._attach(parent, side, leaf)
            return
        self._attach(parent, side, _split(key, leaf, node, depth, None))

    def update(self, items):
        """Store every (key, value) pair of items, as set() would one by one, and rehash the tree.

        The keys go in sorted order, each walking down from where its path leaves the previous
        key's; the interior nodes on the new paths are then hashed once each, children before
        parents, so that root() costs nothing afterwards. Raises ValueError (nothing stored) on a
        bad key or value."""
        pairs = {}
        for key, value in items:
            if type(key) is not bytes or len(key) != KEY_LEN:
                key = _check_key(key)
            if type(value) is not bytes:
                if not isinstance(value, bytearray):
                    raise ValueError("value must be bytes")
                value = bytes(value)
            pairs[key] = value
        if not pairs:
            return
        values = self._values
        sha = hashlib.sha256
        branch = _Branch
        dirty = []
        mark = dirty.append
        path = []
        walked = path.append
        prev = None
        for key in sorted(pairs):
            value = pairs[key]
            values[key] = value
            leaf = _Leaf(key, sha(value).digest())
            if prev is None:
                parent = None
                side = 0
                node = self._root
                depth = 0
            else:
                depth = _first_diff(prev, key) + 1
                if depth < len(path):
                    del path[depth:]
                else:
                    depth = len(path)
                if depth:
                    parent = path[-1]
                    side = _bit(key, depth - 1)
                    node = parent.r if side else parent.l
                else:
                    parent = None
                    side = 0
                    node = self._root
            prev = key
            while type(node) is branch:
                if node.h is not None:
                    node.h = None
                    mark(node)
                walked(node)
                side = (key[depth >> 3] >> (7 - (depth & 7))) & 1
                parent = node
                node = node.r if side else node.l
                depth += 1
            if node is None or node.key == key:
                self._attach(parent, side, leaf)
                continue
            top = _split(key, leaf, node, depth, dirty)
            if parent is None:
                self._root = top
            elif side:
                parent.r = top
            else:
                parent.l = top
        for n in reversed(dirty):
            l = n.l
            r = n.r
            if l is None:
                lh = EMPTY
            else:
                lh = l.h
                if lh is None:
                    lh = _hash_of(l)
            if r is None:
                rh = EMPTY
            else:
                rh = r.h
                if rh is None:
                    rh = _hash_of(r)
            n.h = sha(b"\x01" + lh + rh).digest()

    def delete(self, key):
        """Remove key; return True if it was present."""
        key = _check_key(key)
        if key not in self._values:
            return False
        del self._values[key]
        path = []
        node = self._root
        depth = 0
        while isinstance(node, _Branch):
            side = _bit(key, depth)
            path.append((node, side))
            node = node.r if side else node.l
            depth += 1
        repl = None
        i = len(path) - 1
        while i >= 0:
            b, side = path[i]
            if side:
                b.r = repl
                other = b.l
            else:
                b.l = repl
                other = b.r
            if other is None and (repl is None or isinstance(repl, _Leaf)):
                pass
            elif repl is None and isinstance(other, _Leaf):
                repl = other
            else:
                break
            i -= 1
        if i < 0:
            self._root = repl
        else:
            for j in range(i + 1):
                path[j][0].h = None
        return True

    def prove(self, key):
        """Membership proof if key is present, else non-membership proof (an SMTProof)."""
        key = _check_key(key)
        self.root()
        node = self._root
        depth = 0
        found = []
        while isinstance(node, _Branch):
            if _bit(key, depth):
                sib = node.l
                node = node.r
            else:
                sib = node.r
                node = node.l
            depth += 1
            if sib is not None:
                found.append((depth, sib.h))
        bitmap = bytearray((depth + 7) // 8)
        siblings = []
        for level, h in reversed(found):
            bitmap[(level - 1) >> 3] |= 0x80 >> ((level - 1) & 7)
            siblings.append(h)
        other = None
        if node is not None and node.key != key:
            other = (node.key, node.vh)
        return SMTProof(depth, bytes(bitmap), siblings, other)
