"""A lean MQTT 5 client for the gateway: one TCP socket, one network thread, QoS 0/1, manual acks.

``MqttClient`` connects with clean start false, a session expiry interval and a Receive Maximum,
subscribes (QoS 1, shared subscriptions allowed) and hands the incoming PUBLISHes of each read chunk to
``on_messages`` in one list, or else each to ``on_message`` (called as paho's hook is), on the network thread;
a QoS 1 message is acknowledged only when the application calls ``ack(pid, generation)`` (or ``ack_many``).
Outgoing QoS 1 publishes are kept in flight up to the server's Receive Maximum (the rest wait in order);
their PUBACKs are matched by packet identifier in a dict. Every call that writes packets takes
``flush=False`` to buffer them, and ``flush()`` sends the buffer in one ``sendall``; the network thread
reads in 256 KiB chunks and sends what freed window slots let out in one write.

Connection loss (socket error, keep-alive timeout, DISCONNECT or a malformed packet from the server)
is logged, the socket closed, and the client reconnects with exponential backoff and jitter: it
subscribes again and sends its unacknowledged publishes again with DUP before any new one. Acks of
messages received on an earlier connection are dropped (``generation``): the server sends those
messages again. Protects the gateway from a broken or hostile server: packets are decoded strictly by
``ledgerlink.mqtt5.decode_server_packet`` and any error only ends that connection. Tested in
tests/gateway/test_mqtt_client.py against mosquitto, the embedded broker and a fake server socket.
"""

from __future__ import annotations

import collections
import logging
import random
import socket
import threading
import time
from typing import Any, Callable, Sequence

from ledgerlink.mqtt5 import (
    CONNACK, DISCONNECT, P_ASSIGNED_ID, P_MAXIMUM_PACKET_SIZE, P_RECEIVE_MAXIMUM, P_SERVER_KEEP_ALIVE,
    P_SESSION_EXPIRY, PINGREQ_PACKET, PINGRESP, PUBACK, PUBLISH, SUBACK, SUCCESS, UNSUBACK, MqttError,
    decode_server_packet, decode_server_publish_qos1, encode_connect, encode_disconnect, encode_properties,
    encode_publish, encode_publish_qos1, encode_subscribe, puback, split_frame, topic_field, vbi,
)

log = logging.getLogger("ledgerlink.gateway.mqtt_client")

READ_CHUNK = 1 << 18
MAX_PACKET = 268_435_460
TOPIC_FIELDS = 1 << 14             # encoded topic names remembered (emptied when full)
_NO_PROPS = b"\x00"


class Message:
    """An incoming PUBLISH; ``generation`` numbers the connection it came on (for ``ack``)."""

    __slots__ = ("topic", "payload", "qos", "pid", "retain", "dup", "props", "generation")

    def __init__(self, topic: str, payload: bytes, qos: int, pid: int, retain: bool, dup: bool,
                 props: dict[int, Any], generation: int) -> None:
        self.topic, self.payload, self.qos, self.pid = topic, payload, qos, pid
        self.retain, self.dup, self.props, self.generation = retain, dup, props, generation

    @property
    def mid(self) -> int:
        return self.pid


class PacketTooLarge(ValueError):
    """A PUBLISH that would exceed the server's Maximum Packet Size (MQTT 5, 3.2.2.3.6): the server would
    end the connection on it, and a QoS 1 one would be sent again after every reconnect."""


def _publish_size_bound(topic: str, payload: bytes, props: bytes) -> int:
    """An upper bound of a PUBLISH packet's size: fixed header (5), topic (2 + at most 3 UTF-8 bytes per
    character), packet id (2), properties, payload."""
    return 9 + 3 * len(topic) + len(props) + len(payload)


class ConnectRefused(Exception):
    """The server answered CONNECT with a failure reason code ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__("CONNACK reason 0x%02x" % code)
        self.code = code


class MqttClient:
    """One MQTT 5 connection kept up by a network thread (``start``), ended by ``stop``.

    ``on_messages(client, userdata, [Message, ...])`` (when given; else ``on_message(client, userdata,
    Message)``, the shape of paho's hook) and ``on_connect(session_present)`` run on the network thread.
    The other methods are thread-safe.
    """

    def __init__(self, host: str, port: int, client_id: str, *, keepalive: int = 30, clean_start: bool = False,
                 session_expiry: int = 3600, receive_maximum: int = 65535,
                 on_message: Callable[[Any, Any, Message], None] | None = None,
                 on_connect: Callable[[bool], None] | None = None,
                 on_messages: Callable[[Any, Any, list[Message]], None] | None = None,
                 backoff: tuple[float, float] = (0.1, 10.0), connect_timeout: float = 10.0,
                 username: str | None = None, password: str | None = None, tls: Any = None) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.username = username
        self.password = password
        self.tls = tls                                  # an ssl.SSLContext (server checked against its CA), or None
        self.keepalive = keepalive
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        self.on_message = on_message
        self.on_messages = on_messages
        self.userdata: Any = None
        self.on_connect = on_connect
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.subscriptions: dict[str, int] = {}         # filter -> subscription options byte
        self.connected = threading.Event()
        self.generation = 0
        self.server_receive_maximum = 65535
        self.server_max_packet = MAX_PACKET
        self.connects = 0
        self.errors: list[str] = []                     # why connections ended (latest last, bounded)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._out: list[bytes] = []                     # buffered packets (sent by flush)
        self._inflight: dict[int, bytes] = {}           # own QoS 1 publishes awaiting PUBACK, in send order
        self._waiting: collections.deque[tuple[str, bytes, bool, bytes]] = collections.deque()
        self._topic_fields: dict[str, bytes] = {}
        self._next_pid = 1
        self._unacked: set[int] = set()                 # received QoS 1 packet ids not yet acknowledged
        self._sub_pending: set[int] = set()            # SUBSCRIBE packet ids awaiting SUBACK
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_tx = 0.0
        self._ping_sent = 0.0

    # --- public API -----------------------------------------------------------------------------------

    def start(self) -> "MqttClient":
        self._thread = threading.Thread(target=self._run, name="ll-mqtt-%s" % self.client_id, daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def subscribe(self, filters: Sequence[str], qos: int = 1) -> None:
        """Subscribe to ``filters`` now (when connected) and after every reconnect."""
        with self._lock:
            for f in filters:
                self.subscriptions[f] = qos
            if self._sock is not None and self.connected.is_set():
                self._out.append(self._subscribe_packet([(f, qos) for f in filters]))
                self._flush_locked()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                properties: Sequence[tuple[int, Any]] = (), flush: bool = True) -> None:
        """Send (QoS 1: once the in-flight window has room, and again after a reconnect until acknowledged).

        Raises PacketTooLarge, sending nothing, when the packet exceeds the server's Maximum Packet Size.
        """
        props = encode_properties(properties) if properties else _NO_PROPS
        with self._lock:
            self._check_size_locked(topic, payload, props)
            if qos == 0:
                if self._sock is not None and self.connected.is_set():
                    self._out.append(encode_publish(topic, payload, 0, 0, retain, False, props))
            else:
                self._waiting.append((topic, payload, retain, props))
                self._pump_locked()
            if flush:
                self._flush_locked()

    def publish_many(self, items: Sequence[tuple[str, bytes, bool]], flush: bool = True) -> None:
        """QoS 1 ``publish`` of each ``(topic, payload, retain)``, in order, under one lock. One that exceeds
        the server's Maximum Packet Size is dropped, logged and named in ``errors``; the others go out."""
        with self._lock:
            items = [item for item in items if self._fits_locked(item[0], item[1])]
            self._waiting.extend((topic, payload, retain, _NO_PROPS) for topic, payload, retain in items)
            self._pump_locked()
            if flush:
                self._flush_locked()

    def publish_many_qos0(self, items: Sequence[tuple[str, bytes]], flush: bool = True) -> None:
        """QoS 0 ``publish`` of each ``(topic, payload)`` (no properties, not retained), in order, under one lock;
        nothing is sent while not connected."""
        with self._lock:
            if self._sock is None or not self.connected.is_set():
                return
            out, fields = self._out, self._topic_fields
            for topic, payload in items:
                field = fields.get(topic)
                if field is None:
                    if len(fields) >= TOPIC_FIELDS:
                        fields.clear()
                    field = fields[topic] = topic_field(topic)
                n = len(field) + 1 + len(payload)
                if n < 128:
                    fixed = bytes((0x30, n))
                elif n < 16384:
                    fixed = bytes((0x30, (n & 0x7F) | 0x80, n >> 7))
                else:
                    fixed = bytes((0x30,)) + vbi(n)
                out.append(b"".join((fixed, field, _NO_PROPS, payload)))
            if flush:
                self._flush_locked()

    def ack_many(self, acks: Sequence[tuple[int, int]], flush: bool = True) -> None:
        """``ack`` of each ``(pid, generation)`` under one lock."""
        with self._lock:
            unacked, out, current = self._unacked, self._out, self.generation
            for pid, generation in acks:
                if generation == current and pid in unacked:
                    unacked.discard(pid)
                    out.append(puback(pid))
            if flush:
                self._flush_locked()

    def ack(self, pid: int, generation: int | None = None, flush: bool = True) -> None:
        """PUBACK of received packet ``pid`` (ignored when ``generation`` is not the current connection's)."""
        with self._lock:
            if generation is not None and generation != self.generation:
                return
            if pid in self._unacked:
                self._unacked.discard(pid)
                self._out.append(puback(pid))
            if flush:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def inflight(self) -> int:
        """Own QoS 1 publishes not yet acknowledged (in flight or waiting for room)."""
        with self._lock:
            return len(self._inflight) + len(self._waiting)

    def stop(self, timeout: float = 5.0) -> None:
        """Send DISCONNECT (the session stays for its expiry interval), close, end the network thread."""
        self._stop.set()
        with self._lock:
            sock = self._sock
            if sock is not None:
                self._out.append(encode_disconnect(SUCCESS))
                self._flush_locked()
                self._drop_locked("stopped")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # --- writing (caller holds the lock) ----------------------------------------------------------------

    def _flush_locked(self) -> None:
        if not self._out:
            return
        sock = self._sock
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        if sock is None:
            return
        try:
            sock.sendall(data)
            self._last_tx = time.monotonic()
        except OSError as exc:
            self._drop_locked("send failed: %s" % exc)

    def _check_size_locked(self, topic: str, payload: bytes, props: bytes) -> None:
        limit = self.server_max_packet
        if _publish_size_bound(topic, payload, props) <= limit:
            return
        size = len(encode_publish(topic, payload, 1, 1, False, False, props))
        if size > limit:
            raise PacketTooLarge("a %d-byte PUBLISH to %r exceeds the server's Maximum Packet Size of %d bytes"
                                 % (size, topic, limit))

    def _fits_locked(self, topic: str, payload: bytes) -> bool:
        try:
            self._check_size_locked(topic, payload, _NO_PROPS)
        except PacketTooLarge as exc:
            log.error("MQTT %s:%d: %s; dropped", self.host, self.port, exc)
            self._note_error_locked("dropped: %s" % exc)
            return False
        return True

    def _pump_locked(self) -> None:
        """Move waiting publishes into the window (the server's Receive Maximum)."""
        if self._sock is None or not self.connected.is_set():
            return
        inflight, waiting, room, out = self._inflight, self._waiting, self.server_receive_maximum, self._out
        fields = self._topic_fields
        while waiting and len(inflight) < room:
            topic, payload, retain, props = waiting.popleft()
            pid = self._pid_locked()
            if props is _NO_PROPS:
                field = fields.get(topic)
                if field is None:
                    if len(fields) >= TOPIC_FIELDS:
                        fields.clear()
                    field = fields[topic] = topic_field(topic)
                pkt = encode_publish_qos1(field, payload, pid, retain)
            else:
                pkt = encode_publish(topic, payload, 1, pid, retain, False, props)
            if len(pkt) > self.server_max_packet:
                log.error("MQTT %s:%d: dropped a %d-byte PUBLISH to %r over the server's Maximum Packet Size (%d)",
                          self.host, self.port, len(pkt), topic, self.server_max_packet)
                self._note_error_locked("dropped a %d-byte PUBLISH to %r: over the Maximum Packet Size (%d) "
                                        "of the server reconnected to" % (len(pkt), topic, self.server_max_packet))
                continue
            inflight[pid] = pkt
            out.append(pkt)

    def _pid_locked(self) -> int:
        pid = self._next_pid
        while pid in self._inflight or pid in self._sub_pending:
            pid = pid % 65535 + 1
        self._next_pid = pid % 65535 + 1
        return pid

    def _subscribe_packet(self, topics: list[tuple[str, int]]) -> bytes:
        pid = self._pid_locked()
        self._sub_pending.add(pid)
        return encode_subscribe(pid, topics)

    def _drop_locked(self, why: str) -> None:
        sock, self._sock = self._sock, None
        self.connected.clear()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            self._note_error_locked(why)

    def _note_error_locked(self, why: str) -> None:
        self.errors.append(why)
        del self.errors[:-20]

    # --- network thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            try:
                buf = self._connect()
                delay = self.backoff[0]
                self._read_loop(buf)
            except MqttError as exc:
                log.error("MQTT %s:%d: malformed or illegal packet from the server (0x%02x): %s; reconnecting",
                          self.host, self.port, exc.code, exc)
                self._close("malformed: %s" % exc)
            except (OSError, ConnectRefused, ConnectionError) as exc:
                if not self._stop.is_set():
                    log.warning("MQTT %s:%d: %s; reconnecting", self.host, self.port, exc)
                self._close(str(exc))
            if self._stop.is_set():
                break
            self._stop.wait(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.backoff[1])
        with self._lock:
            self._drop_locked("stopped")

    def _close(self, why: str) -> None:
        with self._lock:
            if self._sock is None:
                self.errors.append(why)
                del self.errors[:-20]
            self._drop_locked(why)

    def _connect(self) -> bytearray:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        props = [(P_SESSION_EXPIRY, self.session_expiry), (P_RECEIVE_MAXIMUM, self.receive_maximum)]
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            password = self.password.encode() if self.password is not None else None
            sock.sendall(encode_connect(self.client_id, self.keepalive, self.clean_start, props, self.username,
                                        password))
            buf = bytearray()
            deadline = time.monotonic() + self.connect_timeout
            while True:
                frame = split_frame(buf, 0, MAX_PACKET)
                if frame is not None:
                    break
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(READ_CHUNK)
                if not data:
                    raise ConnectionError("connection closed before CONNACK")
                buf += data
            first, start, end = frame
            if first >> 4 != CONNACK:
                raise MqttError(0x82, "first packet from the server is not CONNACK")
            ack = decode_server_packet(first, bytes(buf[start:end]))
            del buf[:end]
            if ack.code >= 0x80:
                raise ConnectRefused(ack.code)
        except BaseException:
            sock.close()
            raise
        keepalive = ack.props.get(P_SERVER_KEEP_ALIVE, self.keepalive)
        sock.settimeout(max(0.05, keepalive / 4) if keepalive else 1.0)
        with self._lock:
            self.keepalive = keepalive
            self.server_receive_maximum = ack.props.get(P_RECEIVE_MAXIMUM, 65535)
            self.server_max_packet = ack.props.get(P_MAXIMUM_PACKET_SIZE, MAX_PACKET)
            if P_ASSIGNED_ID in ack.props:
                self.client_id = ack.props[P_ASSIGNED_ID]
            self.generation += 1
            self._unacked.clear()
            self._sub_pending.clear()
            self._sock = sock
            self._ping_sent = 0.0
            self._last_tx = time.monotonic()
            if not ack.session_present and self._inflight:
                log.warning("MQTT session not present: sending %d unacknowledged publishes as new", len(self._inflight))
            for pkt in self._inflight.values():
                self._out.append(bytes((pkt[0] | 0x08,)) + pkt[1:])
            if self.subscriptions:
                self._out.append(self._subscribe_packet(list(self.subscriptions.items())))
            self.connected.set()
            self._pump_locked()
            self._flush_locked()
            self.connects += 1
        log.info("MQTT connected to %s:%d as %r (session %s, server receive maximum %d)", self.host, self.port,
                 self.client_id, "resumed" if ack.session_present else "new", self.server_receive_maximum)
        if self.on_connect is not None:
            self.on_connect(ack.session_present)
        return buf

    def _read_loop(self, buf: bytearray) -> None:
        sock = self._sock
        generation = self.generation
        on_message = self.on_message
        on_messages = self.on_messages
        userdata = self.userdata
        limit = self.receive_maximum
        overshoot = False
        while not self._stop.is_set():
            msgs: list[Message] = []
            pids: list[int] = []                         # of received QoS 1 messages
            acked: list[tuple[int, int]] = []            # (packet id, reason code) of PUBACKs
            pos = 0
            data = bytes(buf) if split_frame(buf, 0, MAX_PACKET) is not None else b""
            n = len(data)
            try:
                while True:
                    if (pos + 4 <= n and data[pos] == 0x40 and data[pos + 1] == 2
                            and (data[pos + 2] or data[pos + 3])):     # PUBACK, Success, no properties
                        acked.append(((data[pos + 2] << 8) | data[pos + 3], SUCCESS))
                        pos += 4
                        continue
                    frame = split_frame(data, pos, MAX_PACKET)
                    if frame is None:
                        break
                    first, start, end = frame
                    pos = end
                    if first == 0x32 or first == 0x3A:      # QoS 1 PUBLISH, retain 0
                        fast = decode_server_publish_qos1(data, start, end)
                        if fast is not None:
                            pids.append(fast[1])
                            msgs.append(Message(fast[0], fast[2], 1, fast[1], False, first == 0x3A, {}, generation))
                            continue
                    kind = first >> 4
                    p = decode_server_packet(first, data[start:end])
                    if kind == PUBLISH:
                        if p.qos:
                            pids.append(p.pid)
                        msgs.append(Message(p.topic, p.payload, p.qos, p.pid, p.retain, p.dup, p.props, generation))
                    elif kind == PUBACK:
                        acked.append((p.pid, p.code))
                    elif kind == SUBACK or kind == UNSUBACK:
                        with self._lock:
                            self._sub_pending.discard(p.pid)
                        bad = [c for c in p.codes if c >= 0x80]
                        if bad:
                            log.error("MQTT subscription refused: reason codes %s", ["0x%02x" % c for c in bad])
                    elif kind == PINGRESP:
                        pass
                    elif kind == DISCONNECT:
                        raise ConnectionError("server sent DISCONNECT 0x%02x %s" % (p.code, p.props.get(0x1F, "")))
                    else:
                        raise MqttError(0x82, "unexpected packet type %d" % kind)
            finally:
                if pids or acked:
                    with self._lock:
                        if pids:
                            if len(self._unacked) + len(pids) > limit and not overshoot:
                                overshoot = True        # mosquitto 2 sends one more than the maximum
                                log.warning("MQTT server sent more than our Receive Maximum of %d unacknowledged",
                                            limit)
                            self._unacked.update(pids)
                        for pid, code in acked:
                            if self._inflight.pop(pid, None) is None:
                                log.debug("PUBACK of unknown packet id %d", pid)
                            elif code >= 0x80:
                                log.warning("publish refused by the server: reason 0x%02x", code)
                if msgs:
                    if on_messages is not None:
                        on_messages(self, userdata, msgs)
                    elif on_message is not None:
                        for m in msgs:
                            on_message(self, userdata, m)
            if pos:
                del buf[:pos]
            self._ping_sent = 0.0 if pos else self._ping_sent
            with self._lock:
                if self._sock is not sock:
                    raise ConnectionError("connection closed")
                if acked:
                    self._pump_locked()
                now = time.monotonic()
                if self.keepalive:
                    if self._ping_sent and now - self._ping_sent > self.keepalive:
                        raise ConnectionError("no answer to PINGREQ within the keep alive")
                    if now - self._last_tx >= self.keepalive * 0.75 and not self._ping_sent:
                        self._out.append(PINGREQ_PACKET)
                        self._ping_sent = now
                self._flush_locked()
            try:
                data = sock.recv(READ_CHUNK)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionError("connection closed by the server")
            buf += data
