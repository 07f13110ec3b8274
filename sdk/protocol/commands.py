"""Device records (controllers, gateways) and command checks of ``DeviceProtocol`` (docs/protocol.md, "Commands").

Loaded for each controller or gateway record and command; a board forgets it after each use, so a sensor
that takes no command keeps none of it on its heap. The functions work on the ``DeviceProtocol`` they are
given (its trust anchors, controllers, record heights, command store and seqs).

Protects against:
- commands from anyone but a controller whose active device record an SPV proof showed;
- commands for another device, on another topic, expired, or valid more than 24 h ahead;
- replays, also across restarts: a command's seq must be above the controller's last executed one,
  which is stored before the command is accepted; a lost record is fenced (``DeviceProtocol.open_commands``).
"""

from ledgerlink.core import cbor, cose
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.core.errors import InvalidMessage, InvalidProof, LedgerlinkError


def decode_commands(data):
    """(fence-ms, {controller id: last seq}) of a record by ``encode_commands``; raises on any damage."""
    obj = cbor.loads(dp._unchecked(data, "command record"), max_depth=3, max_size=65536)
    if (not isinstance(obj, list) or len(obj) != 3 or obj[0] != dp.COMMAND_RECORD_VERSION or not cbor.is_uint(obj[1])
            or not isinstance(obj[2], dict)):
        raise InvalidMessage("command record must be [1, fence-ms, {controller: seq}]")
    for cid in obj[2]:
        seq = obj[2][cid]
        if not isinstance(cid, bytes) or not cbor.is_uint(seq) or seq > dp.MAX_SEQ:
            raise InvalidMessage("command record entries must be controller id: seq")
    return obj[1], obj[2]


CLOCK_SET_MIN_MS = 1577836800000      # 2020-01-01: an earlier start time means the clock was not set yet


def load(device, new_identity=False, now_ms=None):
    """Read the command record of ``device``; a missing or damaged one is replaced, fenced at the start
    (or, when the clock was not set at the start, at ``now_ms``, the first command's time)."""
    store = device._command_store
    raw = store.load()
    try:
        fence_ms, seqs = decode_commands(raw)
    except (LedgerlinkError, TypeError):
        fence_ms = device._command_start_ms
        if fence_ms < CLOCK_SET_MIN_MS and now_ms is not None:
            fence_ms = now_ms
        fence_ms, seqs = 0 if new_identity and raw is None else fence_ms, {}
        store.store(dp.encode_commands(fence_ms, seqs))
    device._command_fence_ms = fence_ms
    device.command_seqs = seqs


def device_record(device, record_proof):
    """(height, device record or None for an absence proof, state key) of a checked record proof."""
    from ledgerlink.protocol import spv     # here: a command check does not load it

    if device.validator_keys is None or device.chain_id is None:
        raise dp.DeviceError("no trusted validator set: record proofs cannot be checked")
    header, key, value = spv.verify_record_proof(record_proof, device.chain_id, device.validator_keys, device.crypto)
    if value is None:
        return header.height, None, key
    record = cbor.loads(value, max_depth=8)
    if not isinstance(record, dict) or not isinstance(record.get(1), bytes) or not isinstance(record.get(2), bytes):
        raise InvalidMessage("not a device record")
    if spv.state_key(dp.RECORD_DEVICE, record[1]) != key:
        raise InvalidProof("record is not the device record of its key")
    return header.height, record, key


def update_gateway(device, record_proof):
    """``DeviceProtocol.update_gateway``."""
    record = device_record(device, record_proof)[1]
    if record is None or record.get(3) != dp.ROLE_GATEWAY or record.get(5) != dp.STATUS_ACTIVE:
        raise dp.DeviceError("record proof does not show an active gateway")
    if device.gateway_keys is None:
        device.gateway_keys = {}
    device.gateway_keys[record[1]] = record[2]
    return record[1]


def update_controller(device, record_proof):
    """``DeviceProtocol.update_controller``."""
    height, record, key = device_record(device, record_proof)
    if record is None:
        from ledgerlink.protocol import spv

        for cid in list(device.controllers):
            if spv.state_key(dp.RECORD_DEVICE, cid) == key and device.controllers[cid][1] <= height:
                del device.controllers[cid]
                device._record_heights[cid] = height
        return key
    cid = record[1]
    seen = device._record_heights.get(cid, -1)
    if height < seen:
        raise dp.DeviceError("record proof of height %d is older than one already taken (%d)" % (height, seen))
    device._record_heights[cid] = height
    if record.get(3) != dp.ROLE_CONTROLLER or record.get(5) != dp.STATUS_ACTIVE:
        device.controllers.pop(cid, None)
        if record.get(3) != dp.ROLE_CONTROLLER:
            raise dp.DeviceError("device %s is not a controller" % cid.hex())
        return cid
    device.controllers[cid] = (record[2], height)
    return cid


def handle_command(device, topic, payload, now_ms):
    """``DeviceProtocol.handle_command``."""
    result = dp.CommandResult
    if topic != device.cmd_topic:
        return result(False, "command on topic %r, not this device's" % (topic,))
    try:
        msg = cose.decode_sign1(bytes(payload))
    except (LedgerlinkError, TypeError, ValueError) as exc:
        return result(False, "malformed command: %s" % exc)
    cid = msg.kid
    held = device.controllers.get(cid) if cid is not None else None
    if held is None:
        return result(False, "signer %s is not a controller listed by the ledger" % (cid.hex() if cid else "(no kid)"),
                      cid)
    if not device.crypto.verify(held[0], msg.to_be_signed(topic.encode()), msg.signature):
        return result(False, "command signature does not verify with the controller key", cid)
    try:
        body = cbor.loads(msg.payload, max_depth=16)
    except LedgerlinkError as exc:
        return result(False, "command body is not deterministic CBOR: %s" % exc, cid)
    if (not isinstance(body, dict) or len(body) != 5 or 1 not in body or 2 not in body or 3 not in body
            or 4 not in body or 5 not in body or not isinstance(body[3], str)
            or not cbor.is_uint(body[2]) or not 1 <= body[2] <= dp.MAX_SEQ or not cbor.is_uint(body[5])):
        return result(False, "command must be {1: target, 2: seq, 3: action, 4: args, 5: not-after}", cid)
    seq = body[2]
    if body[1] != device.device_id:
        return result(False, "command is for another device", cid, seq)
    not_after = body[5]
    if now_ms > not_after:
        return result(False, "command expired %d ms ago" % (now_ms - not_after), cid, seq)
    if not_after - now_ms > dp.COMMAND_AHEAD_MAX_MS:
        return result(False, "command not-after is more than 24 h ahead of the device clock", cid, seq)
    store = device._command_store
    if store is None:
        return result(False, "no command store is open: commands are refused", cid, seq)
    if device._command_fence_ms is None:
        load(device, False, now_ms)
    fence_ms = device._command_fence_ms
    last = device.command_seqs.get(cid)
    if last is None and not_after < fence_ms + dp.COMMAND_AHEAD_MAX_MS:
        return result(False, "the command store was new or lost at %d: a controller's first command must be valid "
                      "until at least 24 h after that" % fence_ms, cid, seq)
    if last is not None and seq <= last:
        return result(False, "command seq %d already used (last %d)" % (seq, last), cid, seq)
    seqs = dict(device.command_seqs)
    seqs[cid] = seq
    store.store(dp.encode_commands(fence_ms, seqs))
    device.command_seqs = seqs
    return result(True, "", cid, seq, body[3], body[4], not_after)
