"""Updates over MQTT (docs/protocol.md, "Updates"): the device's status and chunk requests, the publisher's
offers and chunks, and both ends' logic without I/O.

Topics, under the device's own prefix ``ll/<site>/dev/<device-id>/``: the device sends ``upd``
(``update-request``: its status, or a request for chunks) and receives ``fw`` (``update-message``: an
offer, or a chunk); the broker lets only the device send on its ``upd`` and only the site's gateway on
its ``fw``. Nothing here is trusted by the device: every offer goes through ``update_check`` and every
payload through the digest of its signed manifest (``update_agent``).

``UpdateClient`` (device): ``status()`` at each start and after each change; ``handle(payload)`` for
each ``fw`` message, returning the requests to send. ``UpdatePublisher`` (gateway side, in
``update_publisher``; a device never loads it): the releases it serves (``add``), the device's status
(``status_of``), and the answers to each request.
"""

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import update_check as uc
from ledgerlink.protocol.update_check import MESSAGE_MAX, MSG_OFFER

UP_LEAF = "upd"                 # device -> publisher
DOWN_LEAF = "fw"                # publisher -> device
MSG_CHUNKS = 2                  # [2, manifest-digest, first chunk, count]
MSG_CHUNK = 2                   # [2, manifest-digest, index, bytes]
CHUNK_WINDOW = 4                # chunks asked for at a time (a board holds one at a time)
RETRY_MS = 5000                 # a download with no chunk for this long asks again
STATUS_EVERY_MS = 600000        # an idle device repeats its status this often (a restarted service hears it)


REFUSALS_KEPT = 4


class UpdateClient:
    """The device's end: drives an ``UpdateAgent`` from ``fw`` messages; ``refusals`` are the last
    [reason, manifest digest] refused, reported in the status (the publisher does not offer them again)."""

    def __init__(self, agent, ticks_diff=None, signer=None):
        self.agent = agent
        self.signer = signer            # (device id, sign(message) -> signature, now_ms()) or None: states nothing
        self.stated = {}                # component -> [sequence, digest] last stated
        self.ticks_diff = ticks_diff or (lambda a, b: a - b)    # time.ticks_diff on a board: its ms counter wraps
        self.refusals = []
        self._digest = None             # manifest digest of the download under way
        self._asked_upto = 0            # chunks asked for up to this index (exclusive)
        self._heard_ms = None           # when the last fw message of the download came (or it was asked for)
        self._status_ms = None          # when the status was last repeated (``retry``)
        self.status_later = False       # True: a change sets status_due, and the caller makes the status
        self.status_due = False

    def status(self):
        """The status message (the versions this device runs) to send at start and after a change."""
        from ledgerlink.protocol.update_version import encode_status     # here: a board makes its status itself

        running = self.agent.running()
        return encode_status(self.agent.device_class, running, self.refusals, self.statements(running))

    def statements(self, running):
        """{component: version-statement} of the versions in ``running`` not stated yet (all at the first
        report, the new one after an install); signed only then, so a status repeat costs no signature."""
        if self.signer is None:
            return None
        from ledgerlink.protocol.update_version import due_statements

        device_id, sign, now_ms = self.signer
        return due_statements(self.stated, running, self.agent.chain_id, device_id,
                                             self.agent.device_class, sign, now_ms())

    def _changed(self):
        """[the status] after a change, or [] with ``status_due`` set when the caller makes it (``status_later``)."""
        if self.status_later:
            self.status_due = True
            return []
        return [self.status()]

    def _refused(self, code, digest):
        self.refusals = (self.refusals + [[code, digest]])[-REFUSALS_KEPT:]

    def requests(self):
        """The chunk request of the download under way (also after a reset: it resumes), or []."""
        nxt = self.agent.next_chunk()
        if nxt is None or self._digest is None:
            return []
        m = self.agent.pending
        count = min(CHUNK_WINDOW, m.chunks - nxt)
        self._asked_upto = nxt + count
        return [cbor.dumps([MSG_CHUNKS, self._digest, nxt, count])]

    def retry(self, now_ms):
        """The chunk request again when the download under way heard nothing for RETRY_MS; without a download,
        the status every STATUS_EVERY_MS (an update service started after this device connected missed it);
        else []."""
        if self._digest is None:
            if self._status_ms is None:
                self._status_ms = now_ms
            elif self.ticks_diff(now_ms, self._status_ms) >= STATUS_EVERY_MS:
                self._status_ms = now_ms
                return self._changed()
            return []
        if self._heard_ms is None or self.ticks_diff(now_ms, self._heard_ms) >= RETRY_MS:
            self._heard_ms = now_ms
            return self.requests()
        return []

    def resume(self):
        """After ``agent.boot``: the requests that continue a download the reset cut short."""
        self._digest = self.agent.pending_digest
        return self.requests()

    def handle(self, payload, now_ms=None, checked=None):
        """Take one ``fw`` message; the messages to send on ``upd`` (requests, or the new status).
        ``checked``: for an offer, the outcome of its ``update_check.check_offer`` when the caller made it
        (``UpdateAgent.offer``)."""
        offer = uc.offer_in_message(payload)
        if offer is not None:               # checked as a view into the message: its bytes are held once
            payload = None
            if now_ms is not None:
                self._heard_ms = now_ms
            return self._offer(offer, checked)
        try:
            msg = cbor.loads(payload, max_depth=16, max_size=MESSAGE_MAX)
        except (LedgerlinkError, TypeError):
            return []
        if not isinstance(msg, list) or not msg:
            return []
        if now_ms is not None:
            self._heard_ms = now_ms
        try:
            if msg[0] == MSG_OFFER and len(msg) == 2 and isinstance(msg[1], bytes):
                offer, msg = msg[1], None
                return self._offer(offer)
            if (msg[0] == MSG_CHUNK and len(msg) == 4 and msg[1] == self._digest and cbor.is_uint(msg[2])
                    and isinstance(msg[3], bytes)):
                return self._chunk(msg[2], msg[3], now_ms)
        except uc.UpdateRefused as exc:
            self._refused(exc.code, self._digest)
            self._digest = None
            return self._changed()
        return []

    def _offer(self, offer, checked=None):
        if self._digest is not None:
            return []                   # one download at a time; the next offer comes with the next status
        try:
            self.agent.offer(offer, checked=checked)
        except uc.UpdateRefused as exc:
            self._refused(exc.code, uc.offer_digest(offer))
            return self._changed()
        self._digest = self.agent.pending_digest
        return self.requests()

    def _chunk(self, index, data, now_ms):
        if not self.agent.chunk(index, data):
            return []
        if self.agent.next_chunk() is None:
            digest, self._digest = self._digest, None
            try:
                self.agent.finish(now_ms)
            except uc.UpdateRefused as exc:
                self._refused(exc.code, digest)
            return self._changed()
        if self.agent.next_chunk() >= self._asked_upto:
            return self.requests()
        return []


_PUBLISHER_NAMES = ("decode_request", "Release", "UpdatePublisher", "STATEMENTS_KEPT")


def __getattr__(name):
    """The publisher's end (``update_publisher``) and ``encode_status`` (``update_version``), by their names
    here: a device never loads the first, a board makes its status with the second alone."""
    if name in _PUBLISHER_NAMES:
        from ledgerlink.protocol import update_publisher

        return getattr(update_publisher, name)
    if name == "encode_status":
        from ledgerlink.protocol.update_version import encode_status

        return encode_status
    raise AttributeError(name)
