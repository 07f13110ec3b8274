"""End-to-end delivery of the board client: frames in flight, stored-acks, readings waiting for receipts.

``Delivery(client)`` belongs to a ``device.DeviceClient`` (its queue, storage, config, MQTT link and
protocol); the client loads it on its first connected step, after the library's own imports, so the
board's heap holds this code only once the device talks to its gateway (docs/protocol.md, "Delivery").

In flight: up to ``max_inflight`` of the oldest queued frames, published at most ``pace_per_s`` per
second with bursts of ``pace_burst`` (under the gateway's 10/s and 20 per device, so a backlog drains
without refusals). An entry: [packet id, sent tick, PUBACK seen, first tick, "stored"/"refused"/None,
frame hash, [tick, delay ms] after which it is published again, or None]. A publish without PUBACK
after ``retry_ms`` is sent again with the same packet id and DUP set; one still without PUBACK after
``keepalive_s`` drops the connection. A PUBACK only says the broker has the frame: it leaves the queue
(in order) once a gateway says it is stored (a stored-ack that checks, a valid receipt, a registration's
held reply) or refuses it for good. A frame without a stored-ack ``ack_timeout_ms`` after its PUBACK,
and one refused as rate-limited or ledger-unavailable (after the backoff delay), is published again;
the gateway answers a copy of a stored frame with its ack.

Waiting for receipts: a stored reading goes from the queue (``llq``) to ``lla`` (name: frame hash in hex,
record: the frame) and leaves it in order once its receipt checked, so a reset keeps every reading that
still waits, not only the last ``max_tracked`` the protocol keeps in RAM. Checked receipts are kept in
``llr`` as [seq, frame hash, height] (the last ``receipts_kept``; the whole receipt can be asked for
again). When no receipt came for ``receipt_wait_ms`` the client asks for those of the oldest waiting
readings on its ``ask`` topic, doubling the wait while none comes, up to ``ASK_WAIT_MAX`` times
``receipt_wait_ms``.

Tested under CPython against the gateway's service in tests/device/test_board_client_delivery.py, and
on board32 against the real stack in tests/micropython/test_stack_in_vm.py.
"""

import hashlib

from ledgerlink.core import cbor
from ledgerlink.protocol import codes, device_protocol as dp
from ledgerlink.core.errors import LedgerlinkError

from ledgerlink_client.queue import OfflineQueue

# The wait between receipt asks doubles up to this many ``receipt_wait_ms`` (2 min by default): a receipt
# held up by a ledger outage is asked for again within minutes of its end.
ASK_WAIT_MAX = 4
# The stored-ack check (with the inclusion proof's merkle), loaded for each stored-ack, receipt request or
# transient refusal and forgotten after it, so it is off the heap while a receipt is checked.
ACK_MODULES = (("ledgerlink.protocol", "stored_ack"), ("ledgerlink.core", "merkle"))


def _stored_ack():
    from ledgerlink.protocol import stored_ack

    return stored_ack


class Delivery:
    def __init__(self, client):
        cfg = client.config
        self.client = client
        self.inflight = []
        self.pace = [cfg["pace_burst"], None]
        self.queue = OfflineQueue(client.storage, "lla", cfg["await_bytes"], cfg["await_frames"])
        self.kept = OfflineQueue(client.storage, "llr", 64 * cfg["receipts_kept"], cfg["receipts_kept"])
        self.received = []          # hashes of waiting readings whose receipt came before an older one's
        self.statements = []        # gateway commit statements whose signature checked
        self.ask_from = client.ticks_ms()
        self.ask_wait = cfg["receipt_wait_ms"]

    # --- in flight --------------------------------------------------------------------------------

    def _paced(self, now):
        c = self.client
        pace = self.pace
        if pace[1] is not None:
            pace[0] = min(c.config["pace_burst"], pace[0] + c.ticks_diff(now, pace[1]) * c.config["pace_per_s"] / 1000)
        pace[1] = now
        if pace[0] >= 1:
            pace[0] -= 1
            return True
        return False

    def send(self, now):
        """Publish, retransmit and publish again the oldest frames (see the module docstring)."""
        c = self.client
        cfg = c.config
        keepalive_ms = cfg["keepalive_s"] * 1000
        for i, entry in enumerate(self.inflight):
            if entry[4] is not None:
                continue
            if entry[6] is not None:
                if c.ticks_diff(now, entry[6][0]) >= entry[6][1] and self._paced(now):
                    topic, payload = c.queue.peek(i)
                    entry[0] = c.mqtt.publish(topic, payload, 1)
                    entry[1] = entry[3] = now
                    entry[2] = False
                    entry[6] = None
                    c._last_tx = now
                    c.stats["resent"] += 1
                continue
            if entry[2]:
                if c.ticks_diff(now, entry[1]) >= cfg["ack_timeout_ms"]:
                    entry[6] = [now, 0]     # the broker took it, no gateway said it is stored
                continue
            if keepalive_ms and c.ticks_diff(now, entry[3]) > keepalive_ms:
                raise OSError("no PUBACK within the keepalive interval")
            if c.ticks_diff(now, entry[1]) >= cfg["retry_ms"]:
                topic, payload = c.queue.peek(i)
                c.mqtt.publish(topic, payload, 1, False, entry[0], True)
                entry[1] = now
                c._last_tx = now
                c.stats["retransmitted"] += 1
        while len(self.inflight) < cfg["max_inflight"] and len(self.inflight) < len(c.queue) and self._paced(now):
            topic, payload = c.queue.peek(len(self.inflight))
            pid = c.mqtt.publish(topic, payload, 1)
            self.inflight.append([pid, now, False, now, None, hashlib.sha256(payload).digest(), None])
            c._last_tx = now
            c.stats["published"] += 1

    def puback(self, pid):
        """The broker has the frame: it stays queued until a gateway says it is stored."""
        for entry in self.inflight:
            if entry[0] == pid and not entry[2] and entry[6] is None:
                entry[2] = True
                entry[1] = self.client.ticks_ms()
                self.client.stats["acked"] += 1
                break

    def _entry(self, frame_hash):
        for entry in self.inflight:
            if entry[5] == frame_hash:
                return entry
        return None

    def _decided(self, frame_hash, how):
        """A gateway stored (or refused for good) an in-flight frame; those at the head leave the queue."""
        c = self.client
        entry = self._entry(frame_hash)
        if entry is None or entry[4] is not None:
            return
        entry[4] = how
        c.stats["stored" if how == "stored" else "refused_for_good"] += 1
        while self.inflight and self.inflight[0][4] is not None:
            entry = self.inflight.pop(0)
            topic, payload = c.queue.peek(0)
            if entry[4] == "stored" and topic == c.topic_up:
                self._wait(entry[5], payload)
            c.queue.pop()

    # --- replies ----------------------------------------------------------------------------------

    def reply(self, payload):
        """A stored-ack or not-stored answer (kinds the protocol core does not know); False for others."""
        c = self.client
        try:
            msg = cbor.loads(bytes(payload), 8, dp.MAX_REPLY)
        except LedgerlinkError:
            return False
        kind = msg.get(0) if isinstance(msg, dict) else None
        if kind == codes.KIND_STORED:
            p = c.protocol
            try:
                frame_hash = _stored_ack().check(msg, c.device_id, p.site, p.gateway_keys, p.crypto,
                                                 self.statements).frame_hash
            except LedgerlinkError:
                c.stats["acks_invalid"] += 1
                return True
            finally:
                dp._forget_on_boards(*ACK_MODULES)
            self._decided(frame_hash, "stored")
            return True
        if kind == codes.KIND_NOT_STORED:
            item = msg.get(1)
            frame = self._frame(item) if isinstance(item, bytes) else None
            if frame is not None:
                c.queue.push(c.topic_up, frame)          # delivered again
                self._done(item)
            return True
        return False

    def down(self, reply):
        """A decoded reply the protocol core knows, as it touches delivery: the ``ReceiptResult`` of a
        receipt checked here, False for a transient refusal (the frame goes out again later), else None."""
        c = self.client
        kind, frame_hash = reply[0], reply.get(1)
        if not isinstance(frame_hash, bytes):
            return None
        if kind == dp.KIND_RECEIPT:
            frame = self._frame(frame_hash)
            entry = self._entry(frame_hash) if frame is None else None
            if entry is not None:                   # its ack was lost: a valid receipt says it is stored
                frame = c.queue.peek(self.inflight.index(entry))[1]
            if frame is None:
                if self._confirmed(frame_hash):     # published again (its stored-ack was late): a repeat
                    return dp.Ignored("receipt of a reading already confirmed")
                return None
            result = c.protocol.verify_receipt(reply, frame)
            if result.valid:
                self.kept.push("r", cbor.dumps([result.seq, frame_hash, result.height]))
                self.ask_from = c.ticks_ms()
                self.ask_wait = c.config["receipt_wait_ms"]
                if c.protocol.sent.get(result.seq) == frame_hash:
                    del c.protocol.sent[result.seq]
                if entry is not None:
                    self.received.append(frame_hash)
                    self._decided(frame_hash, "stored")
                else:
                    self._done(frame_hash)
            return result
        if kind == dp.KIND_REFUSAL:
            entry = self._entry(frame_hash)
            transient = entry is not None and entry[4] is None and reply.get(2) in _stored_ack().TRANSIENT_REFUSALS
            dp._forget_on_boards(*ACK_MODULES)
            if transient:
                entry[6] = [c.ticks_ms(), c._backoff_ms()]
                return False
            self._decided(frame_hash, "refused")
        elif kind == dp.KIND_REGISTRATION:
            self._decided(frame_hash, "stored")
        return None

    # --- waiting for receipts ---------------------------------------------------------------------

    def _wait(self, frame_hash, frame):
        if frame_hash in self.received:          # its receipt came first
            self.received.remove(frame_hash)
            return
        if not len(self.queue):
            self.ask_from = self.client.ticks_ms()
        self.queue.push(frame_hash.hex(), frame)

    def _frame(self, frame_hash):
        """The frame of a reading waiting for its receipt, or None."""
        name = frame_hash.hex()
        for i in range(len(self.queue)):
            held, frame = self.queue.peek(i)
            if held == name:
                return frame
        return None

    def _confirmed(self, frame_hash):
        """True when a valid receipt of ``frame_hash`` is among the kept ones (``llr``)."""
        for i in range(len(self.kept)):
            if cbor.loads(self.kept.peek(i)[1])[1] == frame_hash:
                return True
        return False

    def _done(self, frame_hash):
        self.received.append(frame_hash)
        q = self.queue
        while len(q) and bytes.fromhex(q.peek(0)[0]) in self.received:
            self.received.remove(bytes.fromhex(q.peek(0)[0]))
            q.pop()
        while len(self.received) > self.client.config["await_frames"]:
            self.received.pop(0)

    def ask(self, now):
        """Ask for the receipts of the oldest waiting readings when none came for a while."""
        c = self.client
        if not len(self.queue) or c.ticks_diff(now, self.ask_from) < self.ask_wait:
            return
        names = []
        max_ask = _stored_ack().MAX_ASK
        dp._forget_on_boards(*ACK_MODULES)
        for i in range(len(self.queue)):
            h = bytes.fromhex(self.queue.peek(i)[0])
            if h not in self.received:
                names.append(h)
                if len(names) == max_ask:
                    break
        if names:
            self.request(names)
        self.ask_from = now
        self.ask_wait = min(self.ask_wait * 2, ASK_WAIT_MAX * c.config["receipt_wait_ms"])

    def request(self, items):
        """Ask for the stored-acks and receipts of frames named by seq or frame hash."""
        c = self.client
        payload = _stored_ack().request(items)
        dp._forget_on_boards(*ACK_MODULES)
        c.mqtt.publish(c.protocol.topic("ask"), payload, 1)
        c.stats["asks"] += 1
