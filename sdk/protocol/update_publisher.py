"""Updates over MQTT, the publisher's end (docs/protocol.md, "Updates"): the releases an update service serves,
the status each device last sent, the offers and chunks that answer its requests. Holds no secret; every
device checks what it gets (``update_check``, ``update_agent``). Topics and messages: ``update_transport``.
"""

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import update_check as uc
from ledgerlink.protocol.update_check import MESSAGE_MAX, MSG_OFFER
from ledgerlink.protocol.update_transport import CHUNK_WINDOW, MSG_CHUNK, MSG_CHUNKS
from ledgerlink.protocol.update_version import MSG_STATUS

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
