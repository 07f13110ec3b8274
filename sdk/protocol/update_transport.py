"""Updates over MQTT (docs/protocol.md, "Updates"): the device's status and chunk requests, the publisher's
offers and chunks, and both ends' logic without I/O.

Topics, under the device's own prefix ``ll/<site>/dev/<device-id>/``: the device sends ``upd``
(``update-request``: its status, or a request for chunks) and receives ``fw`` (``update-message``: an
offer, or a chunk); the broker lets only the device send on its ``upd`` and only the site's gateway on
its ``fw``. Nothing here is trusted by the device: every offer goes through ``update_check`` and every
payload through the digest of its signed manifest (``update_agent``).

``UpdateClient`` (device): ``status()`` at each start and after each change; ``handle(payload)`` for
each ``fw`` message, returning the requests to send. ``UpdatePublisher`` (gateway side): the releases
it serves (``add``), the device's status (``status_of``), and the answers to each request.
"""

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import update_check as uc
from ledgerlink.protocol.update_check import MESSAGE_MAX, MSG_OFFER
from ledgerlink.protocol.update_version import MSG_STATUS, due_statements, encode_status

UP_LEAF = "upd"                 # device -> publisher
DOWN_LEAF = "fw"                # publisher -> device
MSG_CHUNKS = 2                  # [2, manifest-digest, first chunk, count]
MSG_CHUNK = 2                   # [2, manifest-digest, index, bytes]
CHUNK_WINDOW = 4                # chunks asked for at a time (a board holds one at a time)
RETRY_MS = 5000                 # a download with no chunk for this long asks again
STATUS_EVERY_MS = 600000        # an idle device repeats its status this often (a restarted service hears it)


REFUSALS_KEPT = 4
STATEMENTS_KEPT = 256           # version statements the publisher holds for relaying


def decode_request(payload):
    """(MSG_STATUS, status map) or (MSG_CHUNKS, (digest, first, count)); InvalidMessage/DecodeError otherwise."""
    from ledgerlink.core.errors import InvalidMessage

    msg = cbor.loads(bytes(payload), max_depth=6, max_size=MESSAGE_MAX)
    if isinstance(msg, list) and len(msg) == 2 and msg[0] == MSG_STATUS and isinstance(msg[1], dict):
        status = msg[1]
        if not isinstance(status.get(1), str) or not isinstance(status.get(2), dict):
            raise InvalidMessage("update-status needs a class and a map of running components")
        return MSG_STATUS, status
    if (isinstance(msg, list) and len(msg) == 4 and msg[0] == MSG_CHUNKS and isinstance(msg[1], bytes)
            and len(msg[1]) == 32 and cbor.is_uint(msg[2]) and cbor.is_uint(msg[3]) and 1 <= msg[3] <= CHUNK_WINDOW):
        return MSG_CHUNKS, (msg[1], msg[2], msg[3])
    raise InvalidMessage("not an update-request")


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
        running = self.agent.running()
        return encode_status(self.agent.device_class, running, self.refusals, self.statements(running))

    def statements(self, running):
        """{component: version-statement} of the versions in ``running`` not stated yet (all at the first
        report, the new one after an install); signed only then, so a status repeat costs no signature."""
        if self.signer is None:
            return None
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


class Release:
    """A release the publisher serves: its offer, and its payload as bytes or as the path of a file (read a
    chunk at a time)."""

    def __init__(self, offer, payload=None, path=None):
        from ledgerlink.protocol import update_manifest

        self.offer = bytes(offer)
        self.payload = payload
        self.path = path
        signed = update_manifest.Signed(cbor.loads(self.offer, max_depth=14)[1])
        self.digest = signed.digest
        self.manifest = signed.manifest

    def chunk(self, index):
        size = self.manifest.chunk_size
        if self.path is None:
            return self.payload[index * size:(index + 1) * size]
        with open(self.path, "rb") as f:
            f.seek(index * size)
            return f.read(size)


class UpdatePublisher:
    """The gateway's end: offers each device the newest release of its class above what it runs, and
    serves chunks of a release on request. Holds no secret; every device checks what it gets."""

    def __init__(self, offer_of=None):
        self.releases = {}              # manifest digest -> Release
        self.statuses = {}              # device id -> last update-status
        self.statements = []            # [device id, version-statement] heard and not yet taken (``take_statements``)
        self.offer_of = offer_of or (lambda release: release.offer)   # the offer to send, or None: not now
        self._sent = {}                 # device id -> the last offer sent to it

    def add(self, release):
        self.releases[release.digest] = release

    def latest(self, device_class, component):
        best = None
        for r in self.releases.values():
            m = r.manifest
            if m.device_class == device_class and m.component == component and (
                    best is None or m.sequence > best.manifest.sequence):
                best = r
        return best

    def take_statements(self):
        """The version statements heard since the last call, [[device id, statement]], oldest first."""
        out, self.statements = self.statements, []
        return out

    def status_of(self, device):
        """The last status a device sent (its running versions), or None."""
        return self.statuses.get(device)

    def handle(self, device, payload):
        """The ``fw`` messages that answer one ``upd`` message of ``device``; [] for a bad message."""
        try:
            kind, body = decode_request(payload)
        except (LedgerlinkError, TypeError):
            return []
        if kind == MSG_STATUS:
            self.statuses[device] = body
            stated = body.get(4)
            if isinstance(stated, dict):
                self.statements.extend([device, st] for st in stated.values() if isinstance(st, bytes))
                self.statements = self.statements[-STATEMENTS_KEPT:]
            refused = body.get(3)
            refused = [r for r in refused if isinstance(r, list) and len(r) == 2] if isinstance(refused, list) else []
            stale = [r[1] for r in refused if r[0] == uc.UPDATE_STALE_PROOF]
            refused = [r[1] for r in refused if r[0] != uc.UPDATE_STALE_PROOF]
            for component in (1, 2, 3):
                r = self.latest(body[1], component)
                running = body[2].get(component)
                seq = running[0] if isinstance(running, list) and running and cbor.is_uint(running[0]) else 0
                if r is not None and r.manifest.sequence > seq and r.digest not in refused:
                    offer = self.offer_of(r)
                    # proofs refused as too old: offered again only once re-proved (other proofs)
                    if offer is not None and not (r.digest in stale and self._sent.get(device) == offer):
                        self._sent[device] = offer
                        return [cbor.dumps([MSG_OFFER, offer])]
            return []
        digest, first, count = body
        r = self.releases.get(digest)
        if r is None:
            return []
        return [cbor.dumps([MSG_CHUNK, digest, index, r.chunk(index)])
                for index in range(first, min(first + count, r.manifest.chunks))]
