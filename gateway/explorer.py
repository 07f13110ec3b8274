"""The dashboard's proof explorer: why a stored reading is proved, one checked step at a time.

``explain(receipt, frame, chain_id, validator_keys)`` takes a receipt (docs/protocol.md, ``receipt``)
and the frame it is for and checks its chain with the SDK's own verifiers, each step on its own:

1. frame: SHA-256 of the frame is the receipt's frame hash (the batch leaf entry);
2. batch: the RFC 9162 inclusion path of the leaf against the batch root the anchor names
   (``merkle.verify_inclusion``);
3. anchor: the anchor transaction names that root and batch size, and is included in the block under the
   header's tx root (``spv.verify_tx_inclusion``);
4. header: the certified header carries 2f+1 valid commit signatures of the trusted validators, for
   this chain and validator set (``spv.verify_certified_header``); its signers are listed;
5. receipt: the whole receipt as a device and ``ledgerlink admin verify-receipt`` check it
   (``batcher.verify_receipt``).

A step is ok only when its own check passes; the chain holds only when every step is ok, so a receipt
with any byte changed in what it proves (hash, path, transaction, header, signature) shows the step that
fails. ``reading_proof`` builds the receipt of a stored reading from the gateway's store, as the batcher
does for its device. Nothing here trusts the store: every value shown is checked against the trusted
validator set.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ledgerlink.core import cbor, merkle, spv
from ledgerlink.gateway.batcher import batch_receipts, verify_receipt
from ledgerlink.gateway.store import Store

KIND_ANCHOR = 5            # tx-kind of an anchor (docs/protocol.md, tx-anchor)
MAX_RECEIPT_BYTES = 16384  # a receipt offered for checking (a real one is a few KB)


def _hex(value: Any) -> str:
    return value.hex() if isinstance(value, (bytes, bytearray)) else str(value)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _step(name: str, title: str) -> dict:
    return {"name": name, "title": title, "ok": False, "detail": "not checked", "facts": []}


def explain(receipt: bytes, frame: bytes | None, chain_id: str, validator_keys: list[bytes]) -> dict:
    """The checked steps of ``receipt`` for ``frame`` (see the module docstring): {"ok", "steps", "error"}."""
    steps = [_step("frame", "frame hash"), _step("batch", "batch root and inclusion path"),
             _step("anchor", "anchor transaction"), _step("header", "certified header and signers"),
             _step("receipt", "whole receipt, as a device checks it")]
    frame_s, batch_s, anchor_s, header_s, whole_s = steps
    try:
        r = cbor.loads(receipt, max_depth=12)
        if not isinstance(r, dict) or r.get(0) != 1:
            raise ValueError("not a receipt (a CBOR map with 0: 1)")
    except Exception as exc:  # noqa: BLE001 - any decoding failure is shown as the receipt's
        whole_s["detail"] = "receipt does not decode: %s" % _reason(exc)
        return {"ok": False, "steps": steps, "error": whole_s["detail"]}

    frame_hash = r.get(1)
    frame_s["facts"] = [("frame hash (receipt)", _hex(frame_hash)), ("seq", _hex(r.get(2)))]
    if frame is None:
        frame_s["detail"] = "the frame is not stored"
    else:
        actual = hashlib.sha256(frame).digest()
        frame_s["facts"].append(("SHA-256 of the stored frame", actual.hex()))
        frame_s["ok"] = actual == frame_hash
        frame_s["detail"] = "the frame hashes to the receipt's leaf entry" if frame_s["ok"] else \
            "the frame does not hash to the receipt's frame hash"

    header = body = None
    try:
        header = spv.Header(r[7][0])
    except Exception as exc:  # noqa: BLE001
        header_s["detail"] = "header does not decode: %s" % _reason(exc)
    try:
        atp = r[6]
        tx = bytes(atp[1])
        body = cbor.loads(cbor.loads(tx).value[2])
        anchor_s["facts"] = [("transaction id", hashlib.sha256(tx).hexdigest()), ("index in block", _hex(atp[2])),
                             ("transactions in block", _hex(atp[3])), ("batch id", _hex(body.get(4))),
                             ("batch root", _hex(body.get(5))), ("batch size", _hex(body.get(6))),
                             ("tx-root path", " ".join(_hex(h) for h in atp[4]) or "(none: the block's only transaction)")]
    except Exception as exc:  # noqa: BLE001
        anchor_s["detail"] = "anchor transaction does not decode: %s" % _reason(exc)

    try:
        batch_s["facts"] = [("leaf", "%s of %s" % (_hex(r[3]), _hex(r[4]))),
                            ("inclusion path", " ".join(_hex(h) for h in r[5]))]
        if body is None:
            raise ValueError("no batch root: the anchor transaction does not decode")
        merkle.verify_inclusion(merkle.leaf_hash(frame_hash), r[3], r[4], r[5], body.get(5))
        batch_s.update(ok=True, detail="the leaf's path leads to the batch root the anchor names")
    except Exception as exc:  # noqa: BLE001
        batch_s["detail"] = "inclusion path does not verify: %s" % _reason(exc)

    if body is not None:
        try:
            if body.get(1) != KIND_ANCHOR or body.get(6) != r.get(4):
                raise ValueError("the transaction is not an anchor of a batch of this size")
            if header is None:
                raise ValueError("no header to check it against")
            spv.verify_tx_inclusion(header, atp[1], atp[2], atp[3], atp[4])
            anchor_s.update(ok=True, detail="an anchor of this batch, included under the header's tx root")
        except Exception as exc:  # noqa: BLE001
            anchor_s["detail"] = "anchor does not verify: %s" % _reason(exc)

    if header is not None:
        header_s["facts"] = [("height", header.height), ("time (ms since 1970)", header.time_ms),
                             ("header hash", header.hash.hex()), ("tx root", header.tx_root.hex())]
        try:
            votes = r[7][1][3]
            signers = [v[0] for v in votes if isinstance(v, list) and v and isinstance(v[0], int)]
            header_s["facts"] += [("signer %d" % i, validator_keys[i].hex() if i < len(validator_keys) else
                                   "(not a trusted validator)") for i in signers]
            header_s["facts"] += [
                ("quorum", "%d of %d" % (spv.quorum(len(validator_keys)), len(validator_keys)))]
            spv.verify_certified_header(r[7], chain_id, validator_keys)
            header_s.update(ok=True, detail="%d commit signatures of the trusted validators verify" % len(signers))
        except Exception as exc:  # noqa: BLE001
            header_s["detail"] = "certified header does not verify: %s" % _reason(exc)

    try:
        if frame is None:
            raise ValueError("the frame is not stored")
        verify_receipt(receipt, frame, chain_id, validator_keys)
        whole_s.update(ok=True, detail="verifies (what `ledgerlink admin verify-receipt` checks)")
    except Exception as exc:  # noqa: BLE001
        whole_s["detail"] = "does not verify: %s" % _reason(exc)
    ok = all(s["ok"] for s in steps)
    failed = [s for s in steps if not s["ok"]]
    return {"ok": ok, "steps": steps, "error": None if ok else failed[0]["detail"]}


def reading_proof(store: Store, site: str, device: bytes, seq: int) -> dict:
    """The stored reading ``seq`` of ``device``: its message, frame and receipt (None while its batch is not
    anchored), as {"found", "frame_hash", "received_ms", "frame", "receipt"}."""
    msg = store.message_by_seq(device, seq)
    if msg is None:
        return {"found": False, "frame": None, "receipt": None}
    frame = store.frame_of(msg.id) or store.blob(msg.frame_hash)
    batch_id = store.anchored_batch_of(msg)
    receipts = batch_receipts(store, site, batch_id, only=msg.frame_hash) if batch_id is not None else []
    return {"found": True, "frame_hash": msg.frame_hash, "received_ms": msg.received_ms, "time_ms": msg.time_ms,
            "frame": frame, "receipt": receipts[0].payload if receipts else None,
            "batch_id": batch_id}
