"""Receipt checks of ``DeviceProtocol`` (docs/protocol.md, "Receipts"), in the portable subset.

Loaded when a receipt is checked; a board forgets it after each check, so sessions, readings and
commands run without this code on the heap. The check loads no more than it runs at each step: the
anchor's signature with this module alone, the header's with ``spv``, the inclusion proofs with ``merkle``
(a board forgets ``spv`` before it loads ``merkle``).
The functions work on the ``DeviceProtocol`` they are given (its trust anchors, sent frames and caches).

Protects against a gateway or broker lying about a reading's fate: a receipt is valid only when the
frame hash is in the batch root, the anchor transaction carrying that root and batch size is in the tx
root of a header certified by 2f+1 of the validators the device trusts (or, when the device holds the
set's FROST group key, by one threshold signature of t = 2f+1 of them: ``frost_verify`` is loaded for that
check only), and (when the device knows
gateway keys) the anchor is signed by a known gateway. Tested through ``DeviceProtocol`` in
tests/protocol/test_device_protocol.py and on board32 in tests/boards/test_board_cycle.py.
"""

import hashlib

from ledgerlink.core import cbor, cose
from ledgerlink.protocol.device_protocol import (KIND_RECEIPT, REPLAY_SKIP_MIN, TX_ANCHOR, TX_DOMAIN, DeviceError,
                                                 ReceiptResult, _forget_on_boards, _is_hash, _sha256)
from ledgerlink.core.errors import InvalidMessage


def verify(device, r, frame):
    """``DeviceProtocol.verify_receipt`` of a decoded receipt ``r``: a ReceiptResult, or a LedgerlinkError
    for a malformed one."""
    if device.validator_keys is None or device.chain_id is None:
        raise DeviceError("no trusted validator set: receipts cannot be checked")
    covered_by = r.get(8) if isinstance(r, dict) else None
    if not isinstance(r, dict) or r.get(0) != KIND_RECEIPT or len(r) != (8 if covered_by is None else 9) \
            or not (covered_by is None or _is_hash(covered_by)):
        raise InvalidMessage("receipt must be a map with keys 0..7 (8: a chain statement hash) and kind 1")
    for label in (1, 2, 3, 4, 5, 6, 7):
        if label not in r:
            raise InvalidMessage("receipt must be a map with keys 0..7 and kind 1")
    frame_hash, seq, index, size, path, anchor = r[1], r[2], r[3], r[4], r[5], r[6]
    if not _is_hash(frame_hash) or not cbor.is_uint(seq) or not cbor.is_uint(index) or not cbor.is_uint(size):
        raise InvalidMessage("receipt fields 1..4 have the wrong types")
    if not isinstance(path, list):
        raise InvalidMessage("receipt inclusion proof must be a list of hashes")
    for h in path:
        if not _is_hash(h):
            raise InvalidMessage("receipt inclusion proof must be a list of hashes")
    if frame is not None:
        if _sha256(bytes(frame)) != frame_hash:
            return ReceiptResult(False, seq, frame_hash, "receipt is for another frame")
    elif device.sent.get(seq) != frame_hash:
        return ReceiptResult(False, seq, frame_hash, "receipt is not for a frame this device sent with seq %d" % seq)
    if not isinstance(anchor, dict) or len(anchor) != 4 or 1 not in anchor or 2 not in anchor \
            or 3 not in anchor or 4 not in anchor:
        raise InvalidMessage("anchor-tx-proof must be a map with keys 1..4")
    tx, tx_index, tx_count, tx_path = anchor[1], anchor[2], anchor[3], anchor[4]
    if not isinstance(tx, bytes) or not cbor.is_uint(tx_index) or not cbor.is_uint(tx_count) or not isinstance(tx_path, list):
        raise InvalidMessage("anchor-tx-proof fields have the wrong types")
    sign1 = cose.decode_sign1(tx)
    body = cbor.loads(sign1.payload, max_depth=8)
    if not isinstance(body, dict) or body.get(1) != TX_ANCHOR:
        return ReceiptResult(False, seq, frame_hash, "anchor transaction is not a tx-anchor")
    root, count = body.get(5), body.get(6)
    if not _is_hash(root) or not cbor.is_uint(count):
        raise InvalidMessage("tx-anchor lacks its batch root or size")
    if count != size:
        return ReceiptResult(False, seq, frame_hash, "batch size %d differs from the anchored %d" % (size, count))
    gateway = sign1.kid
    if device.gateway_keys is not None:
        key = device.gateway_keys.get(gateway)
        if key is None:
            return ReceiptResult(False, seq, frame_hash, "anchor is not signed by a known gateway")
        if not _anchor_signed(device, key, sign1):
            return ReceiptResult(False, seq, frame_hash, "anchor signature does not verify")
    sign1 = body = None             # not kept alive through the header's signature checks
    height, tx_root = _certified_header(device, r[7])
    _forget_on_boards(("ledgerlink.protocol", "spv"))
    from ledgerlink.core import merkle     # only now: not on the heap through the signature checks

    merkle.verify_inclusion(merkle.leaf_hash(frame_hash), index, size, path, root)
    merkle.verify_inclusion(merkle.leaf_hash(tx), tx_index, tx_count, tx_path, tx_root)
    if frame is None:
        del device.sent[seq]
    device._replay_skip = REPLAY_SKIP_MIN
    return ReceiptResult(True, seq, frame_hash, "", height, gateway, covered_by)

def _remember(device, cache, entry):
    cache.append(entry)
    while len(cache) > device.cache_size:
        cache.pop(0)

def _anchor_signed(device, key, sign1):
    tbs = sign1.to_be_signed(cbor.dumps([TX_DOMAIN, device.chain_id]))
    mark = _sha256(cbor.dumps([bytes(key), tbs, sign1.signature]))
    if mark in device._anchors:
        return True
    if not device.crypto.verify(key, tbs, sign1.signature):
        return False
    if device.cache_size:
        _remember(device, device._anchors, mark)
    return True

def _certified_header(device, certified):
    """(height, tx root) of a checked certified header, from the cache when the same bytes were checked
    against the same chain and validator set. The cache holds no ``spv.Header``: its class would keep
    the ``spv`` a board forgets after each check alive, and the next check would load a second copy."""
    h = hashlib.sha256(cbor.dumps([device.chain_id, device.validator_keys, device.group_key]))
    h.update(cbor.dumps(certified) if not isinstance(certified, (bytes, bytearray)) else certified)
    mark = h.digest()
    h = None                        # no copy of the header's bytes stays alive through the signature checks
    for entry in device._headers:
        if entry[0] == mark:
            return entry[1]
    from ledgerlink.protocol import spv

    header = spv.verify_certified_header(certified, device.chain_id, device.validator_keys, device.crypto,
                                         device.group_key)
    _forget_on_boards(("ledgerlink.core", "frost_verify"))
    checked = (header.height, header.tx_root)
    if device.cache_size:
        _remember(device, device._headers, (mark, checked))
    return checked
