"""Peer queries on a board: the site's directory and device-to-device sessions over the board's MQTT client.

The same protocol as the CPython ``ledgerlink.device.peer`` (``ledgerlink.protocol.discovery`` and
``ledgerlink.protocol.peer_session``), driven by ``poll`` instead of threads: ``query`` asks a partner
(unregistered and banned partners refused from the ledger's proofs; offline: its proven history, the
query left retained for it), ``serve`` answers the queries that arrive, ``handler(packet, peer) ->
(status, body)``. Every directory answer is checked on the board against the trusted validators. A
``dir-notice`` proving a partner banned closes the sessions with it. The heap is collected every
``gc_threshold`` bytes allocated (default 1/``GC_SHARE`` of it) and before each frame is handled, so
both sides of a session fit in a 64 KB heap with the library in ROMFS. Tested on board32 against a live
site in tests/m2m/test_board_peer.py.
"""

import gc
import time

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.protocol import discovery as dsc
from ledgerlink.protocol import peer_session as ps
from ledgerlink.protocol.codes import RECORD_DEVICE, device_id


# Collect after every 1/GC_SHARE of the heap allocated (as the session client does, device_setup): a
# collection only when the heap is full leaves long-lived objects between dead ones, and then no free
# block is left for a record proof's MQTT packet or a frame's plaintext.
GC_SHARE = 16


def _now_ms():
    return int(time.time() * 1000)


def _collect_often(n):
    """On MicroPython, collect after every ``n`` bytes allocated (None: 1/``GC_SHARE`` of the heap; 0: only
    when the heap is full)."""
    if not hasattr(gc, "threshold"):
        return
    if n is None:
        n = (gc.mem_free() + gc.mem_alloc()) // GC_SHARE
    if n:
        gc.threshold(n)


def _forget_proof_code():
    """On MicroPython, forget the record-proof check (``smt_proof``) until the next proof: a board holds
    it only while it checks one."""
    import sys

    if sys.implementation.name != "micropython":
        return
    sys.modules.pop("ledgerlink.core.smt_proof", None)
    package = sys.modules.get("ledgerlink.core")
    if package is not None and "smt_proof" in package.__dict__:
        delattr(package, "smt_proof")


KEPT = 8                            # latest exchanges, closed peers and errors a board keeps


def _keep_latest(items, item):
    """Append ``item``, keeping the ``KEPT`` latest: a board that runs for months does not grow its heap."""
    items.append(item)
    if len(items) > KEPT:
        del items[0]


class BoardPeer:
    """Discovery and peer sessions of one board over ``client`` (a connected ``mqtt.MQTTClient``)."""

    def __init__(self, client, site, priv, chain_id, validators, handler=None, backend=None, clock_ms=None,
                 gc_threshold=None, group_key=None):
        _collect_often(gc_threshold)
        self.client = client
        self.site = site
        self.priv = priv
        self.chain_id = chain_id
        self.validators = validators
        self.group_key = group_key      # the set's FROST group key, when its headers name one
        self.handler = handler or (lambda packet, peer: (ps.INFO_UNKNOWN_SUBJECT, None))
        self.crypto = get_backend(backend)
        self.now_ms = clock_ms or _now_ms
        self.id = device_id(self.crypto.public_key(priv, True))
        self.min_height = 0
        self.sessions = {}          # session id -> PeerSession
        self.outcomes = {}          # session id -> outcome of a query waiting for its accept
        self.exchanges = []         # (sender, receiver, digest, size) of the latest exchanges, for their records
        self.exchange_count = 0     # exchanges since the start
        self.closed = []            # peers whose sessions a ban ended (the latest)
        self._answers = {}
        self._frames = []
        self._next_id = 0
        self.errors = []            # why frames were dropped (the latest)
        self._responder = ps.Responder(priv, self.id, self._peer_key, backend=self.crypto)

    def start(self, timeout_ms=10000):
        """Subscribe to the directory's answers and the pair topics addressed to this board."""
        waiting = [self.client.subscribe(dsc.answer_topic(self.site, self.id)),
                   self.client.subscribe(ps.inbox_filter(self.site, self.id))]
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while waiting:
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise OSError("no SUBACK")
            for ev in self.client.poll(100):
                if ev[0] == "suback" and ev[1] in waiting:
                    if ev[2][0] & 0x80:
                        raise OSError("subscription refused")
                    waiting.remove(ev[1])
                elif ev[0] == "msg":
                    self._route(ev[1], ev[2])

    def _route(self, topic, payload):
        if topic.endswith("/dira"):
            ans = dsc.decode_answer(payload)
            if ans[1]:
                self._answers[ans[1]] = ans
            elif ans.get(6) == dsc.DIR_NOTICE_BANNED:
                self._on_ban_notice(ans)
        elif payload:
            self._frames.append((topic, payload))

    def _poll(self, timeout_ms):
        for ev in self.client.poll(timeout_ms):
            if ev[0] == "msg":
                self._route(ev[1], ev[2])

    def ask(self, op, arg=None, timeout_ms=15000):
        """The directory's answer to one request (OSError when none comes in time)."""
        self._next_id += 1
        rid = self._next_id
        gc.collect()                # the answer carries a record proof: room for it in one piece
        self.client.publish(dsc.dir_topic(self.site, self.id), dsc.encode_request(rid, op, arg))
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while rid not in self._answers:
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise OSError("the directory did not answer")
            self._poll(100)
        return self._answers.pop(rid)

    def partner(self, peer, op=dsc.DIR_BY_ID):
        """The proven record of ``peer`` as a partner (DiscoveryError "unregistered" / "banned")."""
        ans = self.ask(op, peer)
        proofs = ans.get(3) or []
        if not proofs:
            raise dsc.DiscoveryError("refused", ans.get(4) or "no record shown")
        try:
            rec = dsc.partner(proofs[0], self.chain_id, self.validators, peer, self.min_height, self.crypto,
                              self.group_key)
        finally:
            _forget_proof_code()
        if ans[2] != dsc.DIR_OK:
            raise dsc.DiscoveryError("refused", ans.get(4) or "refused")
        if rec.height > self.min_height:
            self.min_height = rec.height
        return rec

    def _peer_key(self, peer):
        try:
            return self.partner(peer).pubkey
        except dsc.DiscoveryError:
            return None

    def _on_ban_notice(self, ans):
        for proof in ans.get(3) or []:
            dev = dsc.proof_device_id(proof)
            if dev is None:
                continue
            rec = dsc.device_record(proof, self.chain_id, self.validators, dev, self.min_height, self.crypto,
                                    self.group_key)
            if rec is not None and rec.banned:
                self.close_with(dev, ps.CLOSE_PEER_BANNED)

    def close_with(self, peer, reason=ps.CLOSE_DONE):
        for sid in list(self.sessions):
            if self.sessions[sid].peer_id == peer:
                self.sessions[sid].close(reason)
                del self.sessions[sid]
        _keep_latest(self.closed, peer)

    def query(self, peer, subject, args=None, timeout_ms=5000):
        """{"case": "online"/"offline", "info": Packet or None, "history": [(kind, id, record)]}."""
        rec = self.partner(peer, dsc.DIR_PAIR)
        session, frame = ps.initiate(self.priv, self.id, peer, rec.pubkey, self.now_ms(),
                                     ps.encode_query(1, subject, args), self.crypto)
        out = {"case": "online", "info": None, "history": [], "session": session, "query": frame}
        self.outcomes[session.session_id] = out
        self.client.publish(ps.pair_topic(self.site, self.id, peer), frame, 1, True)
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while session.session_id in self.outcomes and time.ticks_diff(deadline, time.ticks_ms()) > 0:
            self.serve(100)
        if session.session_id in self.outcomes:
            out["case"] = "offline"
            out["history"] = self.history(peer)
        return out

    def history(self, peer):
        ans = self.ask(dsc.DIR_HISTORY, peer)
        out = []
        for proof, ident in zip(ans.get(3) or [], ans.get(7) or []):
            if ident[0] == RECORD_DEVICE and ident[1] != peer:
                continue
            try:
                _, value = dsc.verify_record(proof, self.chain_id, self.validators, ident[0], ident[1], 0,
                                             self.crypto, self.group_key)
            except dsc.DiscoveryError:
                continue
            if value is not None:
                out.append((ident[0], ident[1], cbor.loads(value)))
        _forget_proof_code()
        return out

    def serve(self, timeout_ms=0):
        """Read what arrives within ``timeout_ms`` and handle every pair frame that came; the number handled.
        A frame that does not check is dropped (its PeerError or DiscoveryError returned in ``errors``)."""
        self._poll(timeout_ms)
        handled = 0
        while self._frames:
            topic, payload = self._frames.pop(0)
            gc.collect()            # a frame's keys and packets go into the lowest holes, the top stays whole
            try:
                self._on_frame(topic, payload)
                handled += 1
            except (ps.PeerError, dsc.DiscoveryError, OSError) as exc:
                _keep_latest(self.errors, str(exc))
        return handled

    def _on_frame(self, topic, payload):
        ids = ps.parse_pair_topic(topic)
        if ids is None or ids[1] != self.id:
            return
        peer = ids[0]
        kind, fields = ps.decode_frame(payload)
        if kind == ps.FRAME_OPEN:
            fields = None
            self._on_open(peer, payload)
            return
        sid = fields[0] if kind == ps.FRAME_DATA else ps.frame_session_id(payload)
        fields = None               # the frame is decoded again by the session: one copy at a time
        out = self.outcomes.get(sid)
        session = self.sessions.get(sid) or (out["session"] if out else None)
        if session is None or session.peer_id != peer:
            raise ps.PeerError("state", "frame of no session of this board")
        packet = session.receive(payload)
        if kind == ps.FRAME_ACCEPT and out is not None:
            del self.outcomes[sid]
            self.sessions[sid] = session
            self.client.publish(ps.pair_topic(self.site, self.id, peer), b"", 1, True)
            out["info"] = ps.decode_packet(packet) if packet is not None else None
            self._exchanged(self.id, peer, sid, out.pop("query"), payload)
        elif packet is not None:
            p = ps.decode_packet(packet)
            if p.kind == ps.PACKET_QUERY:
                status, body = self.handler(p, peer)
                reply = session.seal(ps.encode_info(p.query_id, status, body))
                self.client.publish(ps.pair_topic(self.site, self.id, peer), reply)
                self._exchanged(peer, self.id, sid, payload, reply)
            elif p.kind == ps.PACKET_CLOSE:
                self.close_with(peer, p.reason)

    def _on_open(self, peer, frame):
        handler = self.handler

        def reply(early):
            if early is None:
                return None
            p = ps.decode_packet(early)
            if p.kind != ps.PACKET_QUERY:
                return None
            status, body = handler(p, peer)
            return ps.encode_info(p.query_id, status, body)

        session, early, accept = self._responder.accept_open(frame, self.now_ms(), reply)
        self.sessions[session.session_id] = session
        self.client.publish(ps.pair_topic(self.site, self.id, peer), accept)
        if early is not None:
            self._exchanged(peer, self.id, session.session_id, frame, accept)

    def _exchanged(self, sender, receiver, session_id, query_frame, info_frame):
        _keep_latest(self.exchanges, (sender, receiver, ps.exchange_digest(session_id, query_frame, info_frame),
                                      len(query_frame) + len(info_frame)))
        self.exchange_count += 1
