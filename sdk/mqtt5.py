"""MQTT 5.0 (and 3.1.1) packet codec: fixed header framing, data types, properties, every packet type.

Pure functions and plain classes, no I/O; CPython only. The embedded broker
(``ledgerlink.tools.mqtt_broker``) decodes what clients send with ``decode_packet`` and
``decode_connect``; the gateway's client (``ledgerlink.gateway.mqtt_client``) decodes what a
server sends with ``decode_server_packet`` and encodes its packets with ``encode_connect``,
``encode_publish``, ``encode_subscribe``, ``puback`` and ``encode_disconnect``. ``split_frame`` cuts one packet from a byte stream.

Protects against malformed or hostile peers: every length, flag, property identifier (per packet
type), duplicate property, variable byte integer form and UTF-8 string is checked, and the decoders
raise only ``MqttError`` (with the MQTT 5 reason code to close with: 0x81 malformed, 0x82 protocol
error, 0x84, 0x90, 0x95). Tested in tests/test_mqtt_broker.py (hypothesis on random and mutated client
packets, raw sockets against the broker) and tests/gateway/test_mqtt_client.py (hypothesis round trips
of the encoders through the decoders, random and mutated server packets, a fake broker sending bad bytes).
"""

from __future__ import annotations

from typing import Any, Sequence

# packet types
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

# reason codes (MQTT 5.0 section 2.4)
SUCCESS = 0x00
NO_SUBSCRIPTION_EXISTED = 0x11
DISCONNECT_WITH_WILL = 0x04
UNSPECIFIED = 0x80
MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
UNSUPPORTED_VERSION = 0x84
CLIENT_ID_NOT_VALID = 0x85
BAD_AUTH_METHOD = 0x8C
SERVER_SHUTTING_DOWN = 0x8B
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QOS_NOT_SUPPORTED = 0x9B

# property identifiers and their value types
P_PAYLOAD_FORMAT, P_MESSAGE_EXPIRY, P_CONTENT_TYPE, P_RESPONSE_TOPIC, P_CORRELATION = 0x01, 0x02, 0x03, 0x08, 0x09
P_SUBSCRIPTION_ID, P_SESSION_EXPIRY, P_ASSIGNED_ID, P_SERVER_KEEP_ALIVE = 0x0B, 0x11, 0x12, 0x13
P_AUTH_METHOD, P_AUTH_DATA, P_REQUEST_PROBLEM, P_WILL_DELAY, P_REQUEST_RESPONSE = 0x15, 0x16, 0x17, 0x18, 0x19
P_RESPONSE_INFO, P_SERVER_REFERENCE, P_REASON_STRING, P_RECEIVE_MAXIMUM = 0x1A, 0x1C, 0x1F, 0x21
P_TOPIC_ALIAS_MAXIMUM, P_TOPIC_ALIAS, P_MAXIMUM_QOS, P_RETAIN_AVAILABLE, P_USER = 0x22, 0x23, 0x24, 0x25, 0x26
P_MAXIMUM_PACKET_SIZE = 0x27

_BYTE, _U16, _U32, _VBI, _STR, _BIN, _PAIR = range(7)
PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VBI, 0x11: _U32, 0x12: _STR,
    0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE, 0x18: _U32, 0x19: _BYTE, 0x1A: _STR, 0x1C: _STR,
    0x1F: _STR, 0x21: _U16, 0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
# properties a client may send, per packet (identifiers valid elsewhere make the packet malformed)
CONNECT_PROPS = frozenset((0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16))
WILL_PROPS = frozenset((0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26))
PUBLISH_PROPS = frozenset((0x01, 0x02, 0x23, 0x08, 0x09, 0x0B, 0x26, 0x03))
ACK_PROPS = frozenset((0x1F, 0x26))
SUBSCRIBE_PROPS = frozenset((0x0B, 0x26))
UNSUBSCRIBE_PROPS = frozenset((0x26,))
DISCONNECT_PROPS = frozenset((0x11, 0x1F, 0x26, 0x1C))
AUTH_PROPS = frozenset((0x15, 0x16, 0x1F, 0x26))

MAX_VBI = 268_435_455
NEVER_EXPIRES = 0xFFFFFFFF
MAX_PID = 65535

class MqttError(Exception):
    """A packet breaks the protocol; ``code`` is the MQTT 5 reason code to close with."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def _malformed(text: str) -> MqttError:
    return MqttError(MALFORMED, text)


def _protocol(text: str) -> MqttError:
    return MqttError(PROTOCOL_ERROR, text)


# --- decoding ------------------------------------------------------------------------------------------


class _Reader:
    """Bounds-checked reads of MQTT data types from ``data[pos:end]``."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def raw(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise _malformed("packet shorter than its fields")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        if self.pos >= self.end:
            raise _malformed("packet shorter than its fields")
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return int.from_bytes(self.raw(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.raw(4), "big")

    def vbi(self) -> int:
        value, shift = 0, 0
        for i in range(4):
            b = self.u8()
            if i and b == 0:
                raise _malformed("variable byte integer not in its shortest form")
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        raise _malformed("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.raw(self.u16())

    def string(self) -> str:
        b = self.binary()
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("string is not well-formed UTF-8") from None
        if "\x00" in s:
            raise _malformed("string contains U+0000")
        return s

    def rest(self) -> bytes:
        return self.raw(self.end - self.pos)

    def properties(self, allowed: frozenset, repeatable: frozenset = frozenset((P_USER,))) -> dict[int, Any]:
        """A property list; user properties (and other ``repeatable`` ones) as lists in arrival order."""
        length = self.vbi()
        if length > self.end - self.pos:
            raise _malformed("property length beyond the packet")
        r = _Reader(self.data, self.pos, self.pos + length)
        self.pos += length
        out: dict[int, Any] = {}
        while r.pos < r.end:
            pid = r.vbi()
            if pid not in allowed:
                raise _malformed("property 0x%02x not valid in this packet" % pid)
            kind = PROPERTY_TYPES[pid]
            if kind == _BYTE:
                value: Any = r.u8()
            elif kind == _U16:
                value = r.u16()
            elif kind == _U32:
                value = r.u32()
            elif kind == _VBI:
                value = r.vbi()
            elif kind == _STR:
                value = r.string()
            elif kind == _BIN:
                value = r.binary()
            else:
                value = (r.string(), r.string())
            if pid in repeatable:
                out.setdefault(pid, []).append(value)
            elif pid in out:
                raise _protocol("property 0x%02x more than once" % pid)
            else:
                out[pid] = value
        return out


class Will:
    __slots__ = ("topic", "payload", "qos", "retain", "props", "delay")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool, props: dict[int, Any]) -> None:
        self.topic, self.payload, self.qos, self.retain, self.props = topic, payload, qos, retain, props
        self.delay = props.get(P_WILL_DELAY, 0)


class Connect:
    __slots__ = ("version", "client_id", "clean_start", "keepalive", "props", "will", "username", "password")


class Publish:
    __slots__ = ("qos", "retain", "dup", "topic", "pid", "props", "payload")


class Ack:
    __slots__ = ("kind", "pid", "code", "props")


class Subscribe:
    __slots__ = ("pid", "props", "topics")     # topics: [(filter, options byte)]


class Unsubscribe:
    __slots__ = ("pid", "props", "filters")


class Disconnect:
    __slots__ = ("code", "props")


class Simple:
    __slots__ = ("kind",)

    def __init__(self, kind: int) -> None:
        self.kind = kind


FLAGS_0010 = (PUBREL, SUBSCRIBE, UNSUBSCRIBE)


def check_topic_name(topic: str) -> None:
    """Raise MqttError(0x90) unless ``topic`` may be published to (non-empty, no wildcards)."""
    if not topic or "+" in topic or "#" in topic:
        raise MqttError(TOPIC_NAME_INVALID, "topic name %r is empty or has a wildcard" % topic[:64])


def valid_filter(f: str) -> bool:
    """Whether ``f`` is a topic filter: ``#`` only alone as the last level, ``+`` only alone in a level."""
    if not f:
        return False
    levels = f.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def split_shared(f: str) -> tuple[str | None, str] | None:
    """``(group, filter)`` of ``$share/group/filter``, ``(None, f)`` otherwise, None if invalid."""
    if not f.startswith("$share/"):
        return (None, f) if valid_filter(f) else None
    parts = f.split("/", 2)
    if len(parts) != 3 or not parts[1] or "+" in parts[1] or "#" in parts[1] or not valid_filter(parts[2]):
        return None
    return parts[1], parts[2]


def decode_connect(body: bytes) -> Connect:
    """A CONNECT body; raises MqttError (``.version`` tells which CONNACK form the client reads)."""
    r = _Reader(body)
    version = 5
    try:
        name = r.string()
        version = r.u8()
        if name != "MQTT" or version not in (4, 5):
            raise MqttError(UNSUPPORTED_VERSION, "protocol %r level %d is not MQTT 3.1.1 or 5" % (name[:16], version))
        flags = r.u8()
        if flags & 0x01:
            raise _malformed("CONNECT reserved flag set")
        will_flag, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 3, bool(flags & 0x20)
        if will_qos == 3 or (not will_flag and (will_qos or will_retain)):
            raise _malformed("CONNECT will flags inconsistent")
        if version == 4 and flags & 0x40 and not flags & 0x80:
            raise _malformed("CONNECT password without user name")
        c = Connect()
        c.version = version
        c.clean_start = bool(flags & 0x02)
        c.keepalive = r.u16()
        c.props = r.properties(CONNECT_PROPS) if version == 5 else {}
        if c.props.get(P_RECEIVE_MAXIMUM) == 0 or c.props.get(P_MAXIMUM_PACKET_SIZE) == 0:
            raise _protocol("receive maximum or maximum packet size of 0")
        for p in (P_REQUEST_PROBLEM, P_REQUEST_RESPONSE):
            if c.props.get(p, 0) > 1:
                raise _protocol("request flag property not 0 or 1")
        if P_AUTH_DATA in c.props and P_AUTH_METHOD not in c.props:
            raise _protocol("authentication data without a method")
        c.client_id = r.string()
        c.will = None
        if will_flag:
            wprops = r.properties(WILL_PROPS) if version == 5 else {}
            _check_message_props(wprops)
            topic = r.string()
            check_topic_name(topic)
            c.will = Will(topic, r.binary(), will_qos, will_retain, wprops)
        c.username = r.string() if flags & 0x80 else None
        c.password = r.binary() if flags & 0x40 else None
        if r.left():
            raise _malformed("bytes after the CONNECT payload")
        return c
    except MqttError as exc:
        exc.version = version  # type: ignore[attr-defined]
        raise


def _check_message_props(props: dict[int, Any]) -> None:
    if props.get(P_PAYLOAD_FORMAT, 0) > 1:
        raise _protocol("payload format indicator not 0 or 1")
    if P_RESPONSE_TOPIC in props:
        check_topic_name(props[P_RESPONSE_TOPIC])


def _decode_ack(kind: int, r: "_Reader", v5: bool, refuse_zero_pid: bool) -> "Ack":
    """PUBACK, PUBREC, PUBREL or PUBCOMP: packet id, then (MQTT 5) optional reason code and properties."""
    a = Ack()
    a.kind = kind
    a.pid = r.u16()
    if refuse_zero_pid and a.pid == 0:
        raise _protocol("acknowledgement of packet identifier 0")
    a.code, a.props = SUCCESS, {}
    if v5 and r.left():
        a.code = r.u8()
        if r.left():
            a.props = r.properties(ACK_PROPS)
    if r.left():
        raise _malformed("bytes after an acknowledgement")
    return a


def _decode_disconnect(r: "_Reader", v5: bool, allowed_props: Any) -> "Disconnect":
    """DISCONNECT: (MQTT 5) optional reason code and properties of ``allowed_props``."""
    d = Disconnect()
    d.code, d.props = SUCCESS, {}
    if v5 and r.left():
        d.code = r.u8()
        if r.left():
            d.props = r.properties(allowed_props)
    if r.left():
        raise _malformed("bytes after DISCONNECT")
    return d


def _publish_head(flags: int, body: bytes) -> tuple["Publish", "_Reader"]:
    """A PUBLISH's fixed-header flags, topic and packet id; the reader stands at its properties."""
    qos = (flags >> 1) & 3
    if qos == 3:
        raise _malformed("PUBLISH with QoS 3")
    if qos == 0 and flags & 0x08:
        raise _malformed("DUP set on a QoS 0 PUBLISH")
    r = _Reader(body)
    p = Publish()
    p.qos, p.retain, p.dup = qos, bool(flags & 1), bool(flags & 0x08)
    p.topic = r.string()
    p.pid = 0
    if qos:
        p.pid = r.u16()
        if p.pid == 0:
            raise _protocol("PUBLISH packet identifier 0")
    return p, r


def decode_packet(first: int, body: bytes, version: int) -> Any:
    """Decode one client-to-server packet (fixed header byte ``first``, its ``body``) of protocol ``version``.

    Returns Connect, Publish, Ack, Subscribe, Unsubscribe, Disconnect or Simple(PINGREQ); raises only
    MqttError (0x81 malformed, 0x82 protocol error, 0x84, 0x90).
    """
    kind, flags = first >> 4, first & 0x0F
    v5 = version == 5
    if kind == PUBLISH:
        p, r = _publish_head(flags, body)
        p.props = r.properties(PUBLISH_PROPS) if v5 else {}
        if P_SUBSCRIPTION_ID in p.props:
            raise _protocol("a client PUBLISH carries a subscription identifier")
        _check_message_props(p.props)
        p.payload = r.rest()
        return p
    if flags != (2 if kind in FLAGS_0010 else 0):
        raise _malformed("reserved flags 0x%x on packet type %d" % (flags, kind))
    r = _Reader(body)
    if kind == CONNECT:
        return decode_connect(body)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _decode_ack(kind, r, v5, False)
    if kind == SUBSCRIBE:
        s = Subscribe()
        s.pid = r.u16()
        if s.pid == 0:
            raise _protocol("SUBSCRIBE packet identifier 0")
        s.props = r.properties(SUBSCRIBE_PROPS) if v5 else {}
        if s.props.get(P_SUBSCRIPTION_ID) == 0:
            raise _protocol("subscription identifier 0")
        s.topics = []
        while r.left():
            f = r.string()
            opts = r.u8()
            if opts & 3 == 3 or opts & (0xC0 if v5 else 0xFC):
                raise _malformed("subscription options 0x%02x" % opts)
            if v5 and (opts >> 4) & 3 == 3:
                raise _protocol("retain handling 3")
            s.topics.append((f, opts))
        if not s.topics:
            raise _protocol("SUBSCRIBE without a topic filter")
        return s
    if kind == UNSUBSCRIBE:
        u = Unsubscribe()
        u.pid = r.u16()
        if u.pid == 0:
            raise _protocol("UNSUBSCRIBE packet identifier 0")
        u.props = r.properties(UNSUBSCRIBE_PROPS) if v5 else {}
        u.filters = []
        while r.left():
            u.filters.append(r.string())
        if not u.filters:
            raise _protocol("UNSUBSCRIBE without a topic filter")
        return u
    if kind == PINGREQ:
        if body:
            raise _malformed("PINGREQ with a body")
        return Simple(PINGREQ)
    if kind == DISCONNECT:
        return _decode_disconnect(r, v5, DISCONNECT_PROPS)
    if kind == AUTH and v5:
        raise _protocol("AUTH without an authentication method")
    if kind == 0 or (kind == AUTH and not v5):
        raise _malformed("reserved packet type %d" % kind)
    raise _protocol("packet type %d is sent by servers only" % kind)


def split_frame(buf: bytes | bytearray, pos: int, max_size: int) -> tuple[int, int, int] | None:
    """``(first, body_start, end)`` of the packet at ``buf[pos:]``, None while incomplete.

    Raises MqttError 0x81 on a bad remaining length and 0x95 when the packet exceeds ``max_size``.
    """
    n = len(buf)
    if n - pos < 2:
        return None
    length, shift, i = 0, 0, pos + 1
    while True:
        if i >= n:
            return None
        b = buf[i]
        if i > pos + 1 and b == 0:
            raise _malformed("remaining length not in its shortest form")
        length |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            break
        shift += 7
        if i - pos > 4:
            raise _malformed("remaining length longer than 4 bytes")
    end = i + length
    if end - pos > max_size:
        raise MqttError(PACKET_TOO_LARGE, "packet of %d bytes exceeds %d" % (end - pos, max_size))
    if end > n:
        return None
    return buf[pos], i, end


# --- encoding ------------------------------------------------------------------------------------------


def vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _s(text: str) -> bytes:
    b = text.encode("utf-8")
    return len(b).to_bytes(2, "big") + b


def _b(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def encode_properties(props: Sequence[tuple[int, Any]]) -> bytes:
    """A property list (length first) from ``(identifier, value)`` pairs, values of the identifier's type."""
    raw = _property_items(props)
    return vbi(len(raw)) + raw


def _property_items(props: Sequence[tuple[int, Any]]) -> bytes:
    out = bytearray()
    for pid, value in props:
        out += vbi(pid)
        kind = PROPERTY_TYPES[pid]
        if kind == _BYTE:
            out.append(value)
        elif kind == _U16:
            out += value.to_bytes(2, "big")
        elif kind == _U32:
            out += value.to_bytes(4, "big")
        elif kind == _VBI:
            out += vbi(value)
        elif kind == _STR:
            out += _s(value)
        elif kind == _BIN:
            out += _b(value)
        else:
            out += _s(value[0]) + _s(value[1])
    return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + vbi(len(body)) + body


PINGRESP_PACKET = bytes((PINGRESP << 4, 0))


def forwarded_properties(props: dict[int, Any]) -> bytes:
    """The properties of a PUBLISH that go unchanged to subscribers (encoded, without length)."""
    items: list[tuple[int, Any]] = []
    for pid in (P_PAYLOAD_FORMAT, P_CONTENT_TYPE, P_RESPONSE_TOPIC, P_CORRELATION):
        if pid in props:
            items.append((pid, props[pid]))
    for pair in props.get(P_USER, ()):
        items.append((P_USER, pair))
    return _property_items(items)



# --- server to client -------------------------------------------------------------------------------------

CONNACK_PROPS = frozenset((0x11, 0x21, 0x24, 0x25, 0x27, 0x12, 0x22, 0x1F, 0x26, 0x28, 0x29, 0x2A, 0x13, 0x1A,
                           0x1C, 0x15, 0x16))
SERVER_PUBLISH_PROPS = frozenset((0x01, 0x02, 0x23, 0x08, 0x09, 0x0B, 0x26, 0x03))
SERVER_DISCONNECT_PROPS = frozenset((0x1F, 0x26, 0x1C))
_REPEATABLE_PUBLISH = frozenset((P_USER, P_SUBSCRIPTION_ID))


class Connack:
    __slots__ = ("session_present", "code", "props")


class Suback:
    """SUBACK or UNSUBACK (``kind``): one reason code per filter, in order."""

    __slots__ = ("kind", "pid", "props", "codes")


def decode_server_packet(first: int, body: bytes) -> Any:
    """Decode one server-to-client MQTT 5 packet (fixed header byte ``first``, its ``body``).

    Returns Connack, Publish (``props[P_SUBSCRIPTION_ID]`` a list), Ack, Suback, Disconnect or
    Simple(PINGRESP); raises only MqttError (0x81 malformed, 0x82 protocol error, 0x90).
    """
    kind, flags = first >> 4, first & 0x0F
    if kind == PUBLISH:
        p, r = _publish_head(flags, body)
        if r.pos < r.end and r.data[r.pos] == 0:      # no properties: the common case
            r.pos += 1
            p.props = {}
        else:
            p.props = r.properties(SERVER_PUBLISH_PROPS, _REPEATABLE_PUBLISH)
            if P_TOPIC_ALIAS in p.props:
                raise MqttError(TOPIC_ALIAS_INVALID, "topic alias from a server (Topic Alias Maximum is 0)")
            if 0 in p.props.get(P_SUBSCRIPTION_ID, ()):
                raise _protocol("subscription identifier 0")
            _check_message_props(p.props)
        check_topic_name(p.topic)
        p.payload = r.rest()
        return p
    if flags != (2 if kind == PUBREL else 0):
        raise _malformed("reserved flags 0x%x on packet type %d" % (flags, kind))
    r = _Reader(body)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _decode_ack(kind, r, True, True)
    if kind == CONNACK:
        c = Connack()
        ack_flags = r.u8()
        if ack_flags & 0xFE:
            raise _malformed("CONNACK reserved flags 0x%02x" % ack_flags)
        c.session_present = bool(ack_flags & 1)
        c.code = r.u8()
        c.props = r.properties(CONNACK_PROPS)
        if r.left():
            raise _malformed("bytes after CONNACK")
        if c.session_present and c.code != SUCCESS:
            raise _protocol("session present on a refused CONNACK")
        if c.props.get(P_RECEIVE_MAXIMUM) == 0 or c.props.get(P_MAXIMUM_PACKET_SIZE) == 0:
            raise _protocol("receive maximum or maximum packet size of 0")
        if c.props.get(P_MAXIMUM_QOS, 0) > 1 or c.props.get(P_RETAIN_AVAILABLE, 0) > 1:
            raise _protocol("maximum QoS or retain available not 0 or 1")
        for p_ in (0x28, 0x29, 0x2A):
            if c.props.get(p_, 0) > 1:
                raise _protocol("availability property 0x%02x not 0 or 1" % p_)
        return c
    if kind in (SUBACK, UNSUBACK):
        s = Suback()
        s.kind = kind
        s.pid = r.u16()
        if s.pid == 0:
            raise _protocol("%s of packet identifier 0" % ("SUBACK" if kind == SUBACK else "UNSUBACK"))
        s.props = r.properties(ACK_PROPS)
        s.codes = list(r.rest())
        if not s.codes:
            raise _protocol("acknowledgement without reason codes")
        return s
    if kind == PINGRESP:
        if body:
            raise _malformed("PINGRESP with a body")
        return Simple(PINGRESP)
    if kind == DISCONNECT:
        return _decode_disconnect(r, True, SERVER_DISCONNECT_PROPS)
    if kind == AUTH:
        raise _protocol("AUTH without an authentication method")
    if kind == 0:
        raise _malformed("reserved packet type 0")
    raise _protocol("packet type %d is sent by clients only" % kind)


def decode_server_publish_qos1(data: bytes, start: int, end: int) -> tuple[str, int, bytes] | None:
    """``(topic, packet id, payload)`` of the body ``data[start:end]`` of a QoS 1 PUBLISH from a server
    (fixed header 0x32 or 0x3A), or None when it has properties or is too short for its fields: then
    ``decode_server_packet`` decodes (or refuses) it. Otherwise checks, in the same order, what
    ``decode_server_packet`` checks and raises the same MqttError.
    """
    if end - start < 2:
        return None
    t_end = start + 2 + ((data[start] << 8) | data[start + 1])
    if t_end + 3 > end:
        return None
    try:
        topic = data[start + 2:t_end].decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("string is not well-formed UTF-8") from None
    if "\x00" in topic:
        raise _malformed("string contains U+0000")
    if data[t_end + 2]:
        return None
    pid = (data[t_end] << 8) | data[t_end + 1]
    if pid == 0:
        raise _protocol("PUBLISH packet identifier 0")
    if not topic or "+" in topic or "#" in topic:
        raise MqttError(TOPIC_NAME_INVALID, "topic name %r is empty or has a wildcard" % topic[:64])
    return topic, pid, data[t_end + 3:end]


# --- client to server encoders ----------------------------------------------------------------------------

PINGREQ_PACKET = bytes((PINGREQ << 4, 0))


def encode_connect(client_id: str, keepalive: int, clean_start: bool, props: Sequence[tuple[int, Any]] = (),
                   username: str | None = None, password: bytes | None = None) -> bytes:
    """An MQTT 5 CONNECT (no will)."""
    flags = (0x02 if clean_start else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = [_s("MQTT"), bytes((5, flags)), keepalive.to_bytes(2, "big"), encode_properties(props), _s(client_id)]
    if username is not None:
        body.append(_s(username))
    if password is not None:
        body.append(_b(password))
    return packet(CONNECT << 4, b"".join(body))


def encode_publish(topic: str, payload: bytes, qos: int = 0, pid: int = 0, retain: bool = False, dup: bool = False,
                   props: bytes = b"\x00") -> bytes:
    """An MQTT 5 PUBLISH; ``props`` is an encoded property list (``encode_properties``)."""
    t = topic.encode("utf-8")
    head = len(t).to_bytes(2, "big") + t
    if qos:
        head += pid.to_bytes(2, "big")
    n = len(head) + len(props) + len(payload)
    first = 0x30 | (8 if dup else 0) | (qos << 1) | (1 if retain else 0)
    if n < 128:
        return b"".join((bytes((first, n)), head, props, payload))
    return b"".join((bytes((first,)), vbi(n), head, props, payload))


def topic_field(topic: str) -> bytes:
    """The topic name field of a PUBLISH: its UTF-8 length (2 bytes) and bytes."""
    t = topic.encode("utf-8")
    return len(t).to_bytes(2, "big") + t


def encode_publish_qos1(topic: bytes, payload: bytes, pid: int, retain: bool = False) -> bytes:
    """``encode_publish(name, payload, 1, pid, retain)`` (no properties, DUP 0) of the topic field
    ``topic = topic_field(name)``."""
    n = len(topic) + 3 + len(payload)
    first = 0x33 if retain else 0x32
    if n < 128:
        fixed = bytes((first, n))
    elif n < 16384:
        fixed = bytes((first, (n & 0x7F) | 0x80, n >> 7))
    else:
        fixed = bytes((first,)) + vbi(n)
    return b"".join((fixed, topic, bytes((pid >> 8, pid & 0xFF, 0)), payload))


def encode_subscribe(pid: int, topics: Sequence[tuple[str, int]], props: Sequence[tuple[int, Any]] = ()) -> bytes:
    """An MQTT 5 SUBSCRIBE of ``(filter, options byte)`` pairs."""
    body = [pid.to_bytes(2, "big"), encode_properties(props)]
    for f, opts in topics:
        body.append(_s(f) + bytes((opts,)))
    return packet((SUBSCRIBE << 4) | 2, b"".join(body))


def puback(pid: int) -> bytes:
    """A PUBACK with reason Success and no properties (4 bytes)."""
    return bytes((PUBACK << 4, 2, pid >> 8, pid & 0xFF))


def encode_disconnect(code: int = SUCCESS, props: Sequence[tuple[int, Any]] = ()) -> bytes:
    if code == SUCCESS and not props:
        return bytes((DISCONNECT << 4, 0))
    return packet(DISCONNECT << 4, bytes((code,)) + encode_properties(props))
