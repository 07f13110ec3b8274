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
   (``batcher.verify_receipt``);
6. statement (session frames only, ``statement_step``): a session frame is sealed with a key the gateway
   holds too, so what shows that the device sent it is the device-signed chain statement the receipt
   names (field 8): it must be stored, signed by the device's registered key for its ``up`` topic, cover
   this frame among the stored frames of its range (``session_chain.verify`` and ``covered``), and have a
   receipt of its own that verifies. Without field 8 the step is pending (ok None: a device states its
   chain every ``session_chain.EVERY_FRAMES`` frames or ``EVERY_MS``), not failed.

A step is ok only when its own check passes; the chain holds only when no step failed, so a receipt
with any byte changed in what it proves (hash, path, transaction, header, signature) shows the step that
fails. ``reading_proof`` builds the receipt of a stored reading from the gateway's store, as the batcher
does for its device. Nothing here trusts the store: every value shown is checked against the trusted
validator set.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from ledgerlink.core import cbor, merkle
from ledgerlink.protocol import session_chain, spv
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


StatementCheck = Callable[[bytes, bytes], dict]     # (frame hash, statement hash) -> the statement step


def explain(receipt: bytes, frame: bytes | None, chain_id: str, validator_keys: list[bytes],
            statement: StatementCheck | None = None, group_key: bytes | None = None) -> dict:
    """The checked steps of ``receipt`` for ``frame`` (see the module docstring): {"ok", "steps", "error"};
    ``statement`` checks the chain statement a session frame's receipt names (step 6); ``group_key``: the
    set's FROST group key, when its headers name one (a threshold certificate is one signature)."""
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
            cert = r[7][1]
            if group_key is not None and isinstance(cert, list) and len(cert) == 2:
                header_s["facts"] += [("group key", group_key.hex()),
                                      ("quorum", "%d of %d" % (spv.quorum(len(validator_keys)), len(validator_keys)))]
                spv.verify_certified_header(r[7], chain_id, validator_keys, group_key=group_key)
                header_s.update(ok=True, detail="the validators' threshold signature verifies")
            else:
                signers = [v[0] for v in cert[3] if isinstance(v, list) and v and isinstance(v[0], int)]
                header_s["facts"] += [("signer %d" % i, validator_keys[i].hex() if i < len(validator_keys) else
                                       "(not a trusted validator)") for i in signers]
                header_s["facts"] += [
                    ("quorum", "%d of %d" % (spv.quorum(len(validator_keys)), len(validator_keys)))]
                spv.verify_certified_header(r[7], chain_id, validator_keys, group_key=group_key)
                header_s.update(ok=True, detail="%d commit signatures of the trusted validators verify" % len(signers))
        except Exception as exc:  # noqa: BLE001
            header_s["detail"] = "certified header does not verify: %s" % _reason(exc)

    try:
        if frame is None:
            raise ValueError("the frame is not stored")
        verify_receipt(receipt, frame, chain_id, validator_keys, group_key)
        whole_s.update(ok=True, detail="verifies (what `ledgerlink admin verify-receipt` checks)")
    except Exception as exc:  # noqa: BLE001
        whole_s["detail"] = "does not verify: %s" % _reason(exc)
    covered_by = r.get(8)
    if covered_by is not None or (frame is not None and session_chain.session_frame(frame) is not None):
        steps.append(statement_pending(frame_hash, covered_by, statement))
    failed = [s for s in steps if s["ok"] is False]
    ok = not failed
    return {"ok": ok, "steps": steps, "error": None if ok else failed[0]["detail"]}


def statement_pending(frame_hash: Any, covered_by: Any, check: StatementCheck | None) -> dict:
    """Step 6 when ``check`` cannot run or field 8 is absent or malformed; else ``check``'s step."""
    step = _step("statement", "device-signed chain statement (session frame)")
    if covered_by is None:
        step.update(ok=None, detail="pending: no chain statement of the device covers this session frame yet")
        return step
    step["facts"] = [("statement frame hash (receipt field 8)", _hex(covered_by))]
    if not isinstance(covered_by, bytes) or len(covered_by) != 32 or not isinstance(frame_hash, bytes):
        step["detail"] = "field 8 is not a frame hash"
    elif check is None:
        step["detail"] = "not checked: no store to find the statement in"
    else:
        step = check(frame_hash, covered_by)
    return step


def statement_step(store: Store, site: str, chain_id: str, validator_keys: list[bytes], device_key: bytes | None,
                   frame_hash: bytes, statement_hash: bytes, group_key: bytes | None = None) -> dict:
    """Step 6 of ``explain`` for the frame ``frame_hash`` whose receipt names the statement ``statement_hash``,
    checked against ``store`` and the device's registered public key ``device_key``."""
    step = _step("statement", "device-signed chain statement (session frame)")
    step["facts"] = [("statement frame hash (receipt field 8)", statement_hash.hex())]
    try:
        stored = store.message_by_hash(statement_hash)
        frame = store.blob(statement_hash)
        if stored is None or frame is None:
            raise ValueError("the statement is not stored by this gateway")
        if device_key is None:
            raise ValueError("the device's registered key is not known to this gateway yet")
        topic = "ll/%s/dev/%s/up" % (site, stored.device.hex())
        stmt = session_chain.verify(frame, device_key, topic)
        step["facts"] += [("statement", "seq %d of the device, session %s, covers seq %d..%d"
                           % (stmt.seq, stmt.session_id.hex(), stmt.first, stmt.last)),
                          ("signed by", device_key.hex())]
        frames = []
        for seq in range(stmt.first, stmt.last + 1):
            msg = store.message_by_seq(stored.device, seq)
            held = store.blob(msg.frame_hash) if msg is not None else None
            if held is not None:
                frames.append((seq, held))
        if frame_hash not in session_chain.covered(stmt, frames):
            raise ValueError("the statement's chain does not hold this frame")
        own = reading_proof(store, site, stored.device, stmt.seq)
        if own["receipt"] is None:
            raise ValueError("the statement is not anchored yet")
        verify_receipt(own["receipt"], frame, chain_id, validator_keys, group_key)
        step["facts"].append(("statement's own receipt", "verifies (seq %d)" % stmt.seq))
        step.update(ok=True, detail="the device signed a chain over its session frames that holds this frame")
    except Exception as exc:  # noqa: BLE001
        step["detail"] = "does not verify: %s" % _reason(exc)
    return step


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
