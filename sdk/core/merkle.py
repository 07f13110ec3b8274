"""Append-only Merkle tree of RFC 9162 (Certificate Transparency v2) section 2.1, SHA-256.

Hashes (RFC 9162 2.1.1): the empty tree hashes to SHA-256(b""); a leaf to SHA-256(0x00 || entry);
an interior node to SHA-256(0x01 || left || right). A tree of n > 1 entries splits at k, the largest
power of two smaller than n: MTH(D[0:n]) = node_hash(MTH(D[0:k]), MTH(D[k:n])).

Proofs are lists of 32-byte hashes: inclusion proofs as in 2.1.3.1, consistency proofs as in 2.1.4.1.
The verifiers follow 2.1.3.2 and 2.1.4.2 and, in addition, check the proof length against the length
the sizes imply, so a proof with extra or missing hashes is refused with a precise reason.
Consistency from size 0 or to the same size needs an empty proof (from 0 also old_root == EMPTY_ROOT;
to the same size also old_root == new_root).

What this protects against, and how it is tested:
- a forged or altered proof, root, leaf hash, index or size -- every mismatch raises InvalidProof
  and the verifiers return None only on success; property tests flip every bit of proofs, roots
  and leaves and change indices and sizes on random trees of 1..70 entries.
- second-preimage confusion between leaves and interior nodes -- the 0x00 / 0x01 prefixes.
- malformed proofs (non-bytes, wrong hash length, non-list, negative or non-int sizes) -- InvalidProof,
  never IndexError or TypeError.
Tree hashes are checked against a plain recursive MTH and the known empty-tree hash.
"""

import hashlib

from ledgerlink.core.errors import InvalidProof

HASH_LEN = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def _as_bytes(entry):
    if isinstance(entry, bytes):
        return entry
    if isinstance(entry, (bytearray, memoryview)):
        return bytes(entry)
    raise TypeError("entry must be bytes")


def leaf_hash(entry):
    """Return SHA-256(0x00 || entry)."""
    h = hashlib.sha256(b"\x00")
    h.update(_as_bytes(entry))
    return h.digest()


def node_hash(left, right):
    """Return SHA-256(0x01 || left || right)."""
    h = hashlib.sha256(b"\x01")
    h.update(left)
    h.update(right)
    return h.digest()


def _split(n):
    """Largest power of two strictly smaller than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _is_pow2(n):
    return n > 0 and n & (n - 1) == 0


def _log2(n):
    r = 0
    while n > 1:
        n >>= 1
        r += 1
    return r


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def inclusion_proof_length(index, size):
    """Number of hashes in the inclusion proof of `index` in a tree of `size` entries."""
    count = 0
    while size > 1:
        k = _split(size)
        if index < k:
            size = k
        else:
            index -= k
            size -= k
        count += 1
    return count


def consistency_proof_length(old_size, new_size):
    """Number of hashes in the consistency proof from old_size to new_size (0 if equal or old_size 0)."""
    if old_size == 0 or old_size == new_size:
        return 0
    count = 0
    m, n, complete = old_size, new_size, True
    while m != n:
        k = _split(n)
        if m <= k:
            n = k
        else:
            m -= k
            n -= k
            complete = False
        count += 1
    return count if complete else count + 1


class MerkleTree:
    """RFC 9162 tree over leaf hashes; append costs O(log n), roots and proofs O(log n) hashes.

    Complete (power-of-two, aligned) subtrees are cached level by level, so roots and proofs of any
    earlier size are computed without rehashing the leaves.
    """

    def __init__(self, entries=()):
        self._levels = [[]]
        for e in entries:
            self.append(e)

    @classmethod
    def from_leaf_hashes(cls, hashes):
        """Build a tree from already computed 32-byte leaf hashes."""
        tree = cls()
        for h in hashes:
            tree.append_leaf_hash(h)
        return tree

    @property
    def size(self):
        return len(self._levels[0])

    def __len__(self):
        return len(self._levels[0])

    def append(self, entry):
        """Append an entry; return its index."""
        return self.append_leaf_hash(leaf_hash(entry))

    def append_leaf_hash(self, h):
        """Append a 32-byte leaf hash; return its index."""
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_LEN:
            raise ValueError("leaf hash must be 32 bytes")
        levels = self._levels
        index = len(levels[0])
        levels[0].append(bytes(h))
        lvl = 0
        while len(levels[lvl]) % 2 == 0:
            row = levels[lvl]
            parent = node_hash(row[-2], row[-1])
            if lvl + 1 == len(levels):
                levels.append([])
            levels[lvl + 1].append(parent)
            lvl += 1
        return index

    def leaf_hash_at(self, index):
        """The stored leaf hash at `index`."""
        if not _is_int(index) or index < 0 or index >= self.size:
            raise ValueError("index out of range")
        return self._levels[0][index]

    def _mth(self, start, n):
        if n == 0:
            return EMPTY_ROOT
        if _is_pow2(n) and start % n == 0:
            return self._levels[_log2(n)][start // n]
        k = _split(n)
        return node_hash(self._mth(start, k), self._mth(start + k, n - k))

    def _check_size(self, size):
        if size is None:
            return self.size
        if not _is_int(size) or size < 0 or size > self.size:
            raise ValueError("size out of range")
        return size

    def root(self, size=None):
        """Root hash of the first `size` entries (default: all)."""
        return self._mth(0, self._check_size(size))

    def inclusion_proof(self, index, size=None):
        """Audit path (RFC 9162 2.1.3.1) of entry `index` in the tree of the first `size` entries."""
        size = self._check_size(size)
        if not _is_int(index) or index < 0 or index >= size:
            raise ValueError("index out of range")
        path = []
        start = 0
        n = size
        while n > 1:
            k = _split(n)
            if index < k:
                path.append(self._mth(start + k, n - k))
                n = k
            else:
                path.append(self._mth(start, k))
                index -= k
                start += k
                n -= k
        path.reverse()
        return path

    def consistency_proof(self, old_size, new_size=None):
        """Consistency proof (RFC 9162 2.1.4.1) between sizes old_size <= new_size."""
        new_size = self._check_size(new_size)
        if not _is_int(old_size) or old_size < 0 or old_size > new_size:
            raise ValueError("old_size out of range")
        if old_size == 0 or old_size == new_size:
            return []
        path = []
        start = 0
        m, n, complete = old_size, new_size, True
        while m != n:
            k = _split(n)
            if m <= k:
                path.append(self._mth(start + k, n - k))
                n = k
            else:
                path.append(self._mth(start, k))
                m -= k
                start += k
                n -= k
                complete = False
        if not complete:
            path.append(self._mth(start, m))
        path.reverse()
        return path


def tree_levels(leaf_hashes):
    """The node hashes of the tree over ``leaf_hashes``, level by level from the leaves to the root: pairs
    hashed left to right, a last node without a sibling carried up unchanged (the same tree as the RFC's
    split at the largest power of two below the size)."""
    level = list(leaf_hashes)
    levels = [level]
    while len(level) > 1:
        up = [node_hash(level[k], level[k + 1]) for k in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            up.append(level[-1])
        levels.append(up)
        level = up
    return levels


def root_of(entries):
    """Root hash of the tree over `entries`."""
    leaves = [leaf_hash(e) for e in entries]
    return tree_levels(leaves)[-1][0] if leaves else EMPTY_ROOT


def _check_hash(h, what):
    if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_LEN:
        raise InvalidProof("%s is not a 32-byte hash" % what)


def _check_path(proof, expected_len):
    if not isinstance(proof, (list, tuple)):
        raise InvalidProof("proof is not a list of hashes")
    if len(proof) != expected_len:
        raise InvalidProof("proof has %d hashes, expected %d" % (len(proof), expected_len))
    for i in range(len(proof)):
        _check_hash(proof[i], "proof element %d" % i)


def verify_inclusion(leaf_hash, index, size, proof, root):
    """Check that `leaf_hash` is entry `index` of the tree of `size` entries with `root`.

    RFC 9162 2.1.3.2. Returns None; raises InvalidProof with the reason on any mismatch.
    """
    if not _is_int(index) or not _is_int(size) or index < 0 or size < 0:
        raise InvalidProof("index and size must be non-negative integers")
    if index >= size:
        raise InvalidProof("index %d is not below tree size %d" % (index, size))
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    _check_path(proof, inclusion_proof_length(index, size))
    root = bytes(root)
    fn = index
    sn = size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            raise InvalidProof("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("proof is shorter than the tree is deep")
    if r != root:
        raise InvalidProof("inclusion proof does not lead to the root")
    return None


def verify_consistency(old_size, new_size, old_root, new_root, proof):
    """Check that the tree of old_size entries with old_root is a prefix of the one with new_root.

    RFC 9162 2.1.4.2. Returns None; raises InvalidProof with the reason on any mismatch.
    """
    if not _is_int(old_size) or not _is_int(new_size) or old_size < 0 or new_size < 0:
        raise InvalidProof("sizes must be non-negative integers")
    if old_size > new_size:
        raise InvalidProof("old size %d exceeds new size %d" % (old_size, new_size))
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    _check_path(proof, consistency_proof_length(old_size, new_size))
    old_root = bytes(old_root)
    new_root = bytes(new_root)
    if old_size == 0:
        if old_root != EMPTY_ROOT:
            raise InvalidProof("old root is not the empty-tree hash")
        return None
    if old_size == new_size:
        if old_root != new_root:
            raise InvalidProof("roots of equal-size trees differ")
        return None
    path = list(proof)
    if _is_pow2(old_size):
        path.insert(0, old_root)
    fn = old_size - 1
    sn = new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = path[0]
    sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise InvalidProof("proof is longer than the trees are deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("proof is shorter than the trees are deep")
    if fr != old_root:
        raise InvalidProof("consistency proof does not lead to the old root")
    if sr != new_root:
        raise InvalidProof("consistency proof does not lead to the new root")
    return None
