"""Command checks of ``DeviceProtocol`` (docs/protocol.md, "Commands"); the controllers they trust come from
``device_records``.

Loaded for each command; a board forgets it after each use, so a sensor that takes no command keeps none
of it on its heap. The functions work on the ``DeviceProtocol`` they are given (its controllers, command
store and seqs).

Protects against:
- commands from anyone but a controller whose active device record an SPV proof showed;
- commands for another device, on another topic, expired, or valid more than 24 h ahead;
- replays, also across restarts: a command's seq must be above the controller's last executed one,
  which is stored before the command is accepted; a lost record is fenced (``DeviceProtocol.open_commands``).
"""

from ledgerlink.core import cbor, cose
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.core.errors import InvalidMessage, LedgerlinkError


class CommandResult:
    """A checked command: ``accepted`` with ``action``/``args``, or refused with ``reason``."""

    def __init__(self, accepted, reason="", controller=None, seq=None, action=None, args=None, not_after_ms=None):
        self.accepted = accepted
        self.reason = reason
        self.controller = controller
        self.seq = seq
        self.action = action
        self.args = args
        self.not_after_ms = not_after_ms

    def __repr__(self):
        if self.accepted:
            return "CommandResult(accepted, %r, seq=%s)" % (self.action, self.seq)
        return "CommandResult(refused: %s)" % self.reason


class MemoryRecord:
    """A record store in RAM (tests): ``load()`` gives the stored bytes or None, ``store(data)`` keeps them."""

    def __init__(self, data=None):
        self.data = data

    def load(self):
        return self.data

    def store(self, data):
        self.data = bytes(data)


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


def handle_command(device, topic, payload, now_ms):
    """``DeviceProtocol.handle_command``."""
    result = CommandResult
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
