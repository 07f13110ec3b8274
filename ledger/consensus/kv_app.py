"""A small deterministic key-value application implementing the consensus ``App`` interface.

A transaction is ``cbor([client-pub: bstr .size 65, nonce: bstr .size 16, key: bstr, value: bstr,
sig: bstr .size 64])``, signed by the client (ES256) over
``cbor(["ledgerlink-kv-v1", client-pub, nonce, key, value])``; executing it sets ``key`` to ``value``
(an empty value deletes the key). The state root is the ``ledgerlink.core.smt`` root over
``SHA-256(key) -> value`` when that module is available, else SHA-256 over the sorted items.
Used by the consensus tests and the simulator; the ledger contracts implement the same interface.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from ledgerlink.ledger.consensus import messages as m

try:
    from ledgerlink.core.smt import SparseMerkleTree
except ImportError:  # pragma: no cover - the sparse Merkle tree is part of the core
    SparseMerkleTree = None

DOMAIN = "ledgerlink-kv-v1"
MAX_KEY = 64
MAX_VALUE = 1024
MALFORMED, TOO_LARGE, BAD_SIGNATURE = 1, 2, 3


def make_tx(crypto: Any, client_priv: bytes, nonce: bytes, key: bytes, value: bytes) -> bytes:
    """A signed key-value transaction."""
    pub = crypto.public_key(client_priv)
    sig = crypto.sign(client_priv, m.dumps([DOMAIN, pub, nonce, key, value]))
    return m.dumps([pub, nonce, key, value, sig])


def parse_tx(tx: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes] | None:
    """(pub, nonce, key, value, sig) or None when malformed."""
    try:
        a = m.loads(tx)
    except m.MessageError:
        return None
    if not isinstance(a, (list, tuple)) or len(a) != 5 or not all(isinstance(x, bytes) for x in a):
        return None
    pub, nonce, key, value, sig = a
    if len(pub) != 65 or len(nonce) != 16 or len(sig) != 64:
        return None
    return pub, nonce, key, value, sig


class KVApp:
    """Key-value state with one speculative block on top of the committed state."""

    def __init__(self, crypto: Any):
        self.crypto = crypto
        self.committed: dict[bytes, bytes] = {}
        self.pending: dict[bytes, bytes] | None = None
        self.height = -1
        self._tree = SparseMerkleTree() if SparseMerkleTree is not None else None

    def check_tx(self, tx: bytes) -> int | None:
        parsed = parse_tx(tx)
        if parsed is None:
            return MALFORMED
        pub, nonce, key, value, sig = parsed
        if len(key) > MAX_KEY or len(value) > MAX_VALUE:
            return TOO_LARGE
        if not self.crypto.verify(pub, m.dumps([DOMAIN, pub, nonce, key, value]), sig):
            return BAD_SIGNATURE
        return None

    def precheck_tx(self, tx: bytes) -> int | None:
        return self.check_tx(tx)

    def execute(self, height: int, time_ms: int, txs: Sequence[bytes]) -> bytes:
        if self.pending is not None:
            raise RuntimeError("execute without commit or rollback")
        writes: dict[bytes, bytes] = {}
        for tx in txs:
            parsed = parse_tx(tx)
            if parsed is None:
                continue
            writes[parsed[2]] = parsed[3]
        self.pending = writes
        return self._root(writes)

    def commit(self, height: int) -> None:
        if self.pending is None:
            raise RuntimeError("commit without execute")
        self._apply(self.pending)
        self.pending = None
        self.height = height

    def rollback(self) -> None:
        self.pending = None

    def get(self, key: bytes) -> bytes | None:
        return self.committed.get(key)

    def _apply(self, writes: dict[bytes, bytes]) -> None:
        for k, v in writes.items():
            hk = hashlib.sha256(k).digest()
            if v:
                self.committed[k] = v
                if self._tree is not None:
                    self._tree.set(hk, v)
            else:
                self.committed.pop(k, None)
                if self._tree is not None:
                    self._tree.delete(hk)

    def _root(self, writes: dict[bytes, bytes]) -> bytes:
        if self._tree is None:
            state = dict(self.committed)
            for k, v in writes.items():
                if v:
                    state[k] = v
                else:
                    state.pop(k, None)
            return hashlib.sha256(m.dumps(sorted(state.items()))).digest()
        undo = [(k, self.committed.get(k)) for k in writes]
        self._apply(writes)
        root = self._tree.root()
        for k, old in undo:
            hk = hashlib.sha256(k).digest()
            if old is None:
                self.committed.pop(k, None)
                self._tree.delete(hk)
            else:
                self.committed[k] = old
                self._tree.set(hk, old)
        return root
