"""``PeerDevice``: a CPython device that finds other devices and queries them (paho-mqtt 2.x, MQTT 5).

It uses the site's directory (``ledgerlink.protocol.discovery``; every record it shows is checked here
against the trusted validators) and talks to a partner over their pair topics with
``ledgerlink.protocol.peer_session``. ``query`` answers the seed's three cases:

- partner unregistered: ``PartnerUnavailable("unregistered")``, from the ledger's proof that no such
  device exists (a banned partner: ``PartnerUnavailable("banned")``, from the proof of the ban);
- partner offline (no answer within ``timeout``): its history from the ledger, each record proven, and
  the query stays on the pair topic (a retained open, readable only by the partner) to be answered when
  the partner comes back (``QueryOutcome.later``);
- partner online: the live information packet.

Each answered query leaves its record on the ledger before ``query`` returns (``record_exchange``:
parties, time, digest of the frames, never their content), and the record can be fetched with its
proof (``communication_record``).
A ``dir-notice`` that proves a partner banned closes every session with it at once.
Tested in tests/m2m/test_peer_devices.py against a live site with mosquitto.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import discovery as dsc
from ledgerlink.protocol import peer_session as ps
from ledgerlink.protocol.codes import RECORD_DEVICE, device_id
from ledgerlink.protocol.ledger_tx import RECORD_COMMUNICATION, communication_tx

log = logging.getLogger(__name__)

QOS = 1
EXCHANGE_TYPE = "peer-query"        # msg-type of the communication record of a query/information exchange
Handler = Callable[[ps.Packet, bytes], "tuple[int, Any]"]


class PartnerUnavailable(Exception):
    """The partner cannot be queried: ``reason`` "unregistered" or "banned" (proven by the ledger), or
    "refused" (the directory gave no pair topics)."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__("%s: %s" % (reason, text))
        self.reason = reason


class Exchange:
    """One query and its information packet as sent on the wire: who asked whom, the frames, the digest."""

    def __init__(self, sender: bytes, receiver: bytes, session_id: bytes, query_frame: bytes, info_frame: bytes):
        self.sender = sender
        self.receiver = receiver
        self.query_frame = query_frame
        self.info_frame = info_frame
        self.size = len(query_frame) + len(info_frame)
        self.digest = ps.exchange_digest(session_id, query_frame, info_frame)


class QueryOutcome:
    """``case``: "online" (``info`` is the answer now) or "offline" (``history``: the partner's proven
    records, [(record kind, record id, record map)]; ``later`` is set when the queued query is answered,
    then ``info`` holds the answer). ``exchange`` once answered, and ``recorded``: the directory's answer
    to its communication record (None when the device records none)."""

    def __init__(self, peer: dsc.DeviceRecord, session: ps.PeerSession, query_frame: bytes) -> None:
        self.peer = peer
        self.session = session
        self.query_frame = query_frame
        self.case = "online"
        self.info: ps.Packet | None = None
        self.history: list[tuple[int, Any, dict]] = []
        self.exchange: Exchange | None = None
        self.recorded: dict | None = None
        self.later = threading.Event()


class PeerDevice:
    """One device on the site's broker for discovery and peer queries.

    ``handler(query packet, peer id) -> (info status, body)`` answers queries from partners (default:
    INFO_UNKNOWN_SUBJECT). ``validators``: the trusted validator keys of ``chain_id``. ``record``: each
    answered query of this device leaves its communication record before ``query`` returns it (False:
    the app calls ``record_exchange`` itself).
    """

    def __init__(self, priv: bytes, site: str, chain_id: str, validators: list[bytes], host: str, port: int,
                 login: dict[str, str], handler: Handler | None = None, backend: str = "cpython",
                 record: bool = True, group_key: bytes | None = None) -> None:
        self.crypto = get_backend(backend)
        self.record_exchanges = record
        self.priv = priv
        self.pub = self.crypto.public_key(priv, True)
        self.id = device_id(self.pub)
        self.site = site
        self.chain_id = chain_id
        self.validators = validators
        self.group_key = group_key      # the set's FROST group key, when its headers name one
        self.handler = handler or (lambda packet, peer: (ps.INFO_UNKNOWN_SUBJECT, None))
        self.min_height = 0
        self.sessions: dict[bytes, ps.PeerSession] = {}       # session id -> session
        self.outcomes: dict[bytes, QueryOutcome] = {}        # session id -> query waiting for its accept
        self.exchanges: list[Exchange] = []                   # exchanges answered, both directions
        self.closed_at: dict[bytes, float] = {}              # peer -> monotonic time its sessions were closed
        self._responder = ps.Responder(priv, self.id, self._peer_key, backend=self.crypto)
        self._answers: dict[int, queue.Queue] = {}
        self._ids = itertools.count(1)
        self._frames: queue.Queue = queue.Queue()
        self._lock = threading.RLock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=login["username"], protocol=mqtt.MQTTv5)
        self.client.username_pw_set(login["username"], login["password"])
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 5)
        self._host, self._port = host, port
        self._worker = threading.Thread(target=self._work, daemon=True)
        self._pending_subs = 0

    # --- connection --------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> "PeerDevice":
        self.client.connect(self._host, self._port)
        self.client.loop_start()
        self._worker.start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError("device %s did not subscribe within %.0f s" % (self.id.hex(), timeout))
        return self

    def stop(self) -> None:
        self._frames.put(None)
        self.client.disconnect()
        self.client.loop_stop()
        self._worker.join(timeout=5)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        self._pending_subs = 2
        client.subscribe(dsc.answer_topic(self.site, self.id), QOS)
        client.subscribe(ps.inbox_filter(self.site, self.id), QOS)

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
        self._pending_subs -= 1
        if self._pending_subs <= 0:
            self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        payload = bytes(msg.payload)
        if msg.topic.endswith("/dira"):
            try:
                ans = dsc.decode_answer(payload)
            except dsc.DiscoveryError:
                return
            box = self._answers.get(ans[1]) if ans[1] else None
            if box is not None:                      # the worker may be waiting for it: handed over here
                box.put(ans)
                return
        self._frames.put((msg.topic, payload))

    def _work(self) -> None:
        """Directory notices and pair frames, in order, off the network thread (handling one may ask the
        directory, whose answer the network thread hands over)."""
        while True:
            item = self._frames.get()
            if item is None:
                return
            topic, payload = item
            try:
                if topic.endswith("/dira"):
                    self._on_answer(payload)
                elif payload:
                    self._on_pair_frame(topic, payload)
            except (LedgerlinkError, PartnerUnavailable, TimeoutError) as exc:
                log.info("device %s: frame on %s refused: %s", self.id.hex()[:8], topic, exc)
            except Exception:  # noqa: BLE001 - one bad frame or handler error must not stop the device
                log.exception("device %s: frame on %s", self.id.hex()[:8], topic)

    # --- the directory -----------------------------------------------------------------------------

    def ask(self, op: int, arg: Any = None, timeout: float = 10.0) -> dict:
        """The directory's ``dir-answer`` to one request (TimeoutError when none comes)."""
        request_id = next(self._ids)
        box: queue.Queue = queue.Queue()
        self._answers[request_id] = box
        try:
            self.client.publish(dsc.dir_topic(self.site, self.id), dsc.encode_request(request_id, op, arg), QOS)
            try:
                return box.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError("the directory did not answer request %d within %.0f s" % (request_id, timeout))
        finally:
            self._answers.pop(request_id, None)

    def _on_answer(self, payload: bytes) -> None:
        ans = dsc.decode_answer(payload)
        if ans[1] == 0 and ans.get(6) == dsc.DIR_NOTICE_BANNED:
            self._on_ban_notice(ans)

    def _on_ban_notice(self, ans: dict) -> None:
        for proof in ans.get(3, []):
            dev = dsc.proof_device_id(proof)
            if dev is None:
                continue
            try:
                dsc.partner(proof, self.chain_id, self.validators, dev, self.min_height, self.crypto, self.group_key)
            except dsc.DiscoveryError as exc:
                if exc.reason == "banned":
                    self.close_with(dev, ps.CLOSE_PEER_BANNED)

    def close_with(self, peer: bytes, reason: int = ps.CLOSE_DONE) -> None:
        """Close every session with ``peer`` (its keys forgotten)."""
        with self._lock:
            for sid, session in list(self.sessions.items()):
                if session.peer_id == peer:
                    session.close(reason)
                    del self.sessions[sid]
            self.closed_at[peer] = time.monotonic()

    def partner(self, peer: bytes, op: int = dsc.DIR_BY_ID) -> dsc.DeviceRecord:
        """The proven record of ``peer`` as a partner; ``op`` DIR_PAIR also opens the pair topics."""
        ans = self.ask(op, bytes(peer))
        proofs = ans.get(3) or []
        if not proofs:
            raise PartnerUnavailable("refused", ans.get(4) or "the directory showed no record")
        try:
            rec = dsc.partner(proofs[0], self.chain_id, self.validators, peer, self.min_height, self.crypto,
                              self.group_key)
        except dsc.DiscoveryError as exc:
            if exc.reason in ("unregistered", "banned"):
                raise PartnerUnavailable(exc.reason, str(exc)) from None
            raise
        self.min_height = max(self.min_height, rec.height)
        if ans[2] != dsc.DIR_OK:
            raise PartnerUnavailable("refused", ans.get(4) or "the directory refused")
        return rec

    def find_by(self, attributes: dict) -> list[dsc.DeviceRecord]:
        """Active devices whose registered attributes hold ``attributes``, each proven."""
        ans = self.ask(dsc.DIR_BY_ATTRIBUTES, dict(attributes))
        return dsc.partners(ans.get(3) or [], self.chain_id, self.validators, attributes, self.min_height,
                            self.crypto, self.group_key)

    def record(self, kind: int, record_id: Any) -> dict | None:
        """A ledger record (kind, id), proven; None when proven absent."""
        ans = self.ask(dsc.DIR_RECORD, [kind, record_id])
        proofs = ans.get(3) or []
        if not proofs:
            raise dsc.DiscoveryError("malformed", ans.get(4) or "no proof in the answer")
        _, value = dsc.verify_record(proofs[0], self.chain_id, self.validators, kind, record_id, 0, self.crypto,
                                     self.group_key)
        return None if value is None else cbor.loads(value)

    def history(self, peer: bytes) -> list[tuple[int, Any, dict]]:
        """What the ledger holds of ``peer``: (kind, id, record) of its device record, newest communication
        records and lots; each proof checked (one that does not check is left out)."""
        ans = self.ask(dsc.DIR_HISTORY, bytes(peer))
        proofs, ids = ans.get(3) or [], ans.get(7) or []
        out = []
        for proof, (kind, rid) in zip(proofs, ids):
            if kind == RECORD_DEVICE and rid != bytes(peer):
                continue
            try:
                _, value = dsc.verify_record(proof, self.chain_id, self.validators, kind, rid, 0, self.crypto,
                                             self.group_key)
            except dsc.DiscoveryError:
                continue
            if value is not None:
                out.append((kind, rid, cbor.loads(value)))
        return out

    # --- queries -----------------------------------------------------------------------------------

    def query(self, peer: bytes, subject: str, args: Any = None, timeout: float = 3.0) -> QueryOutcome:
        """Query ``peer`` (module docstring: the three cases)."""
        rec = self.partner(peer, dsc.DIR_PAIR)
        query = ps.encode_query(1, subject, args)
        session, frame = ps.initiate(self.priv, self.id, peer, rec.pubkey, int(time.time() * 1000), query,
                                     self.crypto)
        outcome = QueryOutcome(rec, session, frame)
        with self._lock:
            self.outcomes[session.session_id] = outcome
        info = self.client.publish(ps.pair_topic(self.site, self.id, peer), frame, QOS, retain=True)
        info.wait_for_publish(timeout)
        if not outcome.later.wait(timeout):
            outcome.case = "offline"
            outcome.history = self.history(peer)
        return outcome

    def _peer_key(self, peer: bytes) -> bytes | None:
        try:
            return self.partner(peer).pubkey
        except PartnerUnavailable:
            return None

    def _on_pair_frame(self, topic: str, payload: bytes) -> None:
        ids = ps.parse_pair_topic(topic)
        if ids is None or ids[1] != self.id:
            return
        peer = ids[0]
        kind, _ = ps.decode_frame(payload)
        if kind == ps.FRAME_OPEN:
            self._on_open(peer, payload)
            return
        sid = ps.frame_session_id(payload)
        with self._lock:
            outcome = self.outcomes.get(sid)
            session = self.sessions.get(sid) or (outcome.session if outcome else None)
        if session is None or session.peer_id != peer:
            raise ps.PeerError("state", "frame of no session of ours")
        packet = session.receive(payload)
        if kind == ps.FRAME_ACCEPT and outcome is not None:
            with self._lock:
                self.sessions[sid] = session
                del self.outcomes[sid]
            self.client.publish(ps.pair_topic(self.site, self.id, peer), b"", QOS, retain=True)   # the open is read
            outcome.info = ps.decode_packet(packet) if packet is not None else None
            outcome.exchange = Exchange(self.id, peer, sid, outcome.query_frame, payload)
            self.exchanges.append(outcome.exchange)
            if self.record_exchanges:
                try:
                    outcome.recorded = self.record_exchange(outcome.exchange)
                except TimeoutError as exc:
                    outcome.recorded = {1: 0, 2: dsc.DIR_UNAVAILABLE, 4: str(exc)}
            outcome.later.set()
        elif packet is not None:
            self._on_packet(session, ps.decode_packet(packet), payload)

    def _on_open(self, peer: bytes, frame: bytes) -> None:
        answer: list[bytes] = []

        def reply(early: bytes | None) -> bytes | None:
            if early is None:
                return None
            packet = ps.decode_packet(early)
            if packet.kind != ps.PACKET_QUERY:
                return None
            status, body = self.handler(packet, peer)
            answer.append(ps.encode_info(packet.query_id, status, body))
            return answer[0]

        session, early, accept = self._responder.accept_open(frame, int(time.time() * 1000), reply)
        with self._lock:
            self.sessions[session.session_id] = session
        self.client.publish(ps.pair_topic(self.site, self.id, peer), accept, QOS)
        if early is not None:
            self.exchanges.append(Exchange(peer, self.id, session.session_id, frame, accept))

    def _on_packet(self, session: ps.PeerSession, packet: ps.Packet, frame: bytes) -> None:
        if packet.kind == ps.PACKET_CLOSE:
            self.close_with(session.peer_id, packet.reason)
        elif packet.kind == ps.PACKET_QUERY:
            status, body = self.handler(packet, session.peer_id)
            out = session.seal(ps.encode_info(packet.query_id, status, body))
            self.client.publish(ps.pair_topic(self.site, self.id, session.peer_id), out, QOS)
            self.exchanges.append(Exchange(session.peer_id, self.id, session.session_id, frame, out))

    # --- communication records ---------------------------------------------------------------------

    def record_exchange(self, exchange: Exchange) -> dict:
        """Put the communication record of an exchange this device asked for on the ledger (through the
        directory, which cannot alter the signed transaction); the directory's ``dir-answer``."""
        tx = communication_tx(self.chain_id, self.priv, exchange.sender, exchange.receiver, EXCHANGE_TYPE,
                              exchange.size, exchange.digest, int(time.time() * 1000), backend=self.crypto)
        return self.ask(dsc.DIR_SUBMIT, tx, timeout=20.0)

    def communication_record(self, sender: bytes, digest: bytes) -> dict:
        """The proven communication record of ``sender``'s exchange with ``digest``; DiscoveryError when
        absent or not the parties' record."""
        rec = self.record(RECORD_COMMUNICATION, [bytes(sender), bytes(digest)])
        if rec is None:
            raise dsc.DiscoveryError("unregistered", "no communication record with this digest")
        if rec.get(1) != bytes(sender) or rec.get(5) != bytes(digest):
            raise dsc.DiscoveryError("mismatch", "the record is not this exchange's")
        return rec
