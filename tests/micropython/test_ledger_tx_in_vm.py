"""ledgerlink.protocol.ledger_tx and .reading are portable: under MicroPython they give the bytes CPython
gives (tx ids, frames, state keys, the tx root, the tx aad, parsed readings)."""

from ledgerlink.core import cbor
from ledgerlink.protocol import ledger_tx, reading

PRIV = bytes(range(1, 33))
IDS = [b"\x01" * 16, 7, 70000, 2 ** 40, [b"\x02" * 16, 3], (b"\x03" * 16, b"\x04" * 32), [1, 2, 3], "text"]
READING = {1: b"\x05" * 16, 2: 300, 3: 1_700_000_000_000, 4: {"t": 21, 7: [1, 2]}}

CODE = """
import json
from ledgerlink.protocol import ledger_tx, reading

txs = [bytes.fromhex(t) for t in %(txs)r]
ids = %(ids)r
out = {
    "ids": [ledger_tx.tx_id(t).hex() for t in txs],
    "split": [[p.hex() for p in ledger_tx.split_sign1(t)] for t in txs],
    "root": ledger_tx.tx_root(txs).hex(),
    "aad": ledger_tx.tx_aad("chain-a").hex(),
    "keys": [ledger_tx.state_key(kind, rid).hex() for kind in (1, 3, 30) for rid in ids],
    "reading": [x.hex() if isinstance(x, bytes) else x for x in reading.parse(bytes.fromhex(%(reading)r))],
}
print(json.dumps(out))
"""


def test_ledger_tx_and_reading_give_the_same_bytes_in_micropython(vm):
    txs = [ledger_tx.anchor_tx("chain-a", PRIV, 7, bytes(32), 3, 1_700_000_000_000, nonce=bytes(16)),
           ledger_tx.ban_tx("chain-a", PRIV, b"\x09" * 16, "x" * 300, 5, nonce=b"\x01" * 16)]
    payload = cbor.dumps(READING)
    out, _ = vm.run_json(CODE % {"txs": [t.hex() for t in txs], "ids": IDS, "reading": payload.hex()})
    assert out["ids"] == [ledger_tx.tx_id(t).hex() for t in txs]
    assert out["split"] == [[p.hex() for p in ledger_tx.split_sign1(t)] for t in txs]
    assert out["root"] == ledger_tx.tx_root(txs).hex()
    assert out["aad"] == ledger_tx.tx_aad("chain-a").hex()
    assert out["keys"] == [ledger_tx.state_key(kind, rid).hex() for kind in (1, 3, 30) for rid in IDS]
    dev, seq, t, meas = reading.parse(payload)
    assert out["reading"] == [dev.hex(), seq, t, {"t": 21, "7": [1, 2]}]
