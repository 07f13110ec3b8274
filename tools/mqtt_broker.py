"""An embedded MQTT broker (MQTT 5.0 and 3.1.1, QoS 0 and 1) for one site on one machine.

``ledgerlink demo`` and ``ledgerlink up`` use it when mosquitto is not installed. One asyncio event loop
in one process (``python3 -m ledgerlink.tools.mqtt_broker --port N``, or ``BrokerThread`` in-process),
listening on loopback unless told otherwise. What it implements, after the OASIS MQTT 5.0 standard:

- CONNECT/CONNACK for protocol levels 5 and 4 (3.1.1), clean start, assigned client identifiers,
  keep alive (a client silent for 1.5 x its keep alive is disconnected with 0x8D), will messages with
  will delay, session takeover (0x8E).
- Sessions in memory: subscriptions, unacknowledged QoS 1 messages (sent again with DUP on resume) and
  queued messages survive a disconnect for the session expiry interval (3.1.1: clean session 0 keeps
  the session until the broker stops). Nothing is written to disk.
- PUBLISH QoS 0 and 1 (PUBACK); QoS 2 is refused (Maximum QoS 1 in CONNACK; 0x9B). Retained messages,
  topic aliases from clients, message expiry (the remaining interval is forwarded; expired copies are
  dropped), user properties, content type, payload format, response topic and correlation data are
  passed through unchanged; subscription identifiers are added.
- SUBSCRIBE/SUBACK/UNSUBSCRIBE/UNSUBACK with ``+`` and ``#``, no local, retain as published, retain
  handling, and shared subscriptions ``$share/{group}/{filter}``: each message goes to one member of the
  group, round robin over connected members with room; a member's unacknowledged messages go to another
  member when its session ends.
- Flow control: at most the client's Receive Maximum unacknowledged QoS 1 messages per client, packets
  larger than the client's Maximum Packet Size are not sent to it, and a bounded queue per session
  (``max_queued`` messages, ``max_queued_bytes``); what does not fit is dropped and counted.
- Limits against clients that hold resources: at most ``max_connections`` connections (more are closed
  at once); CONNECT within ``CONNECT_TIMEOUT_S``; keep alive at most ``max_keepalive`` (also for clients
  that ask for none, MQTT 5 clients are told so), so an idle connection ends; a packet complete within
  ``packet_timeout_s`` of its first byte; incomplete packets of all connections together held up to
  ``buffered_max`` bytes (the connection whose packet goes beyond is closed); a client that leaves
  ``OUT_MAX`` bytes unread is disconnected.

Bad input: the decoder checks every length, flag, property identifier, duplicate property and UTF-8
string; a malformed packet closes that connection with DISCONNECT 0x81 (protocol errors 0x82, too large
0x95; for 3.1.1 clients the connection is closed), and an unexpected exception in a handler closes only
that connection (0x80). ``decode_packet`` (in ``ledgerlink.mqtt5``, the codec) is the pure decoder; tests
feed it random and mutated packets (hypothesis) and check that only ``MqttError`` comes out, and drive the
running broker with paho-mqtt clients and raw sockets. With ``--accounts FILE`` (a site's ``accounts.json``,
see ``ledgerlink.tools.broker_access``) only its accounts connect, each under its own client id, and
``ledgerlink.tools.mqtt_acl`` decides what each may publish, subscribe to and receive; without it any
client on the listening address may connect.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import logging
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

from ledgerlink.tools import mqtt_acl
from ledgerlink.mqtt5 import (  # noqa: F401 - re-exported: the codec lived here
    Ack, BAD_AUTH_METHOD, CLIENT_ID_NOT_VALID, CONNACK, CONNECT, Connect, DISCONNECT, Disconnect,
    KEEP_ALIVE_TIMEOUT, MALFORMED, MAX_PID, MAX_VBI, MqttError, NEVER_EXPIRES, NO_SUBSCRIPTION_EXISTED,
    PACKET_TOO_LARGE, PINGRESP_PACKET, PROTOCOL_ERROR, PUBACK, PUBLISH, P_ASSIGNED_ID, P_AUTH_METHOD,
    P_CONTENT_TYPE, P_MAXIMUM_PACKET_SIZE, P_MAXIMUM_QOS, P_MESSAGE_EXPIRY, P_REASON_STRING, P_RECEIVE_MAXIMUM,
    P_REQUEST_PROBLEM, P_SERVER_KEEP_ALIVE, P_SESSION_EXPIRY, P_SUBSCRIPTION_ID, P_TOPIC_ALIAS,
    P_TOPIC_ALIAS_MAXIMUM, P_USER, Publish, QOS_NOT_SUPPORTED, SERVER_SHUTTING_DOWN, SESSION_TAKEN_OVER, SUBACK,
    SUBSCRIBE, SUCCESS, Simple, Subscribe, TOPIC_ALIAS_INVALID, TOPIC_FILTER_INVALID, TOPIC_NAME_INVALID,
    UNSPECIFIED, UNSUBACK, UNSUBSCRIBE, UNSUPPORTED_VERSION, Unsubscribe, Will, _malformed, _protocol, _s,
    check_topic_name, decode_connect, decode_packet, encode_properties, forwarded_properties, packet,
    split_frame, split_shared, valid_filter, vbi,
)

log = logging.getLogger("ledgerlink.mqtt_broker")

CONNECT_TIMEOUT_S = 10.0
PACKET_TIMEOUT_S = 10.0     # a packet whose first byte came must be complete this much later
OUT_HIGH = 1 << 20          # bytes written to a connection before it counts as busy
OUT_MAX = 16 << 20          # bytes waiting for a client that does not read them: then it is disconnected
MAX_CONNECTIONS = 10_000
MAX_KEEPALIVE_S = 300       # keep alive granted at most (also to clients asking for none), so idle links end
BUFFERED_MAX = 16 << 20     # bytes of incomplete packets held over all connections; beyond, the one adding closes


# --- topic tree ----------------------------------------------------------------------------------------


class Sub:
    """One subscription of one session."""

    __slots__ = ("session", "filter", "group", "qos", "no_local", "rap", "rh", "sid")

    def __init__(self, session: "Session", full: str, group: str | None, opts: int, sid: int | None) -> None:
        self.session, self.filter, self.group, self.sid = session, full, group, sid
        self.qos = min(opts & 3, 1)
        self.no_local, self.rap, self.rh = bool(opts & 4), bool(opts & 8), (opts >> 4) & 3


class Group:
    """Members of one shared subscription; ``turn`` counts deliveries for round robin."""

    __slots__ = ("members", "turn")

    def __init__(self) -> None:
        self.members: dict[str, Sub] = {}
        self.turn = 0


class _Node:
    __slots__ = ("children", "subs", "groups")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subs: dict[str, Sub] = {}          # client id -> subscription
        self.groups: dict[str, Group] = {}      # share name -> group


class TopicTree:
    """Subscriptions by filter level; ``match`` walks only the branches a topic can reach."""

    def __init__(self) -> None:
        self.root = _Node()

    def add(self, filt: str, sub: Sub) -> None:
        node = self.root
        for level in filt.split("/"):
            node = node.children.setdefault(level, _Node())
        cid = sub.session.client_id
        if sub.group is None:
            node.subs[cid] = sub
        else:
            node.groups.setdefault(sub.group, Group()).members[cid] = sub

    def remove(self, filt: str, group: str | None, client_id: str) -> None:
        path = [self.root]
        for level in filt.split("/"):
            nxt = path[-1].children.get(level)
            if nxt is None:
                return
            path.append(nxt)
        node = path[-1]
        if group is None:
            node.subs.pop(client_id, None)
        elif group in node.groups:
            node.groups[group].members.pop(client_id, None)
            if not node.groups[group].members:
                del node.groups[group]
        levels = filt.split("/")
        for i in range(len(levels), 0, -1):
            n = path[i]
            if n.children or n.subs or n.groups:
                break
            del path[i - 1].children[levels[i - 1]]

    def match(self, topic: str) -> tuple[list[Sub], list[Group]]:
        subs: list[Sub] = []
        groups: list[Group] = []
        levels = topic.split("/")
        last = len(levels)

        def walk(node: _Node, i: int) -> None:
            hash_node = node.children.get("#")
            if hash_node is not None and not (i == 0 and topic.startswith("$")):
                subs.extend(hash_node.subs.values())
                groups.extend(hash_node.groups.values())
            if i == last:
                subs.extend(node.subs.values())
                groups.extend(node.groups.values())
                return
            child = node.children.get(levels[i])
            if child is not None:
                walk(child, i + 1)
            if not (i == 0 and topic.startswith("$")):
                plus = node.children.get("+")
                if plus is not None:
                    walk(plus, i + 1)

        walk(self.root, 0)
        return subs, groups


def filter_matches(filt: str, topic: str) -> bool:
    """Whether topic filter ``filt`` (no ``$share`` prefix) matches topic name ``topic``."""
    if topic.startswith("$") and filt[:1] in ("+", "#"):
        return False
    fl, tl = filt.split("/"), topic.split("/")
    for i, f in enumerate(fl):
        if f == "#":
            return True
        if i >= len(tl) or (f != "+" and f != tl[i]):
            return False
    return len(fl) == len(tl)


# --- messages and sessions ------------------------------------------------------------------------------


class Message:
    __slots__ = ("topic", "topic_bytes", "payload", "qos", "retain", "props", "expires", "sender")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool, props: dict[int, Any],
                 sender: str | None) -> None:
        self.topic, self.payload, self.qos, self.retain, self.sender = topic, payload, qos, retain, sender
        self.topic_bytes = _s(topic)
        self.props = forwarded_properties(props)
        expiry = props.get(P_MESSAGE_EXPIRY)
        self.expires = None if expiry is None else time.monotonic() + expiry


class Entry:
    """One message on its way to one session (queued or awaiting PUBACK)."""

    __slots__ = ("msg", "qos", "retain", "sids", "group")

    def __init__(self, msg: Message, qos: int, retain: bool, sids: tuple[int, ...], group: Group | None) -> None:
        self.msg, self.qos, self.retain, self.sids, self.group = msg, qos, retain, sids, group


class Session:
    """State the broker keeps for one client id, connected or not."""

    def __init__(self, broker: "Broker", client_id: str) -> None:
        self.broker = broker
        self.client_id = client_id
        self.conn: Connection | None = None
        self.subs: dict[str, Sub] = {}
        self.queue: collections.deque[Entry] = collections.deque()
        self.queued_bytes = 0
        self.inflight: dict[int, Entry] = {}
        self.next_pid = 1
        self.expiry = 0
        self.expiry_timer: asyncio.TimerHandle | None = None
        self.will: Will | None = None
        self.will_timer: asyncio.TimerHandle | None = None
        self.dropped = 0

    def has_room(self) -> bool:
        return len(self.queue) < self.broker.max_queued and self.queued_bytes < self.broker.max_queued_bytes

    def enqueue(self, entry: Entry) -> None:
        if entry.qos == 0 and self.conn is None:
            return
        if not self.has_room():
            self.dropped += 1
            self.broker.dropped += 1
            if self.dropped in (1, 10, 100, 1000) or self.dropped % 10000 == 0:
                log.warning("queue of %r is full (%d messages): %d dropped", self.client_id, len(self.queue),
                            self.dropped)
            return
        self.queue.append(entry)
        self.queued_bytes += len(entry.msg.payload)
        if self.conn is not None and not self.conn.busy():
            self.pump()

    def _pid(self) -> int:
        pid = self.next_pid
        while pid in self.inflight:
            pid = pid % MAX_PID + 1
        self.next_pid = pid % MAX_PID + 1
        return pid

    def pump(self) -> None:
        """Send queued messages while the client's receive maximum and the socket allow."""
        conn = self.conn
        q = self.queue
        while q and conn is not None and not conn.busy():
            entry = q[0]
            if entry.qos and len(self.inflight) >= conn.receive_max:
                return
            q.popleft()
            self.queued_bytes -= len(entry.msg.payload)
            if entry.msg.expires is not None and entry.msg.expires <= time.monotonic():
                continue
            if entry.qos:
                pid = self._pid()
                if conn.send_publish(entry, pid, False):
                    self.inflight[pid] = entry
            else:
                conn.send_publish(entry, 0, False)
            conn = self.conn

    def acked(self, pid: int) -> None:
        if self.inflight.pop(pid, None) is not None and self.queue:
            self.pump()

    def resend(self) -> None:
        conn = self.conn
        for pid, entry in list(self.inflight.items()):
            if conn is None or conn is not self.conn:
                return
            if not conn.send_publish(entry, pid, True):
                self.inflight.pop(pid, None)


class Broker:
    """The broker state: ``start`` listens, ``close`` stops. All methods run on the broker's event loop.

    A PUBLISH is routed and acknowledged as it is decoded, so clients never hold more unacknowledged
    QoS 1 publishes towards the broker than the Receive Maximum it announces.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, max_packet_size: int = 1 << 20,
                 receive_maximum: int = 1024, max_queued: int = 100_000, max_queued_bytes: int = 256 << 20,
                 topic_alias_maximum: int = 64, max_keepalive: int = MAX_KEEPALIVE_S, access: Any = None,
                 max_connections: int = MAX_CONNECTIONS, packet_timeout_s: float = PACKET_TIMEOUT_S,
                 buffered_max: int = BUFFERED_MAX, tls: Any = None, tls_port: int = 0) -> None:
        self.host, self.port = host, port
        self.tls, self.tls_port = tls, tls_port      # an ssl.SSLContext: a second, TLS listener on tls_port
        self.tls_server: asyncio.base_events.Server | None = None
        self.access = access            # an ``mqtt_acl.Access``, or None: anonymous, no ACLs
        self.max_packet_size = max_packet_size
        self.receive_maximum = receive_maximum
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.topic_alias_maximum = topic_alias_maximum
        self.max_keepalive = max_keepalive
        self.max_connections = max_connections
        self.packet_timeout_s = packet_timeout_s
        self.buffered_max = buffered_max
        self.buffered = 0                       # bytes of incomplete packets over all connections
        self.over_budget = 0                    # connections closed because incomplete packets filled the budget
        self.refused = 0                        # connections refused at the connection cap
        self.sessions: dict[str, Session] = {}
        self.tree = TopicTree()
        self.retained: dict[str, Message] = {}
        self.connections: set[Connection] = set()
        self.server: asyncio.base_events.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ids = itertools.count(1)
        self.received = 0
        self.dropped = 0

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = await self.loop.create_server(lambda: Connection(self), self.host, self.port,
                                                    reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        if self.tls is not None:
            self.tls_server = await self.loop.create_server(lambda: Connection(self), self.host, self.tls_port,
                                                            reuse_address=True, ssl=self.tls)
            self.tls_port = self.tls_server.sockets[0].getsockname()[1]
        if self.access is not None:
            self.loop.call_later(mqtt_acl.RELOAD_S, self._reload_access)

    def _reload_access(self) -> None:
        """Read the accounts again when they changed; disconnect the clients of accounts now refused."""
        try:
            gone = self.access.reload()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("accounts file %s not read again (the accounts read before stay): %s", self.access.path, exc)
            gone = []
        for username in gone:
            s = self.sessions.get(username)
            if s is not None and s.conn is not None:
                s.conn.close(mqtt_acl.ADMINISTRATIVE_ACTION, "account disabled or changed")
        if self.server is not None and self.server.is_serving():
            self.loop.call_later(mqtt_acl.RELOAD_S, self._reload_access)

    async def close(self) -> None:
        """Stop listening; tell MQTT 5 clients the server is shutting down (0x8B); close every connection."""
        for server in (self.server, self.tls_server):
            if server is not None:
                server.close()
        for conn in list(self.connections):
            conn.close(SERVER_SHUTTING_DOWN, "server shutting down", publish_will=False)
        for server in (self.server, self.tls_server):
            if server is not None:
                await server.wait_closed()
        for s in self.sessions.values():
            for timer in (s.expiry_timer, s.will_timer):
                if timer is not None:
                    timer.cancel()

    # --- routing --------------------------------------------------------------------------------------

    def publish(self, msg: Message) -> None:
        """Store a retained message and hand a copy to each matching session (one per shared group)."""
        self.received += 1
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)
        subs, groups = self.tree.match(msg.topic)
        if subs:
            best: dict[Session, list] = {}
            access = self.access
            for sub in subs:
                if sub.no_local and sub.session.client_id == msg.sender:
                    continue
                if access is not None and not access.may_receive(sub.session.client_id, msg.topic):
                    continue
                d = best.get(sub.session)
                if d is None:
                    best[sub.session] = [sub.qos, sub.rap, [sub.sid] if sub.sid else []]
                else:
                    d[0] = max(d[0], sub.qos)
                    d[1] = d[1] or sub.rap
                    if sub.sid:
                        d[2].append(sub.sid)
            for session, (qos, rap, sids) in best.items():
                session.enqueue(Entry(msg, min(qos, msg.qos), msg.retain and rap, tuple(sids), None))
        for group in groups:
            sub = self._pick(group)
            if sub is not None:
                sub.session.enqueue(Entry(msg, min(sub.qos, msg.qos), msg.retain and sub.rap,
                                          (sub.sid,) if sub.sid else (), group))

    def _pick(self, group: Group, avoid: Session | None = None) -> Sub | None:
        members = [m for m in group.members.values() if m.session is not avoid]
        if not members:
            return None
        n = len(members)
        start = group.turn % n
        group.turn += 1
        fallback = None
        for k in range(n):
            m = members[(start + k) % n]
            s = m.session
            if s.conn is not None and not s.conn.busy() and s.has_room():
                return m
            if fallback is None and s.has_room():
                fallback = m
        return fallback or members[start]

    def send_retained(self, sub: Sub, filt: str) -> None:
        now = time.monotonic()
        for topic, msg in list(self.retained.items()):
            if msg.expires is not None and msg.expires <= now:
                del self.retained[topic]
                continue
            if filter_matches(filt, topic) and (self.access is None
                                                or self.access.may_receive(sub.session.client_id, topic)):
                sub.session.enqueue(Entry(msg, min(sub.qos, msg.qos), True, (sub.sid,) if sub.sid else (), None))

    # --- sessions -------------------------------------------------------------------------------------

    def end_session(self, session: Session) -> None:
        """Forget ``session``: its subscriptions, its will (published now if delayed) and its messages;
        messages it held for a shared group go to another member."""
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        for timer in (session.expiry_timer, session.will_timer):
            if timer is not None:
                timer.cancel()
        session.expiry_timer = None
        if session.will_timer is not None and session.will is not None:
            session.will_timer = None
            self.publish_will(session)
        for sub in session.subs.values():
            self.tree.remove(_plain(sub.filter), sub.group, session.client_id)
        held = list(session.inflight.values()) + list(session.queue)
        session.inflight.clear()
        session.queue.clear()
        session.queued_bytes = 0
        for entry in held:
            if entry.group is not None and entry.qos:
                other = self._pick(entry.group, avoid=session)
                if other is not None:
                    other.session.enqueue(Entry(entry.msg, min(other.qos, entry.msg.qos), entry.retain,
                                                (other.sid,) if other.sid else (), entry.group))

    def publish_will(self, session: Session) -> None:
        will, session.will = session.will, None
        if will is not None:
            self.publish(Message(will.topic, will.payload, will.qos, will.retain, will.props, session.client_id))


def _plain(full: str) -> str:
    shared = split_shared(full)
    return shared[1] if shared else full


class Connection(asyncio.Protocol):
    """One client connection: decodes packets as bytes arrive and applies them to the broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.version = 0
        self.session: Session | None = None
        self.connected = False           # CONNACK with success sent
        self.closing = False
        self.paused = False
        self.keepalive = 0
        self.last_rx = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.receive_max = 65535
        self.max_out = MAX_VBI + 5
        self.aliases: dict[int, str] = {}
        self.problem_info = True
        self.peer = "?"
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.flush_pending = False
        self.held = 0                    # len(buf) as counted in broker.buffered
        self.packet_timer: asyncio.TimerHandle | None = None     # runs while an incomplete packet is held

    # --- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=1 << 20)
        peer = transport.get_extra_info("peername")
        self.peer = "%s:%s" % peer[:2] if peer else "?"
        broker = self.broker
        if len(broker.connections) >= broker.max_connections:
            broker.refused += 1
            if broker.refused in (1, 10, 100, 1000) or broker.refused % 10000 == 0:
                log.warning("%d connections open (the cap): %d refused so far", len(broker.connections), broker.refused)
            self.closing = True
            self.transport.abort()
            return
        broker.connections.add(self)
        self.timer = broker.loop.call_later(CONNECT_TIMEOUT_S, self._connect_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker.connections.discard(self)
        self._hold(0)
        if self.packet_timer is not None:
            self.packet_timer.cancel()
        if self.timer is not None:
            self.timer.cancel()
        self.closing = True
        self._detach(publish_will=True)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.session is not None and self.session.conn is self:
            self.session.pump()

    def busy(self) -> bool:
        """The socket's buffer is full or a megabyte waits to be handed to it: hold messages in the queue."""
        return self.paused or self.out_bytes >= OUT_HIGH

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_rx = time.monotonic()
        buf = self.buf
        buf += data
        pos = 0
        try:
            while not self.closing:
                frame = split_frame(buf, pos, self.broker.max_packet_size)
                if frame is None:
                    break
                first, start, end = frame
                body = bytes(buf[start:end])
                pos = end
                self._handle(first, body)
        except MqttError as exc:
            self.close(exc.code, str(exc))
        except Exception:  # noqa: BLE001 - one client's failure must not stop the broker
            log.exception("client %s: handler failed", self._name())
            self.close(UNSPECIFIED, "internal error")
        if pos:
            del buf[:pos]
        if not self.closing:
            self._hold(len(buf))

    def _hold(self, size: int) -> None:
        """Count ``size`` bytes of an incomplete packet against the broker's budget; time the packet.

        A connection whose incomplete packet pushes the total over ``buffered_max`` is closed, and so is
        one whose packet is not complete ``packet_timeout_s`` after its first byte. So clients that open
        connections and send all but the last byte of large packets hold at most the budget (and one
        read) in this process, and only for the timeout; complete packets are never held.
        """
        broker = self.broker
        broker.buffered += size - self.held
        self.held = size
        if not size:
            if self.packet_timer is not None:
                self.packet_timer.cancel()
                self.packet_timer = None
            return
        if broker.buffered > broker.buffered_max:
            broker.over_budget += 1
            self._abort("incomplete packets of all clients exceed %d bytes" % broker.buffered_max)
        elif self.packet_timer is None:
            self.packet_timer = broker.loop.call_later(broker.packet_timeout_s, self._packet_timeout)

    def _abort(self, why: str) -> None:
        """Close at once (no reason code: the client is not reading or not speaking MQTT)."""
        log.info("client %s: %s; closing", self._name(), why)
        self.closing = True
        self._detach(publish_will=True)
        self.transport.abort()
        self.buf.clear()
        self._hold(0)

    def _packet_timeout(self) -> None:
        self.packet_timer = None
        if self.held and not self.closing:
            self._abort("packet incomplete %g s after its first byte" % self.broker.packet_timeout_s)

    # --- sending --------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue ``data``; everything queued in one pass of the event loop goes out in one write."""
        if self.transport is None or self.closing:
            return
        self.out.append(data)
        self.out_bytes += len(data)
        if not self.flush_pending:
            self.flush_pending = True
            self.broker.loop.call_soon(self._flush, True)

    def _flush(self, pump: bool = True) -> None:
        self.flush_pending = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()
        self.out_bytes = 0
        if self.transport is not None and self.transport.get_write_buffer_size() > OUT_MAX and not self.closing:
            self._abort("%d bytes wait for it to read" % self.transport.get_write_buffer_size())
            return
        s = self.session
        if pump and not self.closing and s is not None and s.conn is self and s.queue:
            s.pump()

    def send_publish(self, entry: Entry, pid: int, dup: bool) -> bool:
        """Write one PUBLISH; False when it exceeds the client's maximum packet size (it is skipped)."""
        msg = entry.msg
        body = [msg.topic_bytes]
        if entry.qos:
            body.append(pid.to_bytes(2, "big"))
        if self.version == 5:
            props = msg.props
            if msg.expires is not None:
                props += b"\x02" + max(0, int(msg.expires - time.monotonic() + 0.999)).to_bytes(4, "big")
            for sid in entry.sids:
                props += b"\x0b" + vbi(sid)
            body.append(vbi(len(props)))
            body.append(props)
        body.append(msg.payload)
        b = b"".join(body)
        data = packet(0x30 | (8 if dup else 0) | (entry.qos << 1) | (1 if entry.retain else 0), b)
        if len(data) > self.max_out:
            return False
        self.write(data)
        return True

    def close(self, code: int, text: str, publish_will: bool = True) -> None:
        """Tell the client why (MQTT 5: CONNACK before a session, else DISCONNECT) and close."""
        if self.closing or self.transport is None:
            return
        if code not in (SUCCESS, SERVER_SHUTTING_DOWN):
            log.info("client %s: closing: %s (0x%02x)", self._name(), text, code)
        if self.version == 5:
            props = encode_properties([(P_REASON_STRING, text[:200])]) if self.problem_info else b"\x00"
            if self.connected:
                self.write(packet(DISCONNECT << 4, bytes((code,)) + props))
            else:
                self.write(packet(CONNACK << 4, bytes((0, code)) + props))
        self._flush(pump=False)
        self.closing = True
        self._detach(publish_will=publish_will)
        self.transport.close()
        self.broker.loop.call_later(2.0, self.transport.abort)

    def _name(self) -> str:
        return "%r (%s)" % (self.session.client_id, self.peer) if self.session else self.peer

    def _detach(self, publish_will: bool) -> None:
        s, self.session = self.session, None
        if s is None or s.conn is not self:
            return
        s.conn = None
        broker = self.broker
        if not publish_will:
            s.will = None
        if s.expiry == 0:
            if s.will is not None:
                broker.publish_will(s)
            broker.end_session(s)
            return
        if s.will is not None:
            if s.will.delay == 0:
                broker.publish_will(s)
            else:
                s.will_timer = broker.loop.call_later(min(s.will.delay, s.expiry), self._delayed_will, s)
        if s.expiry != NEVER_EXPIRES:
            s.expiry_timer = broker.loop.call_later(s.expiry, broker.end_session, s)

    def _delayed_will(self, s: Session) -> None:
        s.will_timer = None
        self.broker.publish_will(s)

    # --- timers ---------------------------------------------------------------------------------------

    def _connect_timeout(self) -> None:
        if self.session is None and not self.closing:
            log.info("client %s: no CONNECT within %g s", self.peer, CONNECT_TIMEOUT_S)
            self.closing = True
            self.transport.abort()

    def _keepalive_check(self) -> None:
        limit = self.keepalive * 1.5
        idle = time.monotonic() - self.last_rx
        if idle >= limit:
            self.close(KEEP_ALIVE_TIMEOUT, "no packet within 1.5 x keep alive (%d s)" % self.keepalive)
        else:
            self.timer = self.broker.loop.call_later(limit - idle, self._keepalive_check)

    # --- packets --------------------------------------------------------------------------------------

    def _handle(self, first: int, body: bytes) -> None:
        if self.session is None:
            if first >> 4 != CONNECT:
                raise _protocol("first packet is not CONNECT")
            if first & 0x0F:
                raise _malformed("reserved flags on CONNECT")
            try:
                c = decode_connect(body)
            except MqttError as exc:
                self.version = getattr(exc, "version", 5)
                if exc.code == UNSUPPORTED_VERSION:
                    if self.version < 5:
                        self.write(packet(CONNACK << 4, b"\x00\x01"))
                        self.version = 0
                    else:
                        self.version = 5
                raise
            self._connect(c)
            return
        if first >> 4 == CONNECT:
            raise _protocol("second CONNECT")
        p = decode_packet(first, body, self.version)
        if isinstance(p, Publish):
            self._publish(p)
        elif isinstance(p, Ack):
            if p.kind != PUBACK:
                raise _protocol("QoS 2 flow packet type %d on a QoS 1 server" % p.kind)
            self.session.acked(p.pid)
        elif isinstance(p, Subscribe):
            self._subscribe(p)
        elif isinstance(p, Unsubscribe):
            self._unsubscribe(p)
        elif isinstance(p, Simple):
            self.write(PINGRESP_PACKET)
        else:
            self._disconnect(p)

    def _connect(self, c: Connect) -> None:
        broker = self.broker
        self.version = c.version
        self.problem_info = bool(c.props.get(P_REQUEST_PROBLEM, 1))
        if P_AUTH_METHOD in c.props:
            raise MqttError(BAD_AUTH_METHOD, "enhanced authentication is not supported")
        if c.will is not None and c.will.qos > 1:
            if c.version == 5:
                raise MqttError(QOS_NOT_SUPPORTED, "will QoS 2 is not supported")
            c.will.qos = 1
        cid = c.client_id
        assigned = None
        if not cid:
            if c.version == 4 and not c.clean_start:
                self.write(packet(CONNACK << 4, b"\x00\x02"))
                self.version = 0
                raise MqttError(CLIENT_ID_NOT_VALID, "empty client id with clean session 0")
            cid = assigned = "ll-auto-%d" % next(broker.ids)
        if broker.access is not None:
            bound = broker.access.check_connect(c.client_id, c.username, c.password)
            if bound is None:
                log.info("client %s: connection refused: no such account, wrong password or client id", self.peer)
                if c.version == 4:
                    self.write(packet(CONNACK << 4, b"\x00\x05"))
                    self.version = 0
                raise MqttError(mqtt_acl.NOT_AUTHORIZED, "not authorized")
            assigned = bound if cid != bound else None
            cid = bound
        old = broker.sessions.get(cid)
        if old is not None and old.conn is not None:
            old.conn.close(SESSION_TAKEN_OVER, "another connection took over the session")
            old = broker.sessions.get(cid)
        present = old is not None and not c.clean_start
        if old is not None and not present:
            broker.end_session(old)
        if present:
            s = old
            for timer in (s.expiry_timer, s.will_timer):
                if timer is not None:
                    timer.cancel()
            s.expiry_timer = s.will_timer = None
        else:
            s = Session(broker, cid)
            broker.sessions[cid] = s
        s.expiry = c.props.get(P_SESSION_EXPIRY, 0) if c.version == 5 else (0 if c.clean_start else NEVER_EXPIRES)
        s.will = c.will
        s.conn = self
        self.session = s
        self.receive_max = c.props.get(P_RECEIVE_MAXIMUM, 65535)
        self.max_out = c.props.get(P_MAXIMUM_PACKET_SIZE, MAX_VBI + 5)
        self.keepalive = c.keepalive
        if broker.max_keepalive and (self.keepalive == 0 or self.keepalive > broker.max_keepalive):
            self.keepalive = broker.max_keepalive
        if c.version == 5:
            props = [(P_RECEIVE_MAXIMUM, broker.receive_maximum), (P_MAXIMUM_QOS, 1),
                     (P_MAXIMUM_PACKET_SIZE, broker.max_packet_size), (P_TOPIC_ALIAS_MAXIMUM, broker.topic_alias_maximum)]
            if assigned:
                props.append((P_ASSIGNED_ID, assigned))
            if self.keepalive != c.keepalive:
                props.append((P_SERVER_KEEP_ALIVE, self.keepalive))
            self.write(packet(CONNACK << 4, bytes((1 if present else 0, SUCCESS)) + encode_properties(props)))
        else:
            self.write(packet(CONNACK << 4, bytes((1 if present else 0, 0))))
        self.connected = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.keepalive:
            self.timer = broker.loop.call_later(self.keepalive * 1.5, self._keepalive_check)
        log.debug("client %s connected (MQTT %s, session %s)", self._name(), "5" if c.version == 5 else "3.1.1",
                  "resumed" if present else "new")
        if present:
            s.resend()
            s.pump()

    def _publish(self, p: Publish) -> None:
        topic = p.topic
        alias = p.props.get(P_TOPIC_ALIAS)
        if alias is not None:
            if alias == 0 or alias > self.broker.topic_alias_maximum:
                raise MqttError(TOPIC_ALIAS_INVALID, "topic alias %d outside 1..%d" % (alias, self.broker.topic_alias_maximum))
            if topic:
                self.aliases[alias] = topic
            else:
                topic = self.aliases.get(alias, "")
                if not topic:
                    raise _protocol("topic alias %d was never set" % alias)
        check_topic_name(topic)
        if p.qos == 2:
            raise MqttError(QOS_NOT_SUPPORTED, "QoS 2 is not supported")
        access = self.broker.access
        if access is not None and not access.may_send(self.session.client_id, topic):
            log.info("client %s: publish to %r denied", self._name(), topic)
            if p.qos == 1:
                self.write(packet(PUBACK << 4, p.pid.to_bytes(2, "big") + (b"\x87" if self.version == 5 else b"")))
            return
        self.broker.publish(Message(topic, p.payload, p.qos, p.retain, p.props, self.session.client_id))
        if p.qos == 1:
            self.write(packet(PUBACK << 4, p.pid.to_bytes(2, "big")))

    def _subscribe(self, p: Subscribe) -> None:
        s = self.session
        v5 = self.version == 5
        sid = p.props.get(P_SUBSCRIPTION_ID)
        codes = bytearray()
        todo = []
        for full, opts in p.topics:
            shared = split_shared(full)
            if shared is None:
                codes.append(TOPIC_FILTER_INVALID if v5 else 0x80)
                continue
            group, filt = shared
            if group is not None and opts & 4:
                raise _protocol("no local on a shared subscription")
            if self.broker.access is not None and not self.broker.access.may_subscribe(s.client_id, full):
                log.info("client %s: subscription to %r denied", self._name(), full)
                codes.append(mqtt_acl.NOT_AUTHORIZED if v5 else 0x80)
                continue
            sub = Sub(s, full, group, opts, sid)
            existed = full in s.subs
            s.subs[full] = sub
            self.broker.tree.add(filt, sub)
            codes.append(sub.qos)
            if group is None and (sub.rh == 0 or (sub.rh == 1 and not existed)):
                todo.append((sub, filt))
        body = p.pid.to_bytes(2, "big") + (b"\x00" if v5 else b"") + bytes(codes)
        self.write(packet(SUBACK << 4, body))
        for sub, filt in todo:
            self.broker.send_retained(sub, filt)

    def _unsubscribe(self, p: Unsubscribe) -> None:
        s = self.session
        codes = bytearray()
        for full in p.filters:
            sub = s.subs.pop(full, None)
            if sub is None:
                codes.append(NO_SUBSCRIPTION_EXISTED)
                continue
            self.broker.tree.remove(_plain(full), sub.group, s.client_id)
            codes.append(SUCCESS)
        body = p.pid.to_bytes(2, "big") + (b"\x00" + bytes(codes) if self.version == 5 else b"")
        self.write(packet(UNSUBACK << 4, body))

    def _disconnect(self, p: Disconnect) -> None:
        s = self.session
        expiry = p.props.get(P_SESSION_EXPIRY)
        if expiry is not None:
            if s.expiry == 0 and expiry != 0:
                raise _protocol("session expiry set on DISCONNECT after 0 on CONNECT")
            s.expiry = expiry
        if p.code == SUCCESS:
            s.will = None
        self._flush(pump=False)
        self.closing = True
        self._detach(publish_will=True)
        self.transport.close()


# --- running it --------------------------------------------------------------------------------------


class BrokerThread:
    """A ``Broker`` on its own event loop in a daemon thread (for tests and in-process use).

    ``start()`` returns once it listens (``port`` is then the bound port); ``stop()`` closes it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.broker = Broker(host, port, **options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="ll-mqtt-broker", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return self.broker.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.broker.start())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.broker.close())
        self.loop.close()

    def start(self, timeout: float = 10.0) -> "BrokerThread":
        self.thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the MQTT broker did not start")
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn()`` on the broker's loop and return its result (to look at broker state safely)."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append(fn())
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise TimeoutError("broker loop did not answer")
        return box[0] if box else None

    def stop(self, timeout: float = 10.0) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)

    def __enter__(self) -> "BrokerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m ledgerlink.tools.mqtt_broker",
                                description="Embedded MQTT 5.0 / 3.1.1 broker (QoS 0 and 1, retained messages, "
                                            "shared subscriptions, sessions in memory).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="TCP port (default 1883; 0: a free one)")
    p.add_argument("--max-packet-size", type=int, default=1 << 20, metavar="BYTES",
                   help="largest packet accepted from a client (default 1 MiB)")
    p.add_argument("--max-queued", type=int, default=100_000, metavar="N",
                   help="messages queued per client before new ones are dropped (default 100000)")
    p.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, metavar="N",
                   help="client connections at once; more are closed at once (default %d)" % MAX_CONNECTIONS)
    p.add_argument("--max-keepalive", type=int, default=MAX_KEEPALIVE_S, metavar="S",
                   help="keep alive granted at most, also to clients asking for none (default %d s)" % MAX_KEEPALIVE_S)
    p.add_argument("--packet-timeout", type=float, default=PACKET_TIMEOUT_S, metavar="S",
                   help="a connection whose packet is not complete this long after its first byte is closed "
                        "(default %g s)" % PACKET_TIMEOUT_S)
    p.add_argument("--accounts", metavar="FILE", help="a site's accounts.json (ledgerlink.tools.broker_access): "
                   "only its accounts connect, with their ACLs (default: anonymous clients, no ACLs)")
    p.add_argument("--tls-port", type=int, metavar="N", help="also listen with TLS on this port (0: a free one), "
                   "with --tls-dir")
    p.add_argument("--tls-dir", metavar="DIR", help="the site CA and broker certificate (ca.pem, server.pem, "
                   "server.key; ledgerlink.tools.broker_access.site_tls); client certificates from the CA are checked")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error("--port must be 0..65535")
    if not 16 <= args.max_packet_size <= MAX_VBI + 5 or args.max_queued < 1:
        p.error("--max-packet-size must be 16..268435460 and --max-queued at least 1")
    if args.max_connections < 1 or not 1 <= args.max_keepalive <= 65535 or args.packet_timeout <= 0:
        p.error("--max-connections must be at least 1, --max-keepalive 1..65535 and --packet-timeout above 0")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        access = mqtt_acl.Access(args.accounts) if args.accounts else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print("mqtt_broker: cannot read accounts %s: %s" % (args.accounts, exc), file=sys.stderr)
        return 2
    tls = None
    if args.tls_port is not None:
        from pathlib import Path

        from ledgerlink.tools.broker_access import server_tls_context

        d = Path(args.tls_dir or ".")
        tls = server_tls_context({"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"})
    broker = Broker(args.host, args.port, max_packet_size=args.max_packet_size, max_queued=args.max_queued,
                    access=access, max_connections=args.max_connections, max_keepalive=args.max_keepalive,
                    packet_timeout_s=args.packet_timeout, tls=tls, tls_port=args.tls_port or 0)

    async def serve() -> None:
        await broker.start()
        log.info("listening on %s:%d (MQTT 5.0 and 3.1.1)%s", args.host, broker.port,
                 ", TLS on %d" % broker.tls_port if broker.tls is not None else "")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: %d messages received, %d dropped from full queues", broker.received, broker.dropped)
        await broker.close()

    try:
        asyncio.run(serve())
    except OSError as exc:
        print("mqtt_broker: cannot listen on %s:%d: %s" % (args.host, args.port, exc.strerror or exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
