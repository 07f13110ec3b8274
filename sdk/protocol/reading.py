"""The ``reading`` of docs/protocol.md, {1: device-id, 2: seq, 3: time-ms, 4: measurements}: its parser.

A gateway parses every reading it checks with it, and ``session_chain.decode`` the readings that carry a
chain statement; a device builds readings (``DeviceProtocol.reading``) and never imports this module.
"""

from ledgerlink.core import cbor, cose
from ledgerlink.core.errors import InvalidMessage, LedgerlinkError
from ledgerlink.protocol.codes import DEVICE_ID_LEN, MAX_SEQ

_HEAD = b"\xa4\x01\x50"                 # {1: 16-byte device id, ...


def _uint_at(data, pos):
    """(value, end) of the shortest-form unsigned integer at ``data[pos]``, or None."""
    if pos >= len(data):
        return None
    b = data[pos]
    if b < 24:
        return b, pos + 1
    if not 24 <= b <= 27:
        return None
    n = 1 << (b - 24)
    end = pos + 1 + n
    if end > len(data):
        return None
    v = int.from_bytes(data[pos + 1:end], "big")
    if v < (24 if n == 1 else 1 << (4 * n)):
        return None
    return v, end


def parse_fast(payload):
    """``parse(payload)`` of a valid reading in its deterministic encoding, else None: the head {1: id,
    2: seq, 3: time, 4: is read here, the measurements by the strict decoder."""
    if len(payload) > cose.MAX_FRAME or not payload.startswith(_HEAD) or payload[19:20] != b"\x02":
        return None
    got = _uint_at(payload, 20)
    if got is None or not 1 <= got[0] <= MAX_SEQ:
        return None
    seq, p = got
    if payload[p:p + 1] != b"\x03":
        return None
    got = _uint_at(payload, p + 1)
    if got is None:
        return None
    t, p = got
    if payload[p:p + 1] != b"\x04":
        return None
    try:
        meas = cbor.loads(payload[p + 1:], max_depth=15, max_size=cose.MAX_FRAME)   # one level below the reading
    except LedgerlinkError:
        return None
    if type(meas) is not dict:
        return None
    for k in meas:
        if type(k) is not str and type(k) is not int:
            return None
    return payload[3:19], seq, t, meas


def parse(payload):
    """(device id, seq, time, measurements) of a reading; InvalidMessage (with the reason) when it is not one."""
    fast = parse_fast(payload)
    return fast if fast is not None else parse_strict(payload)


def parse_strict(payload):
    """``parse`` by the strict decoder alone."""
    try:
        obj = cbor.loads(payload, max_depth=16, max_size=cose.MAX_FRAME)
    except LedgerlinkError as exc:
        raise InvalidMessage("reading is not deterministic CBOR: %s" % exc) from None
    if not isinstance(obj, dict) or set(obj) != {1, 2, 3, 4}:
        raise InvalidMessage("reading must be a map with keys 1, 2, 3, 4")
    dev, seq, t, meas = obj[1], obj[2], obj[3], obj[4]
    if not isinstance(dev, bytes) or len(dev) != DEVICE_ID_LEN:
        raise InvalidMessage("reading device id must be 16 bytes")
    if not cbor.is_uint(seq) or not 1 <= seq <= MAX_SEQ:
        raise InvalidMessage("reading seq must be 1..2^32-1")
    if not cbor.is_uint(t):
        raise InvalidMessage("reading time must be an unsigned integer")
    if not isinstance(meas, dict):
        raise InvalidMessage("measurements must be a map with text or integer keys")
    for k in meas:
        if not isinstance(k, str) and not (isinstance(k, int) and not isinstance(k, bool)):
            raise InvalidMessage("measurements must be a map with text or integer keys")
    return dev, seq, t, meas
