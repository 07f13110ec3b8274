"""MQTT 3.1.1 packet codec and a small non-blocking client over any byte stream (OASIS MQTT 3.1.1).

Packets: CONNECT, CONNACK, PUBLISH (QoS 0/1), PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT.
The stream is any object with ``write(data)`` (writes everything), ``read(n, timeout_ms)`` (up to n
bytes; b"" when nothing arrived in time; OSError when the connection is closed) and ``close()``;
``ledgerlink_client.transport`` has one over a socket and one over host calls.

Unlike umqtt.simple, whose QoS 1 ``publish`` blocks until the PUBACK, ``MQTTClient.publish`` returns
the packet id at once and ``poll`` reports ("puback", pid) events, so the device layer can keep several
publishes in flight and retransmit them itself. umqtt.simple can be used instead through
``ledgerlink_client.umqtt_adapter``.

Protects against: malformed or hostile packets from the broker (``parse`` raises MQTTError, never
IndexError; remaining length limited to 4 bytes and to ``max_packet``; unknown or reserved packet types
refused). Tested under CPython with hypothesis round trips and truncation/garbage cases and against a
real mosquitto broker from inside MicroPython (tests/micropython/).
"""

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

MAX_REMAINING = 268435455
DEFAULT_MAX_PACKET = 8192
READ_MAX = 512                  # bytes read from the stream at a time into a packet's buffer


class MQTTError(OSError):
    """A protocol error or a refusal by the broker; the connection should be dropped."""


class Packet:
    """A decoded packet. Fields not used by a packet type stay None."""

    def __init__(self, kind, flags=0, pid=None, topic=None, payload=None, qos=0, retain=False, dup=False,
                 codes=None, session_present=False, return_code=None, client_id=None, keepalive=None,
                 clean_session=False, username=None, password=None):
        self.kind = kind
        self.flags = flags
        self.pid = pid
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.codes = codes
        self.session_present = session_present
        self.return_code = return_code
        self.client_id = client_id
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.username = username
        self.password = password

    def __repr__(self):
        return "Packet(kind=%d, pid=%r, topic=%r)" % (self.kind, self.pid, self.topic)


def encode_length(n):
    """Remaining length as the 1..4 byte variable-length integer."""
    if n < 0 or n > MAX_REMAINING:
        raise MQTTError("remaining length out of range")
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _string(s):
    if isinstance(s, str):
        s = s.encode("utf-8")
    if len(s) > 65535:
        raise MQTTError("string longer than 65535 bytes")
    return len(s).to_bytes(2, "big") + bytes(s)


def _pid_bytes(pid):
    if not isinstance(pid, int) or not 0 < pid < 65536:
        raise MQTTError("packet id must be 1..65535")
    return pid.to_bytes(2, "big")


def _packet(first, body):
    return bytes([first]) + encode_length(len(body)) + body


def encode_publish(topic, payload, qos=0, retain=False, pid=None, dup=False):
    """PUBLISH; ``pid`` is required for QoS 1."""
    if qos not in (0, 1):
        raise MQTTError("only QoS 0 and 1 are supported")
    if not topic or "+" in topic or "#" in topic:
        raise MQTTError("publish topic must be non-empty without wildcards")
    first = (PUBLISH << 4) | (qos << 1) | (1 if retain else 0) | (8 if dup and qos else 0)
    body = _string(topic)
    if qos:
        body += _pid_bytes(pid)
    return _packet(first, body + bytes(payload))


def encode_puback(pid):
    return _packet(PUBACK << 4, _pid_bytes(pid))


def encode_pingreq():
    return b"\xc0\x00"


def encode_disconnect():
    return b"\xe0\x00"


class _Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise MQTTError("packet truncated")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return int.from_bytes(self.take(2), "big")

    def string(self):
        raw = self.take(self.u16())
        try:
            return raw.decode("utf-8")
        except UnicodeError:
            raise MQTTError("string is not UTF-8")

    def binary(self):
        return self.take(self.u16())

    def rest(self):
        return self.take(len(self.data) - self.pos)

    def done(self):
        if self.pos != len(self.data):
            raise MQTTError("trailing bytes in packet")


def _pid(reader):
    pid = reader.u16()
    if pid == 0:
        raise MQTTError("packet id 0")
    return pid


def _decode_body(kind, flags, body):
    r = _Reader(body)
    if kind in (PUBACK, PINGREQ, PINGRESP, DISCONNECT, CONNACK, SUBACK, CONNECT) and flags != 0:
        raise MQTTError("reserved flags set")
    if kind == CONNECT or kind == SUBSCRIBE:
        from ledgerlink_client.mqtt_server import decode_body

        return decode_body(kind, flags, r, body)
    if kind == CONNACK:
        ack, code = r.u8(), r.u8()
        r.done()
        if ack & 0xFE:
            raise MQTTError("reserved CONNACK flags set")
        return Packet(kind, session_present=bool(ack & 1), return_code=code)
    if kind == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise MQTTError("PUBLISH with QoS 3")
        topic = r.string()
        pid = _pid(r) if qos else None
        return Packet(kind, flags, pid=pid, topic=topic, payload=r.rest(), qos=qos, retain=bool(flags & 1),
                      dup=bool(flags & 8))
    if kind == PUBACK:
        pid = _pid(r)
        r.done()
        return Packet(kind, pid=pid)
    if kind == SUBACK:
        pid = _pid(r)
        codes = list(r.rest())
        if not codes:
            raise MQTTError("SUBACK without return codes")
        for c in codes:
            if c not in (0, 1, 2, 0x80):
                raise MQTTError("bad SUBACK return code")
        return Packet(kind, pid=pid, codes=codes)
    if kind in (PINGREQ, PINGRESP, DISCONNECT):
        r.done()
        return Packet(kind)
    raise MQTTError("unsupported packet type %d" % kind)


def parse(buf, max_packet=DEFAULT_MAX_PACKET):
    """Parse one packet from the front of ``buf``: (Packet, bytes used), or (None, 0) if incomplete."""
    if len(buf) < 2:
        return None, 0
    first = buf[0]
    n = 0
    shift = 0
    i = 1
    while True:
        if i >= len(buf):
            return None, 0
        if i > 4:
            raise MQTTError("remaining length longer than 4 bytes")
        b = buf[i]
        n |= (b & 0x7F) << shift
        shift += 7
        i += 1
        if not b & 0x80:
            break
    if i + n > max_packet:
        raise MQTTError("packet of %d bytes exceeds the %d-byte limit" % (i + n, max_packet))
    if len(buf) < i + n:
        return None, 0
    return _decode_body(first >> 4, first & 0x0F, memoryview(buf)[i:i + n]), i + n   # its fields are copied once


def _packet_len(buf):
    """The whole length of the packet at the front of ``buf``, or None while its remaining length is incomplete."""
    n = 0
    shift = 0
    i = 1
    while i < len(buf) and i <= 4:
        b = buf[i]
        n |= (b & 0x7F) << shift
        shift += 7
        i += 1
        if not b & 0x80:
            return i + n
    return None


def _missing(buf):
    """Bytes still to read for the packet at the front of ``buf`` (0: it is all there); as much as is
    known while its remaining length is incomplete (at least 1)."""
    total = _packet_len(buf)
    if total is None:
        return max(1, 2 - len(buf))
    return max(0, total - len(buf))


class MQTTClient:
    """MQTT 3.1.1 client over a stream; QoS 0/1 publish without blocking, events from ``poll``.

    Events: ("puback", pid), ("suback", pid, codes), ("pingresp",), ("msg", topic, payload, qos, retain).
    Incoming QoS 1 messages are acknowledged as they are parsed.
    """

    def __init__(self, stream, client_id, keepalive=60, clean_session=True, username=None, password=None,
                 max_packet=DEFAULT_MAX_PACKET):
        self.stream = stream
        self.client_id = client_id
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.username = username
        self.password = password
        self.max_packet = max_packet
        self._buf = bytearray()         # the bytes received: the front packet, and what a stream gave beyond it
        self._fill = 0                  # bytes of _buf received (below its length while a packet's buffer fills)
        self._next_pid = 0

    def _alloc_pid(self):
        self._next_pid = self._next_pid % 65535 + 1
        return self._next_pid

    def _read_packet(self, timeout_ms):
        """The next packet, read up to its last byte and no further (the first read waits up to
        ``timeout_ms``), or None when it has not all arrived yet. Packets behind it stay in the network
        stack, so the heap holds one received packet at a time, never a 1 KB read of several. Once its
        length is known, the packet's buffer is allocated whole and filled ``READ_MAX`` bytes at a time:
        a packet never needs its bytes twice (a read and a grown buffer) at once."""
        pkt, used = self._parse()
        while pkt is None:
            data = self.stream.read(min(len(self._buf) - self._fill or _missing(self._buf), READ_MAX), timeout_ms)
            if not data:
                break
            self._take(data)
            data = None                 # not held while the packet's payload is copied out of the buffer
            timeout_ms = 0
            pkt, used = self._parse()
        if pkt is not None:
            self._consume(used)
        return pkt

    def _take(self, data):
        buf, fill = self._buf, self._fill
        n = min(len(buf) - fill, len(data))
        if n:
            buf[fill:fill + n] = data if n == len(data) else memoryview(data)[:n]
        if n < len(data):               # a packet's head, or what a stream gave beyond the packet's buffer
            buf.extend(memoryview(data)[n:])
        fill += len(data)
        self._fill = fill
        total = _packet_len(buf)
        if total is not None and total > len(buf):
            if total > self.max_packet:
                raise MQTTError("packet of %d bytes exceeds the %d-byte limit" % (total, self.max_packet))
            self._buf = bytearray(total)
            self._buf[:fill] = buf

    def _parse(self):
        if self._fill < len(self._buf):
            return None, 0
        return parse(self._buf, self.max_packet)

    def _consume(self, used):
        self._buf = self._buf[used:] if used < len(self._buf) else bytearray()
        self._fill = len(self._buf)

    def connect(self, timeout_ms=5000):
        """Send CONNECT and wait for CONNACK; return session-present. MQTTError if refused or silent."""
        from ledgerlink_client import mqtt_connect

        try:
            return mqtt_connect.connect(self, timeout_ms)
        finally:
            _forget("mqtt_connect")

    def publish(self, topic, payload, qos=1, retain=False, pid=None, dup=False):
        """Send a PUBLISH; return its packet id (None for QoS 0). Give ``pid`` and ``dup`` to resend."""
        if qos and pid is None:
            pid = self._alloc_pid()
        self.stream.write(encode_publish(topic, payload, qos, retain, pid, dup))
        return pid

    def subscribe(self, topic, qos=1):
        """Send a SUBSCRIBE; the SUBACK comes as a ("suback", pid, codes) event."""
        from ledgerlink_client import mqtt_connect

        try:
            return mqtt_connect.subscribe(self, topic, qos)
        finally:
            _forget("mqtt_connect")

    def ping(self):
        self.stream.write(encode_pingreq())

    def pending(self):
        """True when a whole packet is already in the buffer (``poll`` returns it without reading)."""
        return self._fill == len(self._buf) and _missing(self._buf) == 0

    def poll(self, timeout_ms=0):
        """Read what arrives within ``timeout_ms`` and return the events of the complete packets, up to and
        including the first PUBLISH: the next messages wait in the buffer as raw bytes, so a burst of
        receipts is decoded and checked one at a time instead of all held decoded at once."""
        events = []
        pkt = self._read_packet(timeout_ms)
        while pkt is not None:
            if pkt.kind == PUBACK:
                events.append(("puback", pkt.pid))
            elif pkt.kind == SUBACK:
                events.append(("suback", pkt.pid, pkt.codes))
            elif pkt.kind == PINGRESP:
                events.append(("pingresp",))
            elif pkt.kind == PUBLISH:
                if pkt.qos == 2:
                    raise MQTTError("QoS 2 delivery was never requested")
                if pkt.qos == 1:
                    self.stream.write(encode_puback(pkt.pid))
                events.append(("msg", pkt.topic, pkt.payload, pkt.qos, pkt.retain))
                return events
            else:
                raise MQTTError("unexpected packet type %d from the broker" % pkt.kind)
            pkt, used = self._parse()
            if pkt is not None:
                self._consume(used)
        return events

    def disconnect(self):
        try:
            self.stream.write(encode_disconnect())
        finally:
            self.stream.close()

    def close(self):
        self.stream.close()


_SERVER = ("encode_connack", "encode_suback", "encode_pingresp")
_CONNECT = ("encode_connect", "encode_subscribe")


def _forget(name):
    """On MicroPython, forget the module ``ledgerlink_client.<name>`` until it is imported again."""
    import sys

    if sys.implementation.name == "micropython":
        sys.modules.pop("ledgerlink_client." + name, None)
        package = sys.modules.get("ledgerlink_client")
        if package is not None and name in package.__dict__:
            delattr(package, name)


def __getattr__(name):
    """The broker's encoders (``mqtt_server``: a device never sends them) and CONNECT and SUBSCRIBE
    (``mqtt_connect``: once per connection), loaded when first named."""
    if name in _SERVER:
        from ledgerlink_client import mqtt_server

        return getattr(mqtt_server, name)
    if name in _CONNECT:
        from ledgerlink_client import mqtt_connect

        return getattr(mqtt_connect, name)
    raise AttributeError(name)
