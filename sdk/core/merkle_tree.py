"""The RFC 9162 Merkle tree itself and its consistency proofs (the hashes and inclusion proof checks are
in ``merkle``, which names everything here too). See ``merkle`` for what is protected and how it is tested."""

from ledgerlink.core.errors import InvalidProof
from ledgerlink.core.merkle import EMPTY_ROOT, HASH_LEN, _check_hash, _check_path, _is_int, _split, leaf_hash, node_hash


def _is_pow2(n):
    return n > 0 and n & (n - 1) == 0


def _log2(n):
    r = 0
    while n > 1:
        n >>= 1
        r += 1
    return r


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
