"""Device records of ``DeviceProtocol``: controllers and gateways taken from SPV record proofs (docs/protocol.md,
"Commands"), and the device's own registration request. Loaded for each and forgotten after it on a board
(with ``spv`` and ``smt_proof``), so the heap holds none of it while the device takes readings or checks a
command.

Protects against a controller or gateway key the ledger does not hold: a record counts only with a
sparse-Merkle proof under a header certified by 2f+1 of the trusted validators, and an older proof than
one already taken is refused. Tested in tests/protocol/test_device_protocol.py and on board32 in
tests/boards/test_board_cycle.py.
"""

from ledgerlink.core import cbor, cose
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.core.errors import InvalidMessage, InvalidProof


def device_record(device, record_proof):
    """(height, device record or None for an absence proof, state key) of a checked record proof."""
    from ledgerlink.protocol import spv     # here: a command check does not load it

    if device.validator_keys is None or device.chain_id is None:
        raise dp.DeviceError("no trusted validator set: record proofs cannot be checked")
    header, key, value = spv.verify_record_proof(record_proof, device.chain_id, device.validator_keys, device.crypto,
                                                device.group_key)
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


def registration_request(device, time_ms, role, attributes):
    """``DeviceProtocol.registration_request``."""
    payload = {1: device.device_id, 2: device.public_key, 3: int(role), 4: dict(attributes or {}), 5: int(time_ms)}
    frame = cose.sign1(cbor.dumps(payload), device._identity(), device.device_id, b"", device.crypto)
    out = dp.OutFrame(device.topic("reg"), frame)
    device._registration = out.frame_hash
    return out
