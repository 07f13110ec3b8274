"""Block store: durable append, reopen, index, and refusal of gaps and foreign chains."""

import hashlib

import pytest

from ledgerlink.ledger.consensus import messages as m
from ledgerlink.ledger.storage import BlockStore, StoreError


def _block(height: int, prev: bytes, txs: list[bytes]) -> tuple[bytes, bytes]:
    header = m.Header("c", height, prev, 1000 + height, m.tx_root(txs), bytes(32), bytes(32))
    cert = m.CommitCertificate(height, 0, header.hash(), ((0, bytes(64)),))
    return m.Block(header, tuple(txs)).encode(), cert.encode()


def _chain(n: int) -> list[tuple[bytes, bytes, list[bytes]]]:
    out, prev = [], bytes(32)
    for h in range(n):
        txs = [b"tx-%d-%d" % (h, i) for i in range(h % 3 + 1)]
        block, cert = _block(h, prev, txs)
        prev = m.Block.decode(block).header.hash()
        out.append((block, cert, txs))
    return out


def test_append_reopen_and_index(tmp_path):
    path = tmp_path / "b.sqlite"
    chain = _chain(5)
    s = BlockStore(path, "c", b"g")
    for h, (block, cert, txs) in enumerate(chain):
        s.append_block(h, block, cert, [h] * len(txs))
    s.close()
    s = BlockStore(path, "c", b"g")
    assert s.height == 4
    assert list(s.blocks()) == [(b, c) for b, c, _ in chain]
    assert list(s.blocks(3)) == [(b, c) for b, c, _ in chain[3:]]
    block, cert, txs = chain[2]
    assert s.block(2) == (block, cert)
    assert s.header(2) == (m.Block.decode(block).header.encode(), cert)
    assert s.tx_location(hashlib.sha256(txs[-1]).digest()) == (2, len(txs) - 1, 2)
    assert s.tx_location(bytes(32)) is None
    assert s.block(5) is None


def test_refuses_gaps_and_wrong_height(tmp_path):
    s = BlockStore(tmp_path / "b.sqlite", "c", b"g")
    chain = _chain(3)
    with pytest.raises(StoreError):
        s.append_block(1, chain[1][0], chain[1][1])
    s.append_block(0, chain[0][0], chain[0][1])
    with pytest.raises(StoreError):
        s.append_block(1, chain[2][0], chain[2][1])   # header says height 2
    assert s.height == 0


def test_refuses_other_chain_and_holes(tmp_path):
    path = tmp_path / "b.sqlite"
    s = BlockStore(path, "c", b"g")
    chain = _chain(3)
    for h, (block, cert, _) in enumerate(chain):
        s.append_block(h, block, cert)
    s.close()
    with pytest.raises(StoreError):
        BlockStore(path, "other", b"g")
    with pytest.raises(StoreError):
        BlockStore(path, "c", b"other genesis")
    import sqlite3
    db = sqlite3.connect(path)
    db.execute("DELETE FROM blocks WHERE height = 1")
    db.commit()
    db.close()
    with pytest.raises(StoreError):
        BlockStore(path, "c", b"g")


def test_vote_record_replaced_and_kept_across_reopen(tmp_path):
    path = tmp_path / "b.sqlite"
    s = BlockStore(path, "c", b"g")
    assert s.votes() is None
    s.save_votes(b"first")
    s.save_votes(b"second")
    s.close()
    s = BlockStore(path, "c", b"g")
    assert s.votes() == b"second"
    s.close()
