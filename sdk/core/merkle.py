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

This module holds the hashes and the inclusion proof check, all a board needs (a receipt's batch and
anchor proofs, a stored-ack's entry); the tree itself (``MerkleTree``, ``tree_levels``, ``root_of``) and
consistency proofs live in ``merkle_tree`` and are loaded when first named here (``__getattr__``), so
they take no board heap.
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


_TREE = ("MerkleTree", "tree_levels", "root_of", "consistency_proof_length", "verify_consistency")


def __getattr__(name):
    if name in _TREE:
        from ledgerlink.core import merkle_tree

        value = globals()[name] = getattr(merkle_tree, name)     # named directly from now on
        return value
    raise AttributeError(name)
