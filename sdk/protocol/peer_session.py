"""Device-to-device sessions: query and information packets between two registered devices.

Portable (CPython and MicroPython). docs/protocol.md, "Peer sessions", has the CDDL. A session is a
SIGMA-style exchange authenticated by the two devices' registered identity keys:

    open   (I -> R)  [1, Sign1_I(open-body), ? early]       open-body   {1: I, 2: R, 3: sid, 4: eI, 5: time}
    accept (R -> I)  [2, Sign1_R(accept-body), ? data]      accept-body {1: R, 2: I, 3: sid, 4: eR, 5: H(open)}
    data   (both)    [3, sid, Encrypt0]

    early       = HKDF(ECDH(eI, R), salt=H(open-sign1), info=cbor([DOMAIN, "early", I, R]), 29)
    i2r, r2i    = HKDF(ECDH(eI, eR), salt=H(open-sign1 || accept-sign1), info=cbor([DOMAIN, dir, I, R]), 29)

(eI, eR fresh ephemeral keys; R the responder's registered key; each 29 bytes = AES-CCM-16-64-128 key
and 13-byte COSE Base IV; the Partial IV is the sender's message counter.) ``early`` is
ephemeral-static, so a query can wait, sealed, for a responder that is offline (only R can read it);
everything after the accept is ephemeral-ephemeral (forward secret).

Protects against: the broker, the gateway and any third device reading or altering packets (AES-CCM
under keys only the two devices derive; each Sign1 binds both ids, the session id and the ephemeral
keys, with its own external_aad so no other ledgerlink signature can stand in for it); a device
claiming another's id (the Sign1 must verify under the key the ledger registered for that id); replay
of data (the counter of each direction must grow) and of an old open (``Responder`` refuses a seen
session id and an open older than ``max_age_ms``). Tested in tests/m2m/test_peer_session.py (tampered,
replayed, wrong-key and reflected frames refused; property tests of the encoders and decoders).
"""

import hashlib

from ledgerlink.core import cbor, cose
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import LedgerlinkError

PEER_DOMAIN = "ledgerlink-peer-v1"
FRAME_OPEN = 1
FRAME_ACCEPT = 2
FRAME_DATA = 3
PACKET_QUERY = 1
PACKET_INFO = 2
PACKET_CLOSE = 3
# info-status
INFO_OK = 0
INFO_UNKNOWN_SUBJECT = 1
INFO_REFUSED = 2
# close-reason
CLOSE_DONE = 0
CLOSE_PEER_BANNED = 1
CLOSE_SELF_BANNED = 2

SESSION_ID_LEN = 16
EPHEMERAL_LEN = 33
ID_LEN = 16
MAX_SUBJECT = 32
MAX_PACKET = 2048           # plaintext of one packet, bytes
MAX_FRAME = 4096            # one frame on a pair topic, bytes
MAX_COUNTER = 0xFFFFFFFF
OKM_LEN = 29
KEY_LEN = 16
DEFAULT_MAX_AGE_MS = 24 * 3600 * 1000   # an open waits at most this long for an offline responder
SEEN_LIMIT = 256                        # session ids a responder remembers


class PeerError(LedgerlinkError):
    """A peer frame or packet that is refused; ``reason`` is a short word for logs and tests."""

    def __init__(self, reason, text):
        LedgerlinkError.__init__(self, "%s: %s" % (reason, text))
        self.reason = reason


def _sha256(data):
    return hashlib.sha256(data).digest()


def pair_topic(site, sender, receiver):
    """The MQTT topic ``sender`` publishes to ``receiver`` on: ll/<site>/pair/<sender hex>/<receiver hex>."""
    return "ll/%s/pair/%s/%s" % (site, bytes(sender).hex(), bytes(receiver).hex())


def inbox_filter(site, own_id):
    """The subscription filter of every pair topic addressed to ``own_id``."""
    return "ll/%s/pair/+/%s" % (site, bytes(own_id).hex())


def parse_pair_topic(topic):
    """(sender, receiver) ids of a pair topic, or None."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "ll" or parts[2] != "pair":
        return None
    try:
        sender, receiver = bytes.fromhex(parts[3]), bytes.fromhex(parts[4])
    except ValueError:
        return None
    if len(sender) != ID_LEN or len(receiver) != ID_LEN:
        return None
    return sender, receiver


# --- packets (the plaintext inside data frames) ------------------------------------------------------

def _check_counter(value, what):
    if not cbor.is_uint(value) or value > MAX_COUNTER:
        raise PeerError("malformed", "%s must be an unsigned integer up to %d" % (what, MAX_COUNTER))
    return value


def encode_query(query_id, subject, args=None):
    """A query packet: ``subject`` (text, 1..32 characters) with optional ``args``."""
    packet = {0: PACKET_QUERY, 1: query_id, 2: subject}
    if args is not None:
        packet[3] = args
    return _encode_packet(packet)


def encode_info(query_id, status, body=None):
    """An information packet answering query ``query_id``: ``status`` (INFO_*) and optional ``body``."""
    packet = {0: PACKET_INFO, 1: query_id, 2: status}
    if body is not None:
        packet[3] = body
    return _encode_packet(packet)


def encode_close(reason):
    return _encode_packet({0: PACKET_CLOSE, 2: reason})


def _encode_packet(packet):
    data = cbor.dumps(packet)
    decode_packet(data)             # what we send, the peer can decode: the same checks
    return data


class Packet:
    """A decoded packet: ``kind`` (PACKET_*), ``query_id``, ``subject`` (query) or ``status`` (info) or
    ``reason`` (close), ``body`` (query args or info body, None when absent)."""

    def __init__(self, kind, query_id=None, subject=None, status=None, body=None, reason=None):
        self.kind = kind
        self.query_id = query_id
        self.subject = subject
        self.status = status
        self.body = body
        self.reason = reason

    def __eq__(self, other):
        return isinstance(other, Packet) and self.__dict__ == other.__dict__

    def __repr__(self):
        return "Packet(%r)" % (self.__dict__,)


_PACKET_KEYS = {PACKET_QUERY: ((0, 1, 2), (3,)), PACKET_INFO: ((0, 1, 2), (3,)), PACKET_CLOSE: ((0, 2), ())}


def decode_packet(data):
    """Decode and check a packet's bytes; PeerError("malformed") for anything else."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_PACKET:
        raise PeerError("malformed", "a packet must be at most %d bytes" % MAX_PACKET)
    try:
        obj = cbor.loads(bytes(data), max_depth=8)
    except LedgerlinkError as exc:
        raise PeerError("malformed", "packet is not CBOR: %s" % exc)
    if not isinstance(obj, dict):
        raise PeerError("malformed", "a packet must be a map")
    kind = obj.get(0)
    keys = _PACKET_KEYS.get(kind) if type(kind) is int else None
    if keys is None:
        raise PeerError("malformed", "unknown packet kind %r" % (kind,))
    for key in obj:
        if key not in keys[0] and key not in keys[1]:
            raise PeerError("malformed", "packet field %r is not defined" % (key,))
    for key in keys[0]:
        if key not in obj:
            raise PeerError("malformed", "packet field %d is missing" % key)
    if kind == PACKET_CLOSE:
        return Packet(kind, reason=_check_counter(obj[2], "close reason"))
    query_id = _check_counter(obj[1], "query id")
    if kind == PACKET_QUERY:
        subject = obj[2]
        if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_SUBJECT:
            raise PeerError("malformed", "query subject must be text of 1 to %d characters" % MAX_SUBJECT)
        return Packet(kind, query_id, subject=subject, body=obj.get(3))
    return Packet(kind, query_id, status=_check_counter(obj[2], "info status"), body=obj.get(3))


# --- frames (what goes over the pair topic) ----------------------------------------------------------

def decode_frame(data):
    """(frame type, fields) of a pair-topic frame; PeerError("malformed") for anything else.

    open / accept: (type, [sign1, early or None]); data: (type, [session id, encrypt0]).
    """
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_FRAME:
        raise PeerError("malformed", "a frame must be at most %d bytes" % MAX_FRAME)
    try:
        obj = cbor.loads(bytes(data), max_depth=8)
    except LedgerlinkError as exc:
        raise PeerError("malformed", "frame is not CBOR: %s" % exc)
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise PeerError("malformed", "a frame must be an array starting with its type")
    kind = obj[0]
    if kind in (FRAME_OPEN, FRAME_ACCEPT):
        if len(obj) not in (2, 3) or not isinstance(obj[1], bytes):
            raise PeerError("malformed", "open/accept must be [type, sign1, ? encrypt0]")
        early = obj[2] if len(obj) == 3 else None
        if early is not None and not isinstance(early, bytes):
            raise PeerError("malformed", "open/accept data must be a byte string")
        return kind, [obj[1], early]
    if kind == FRAME_DATA:
        if len(obj) != 3 or not isinstance(obj[1], bytes) or len(obj[1]) != SESSION_ID_LEN \
                or not isinstance(obj[2], bytes):
            raise PeerError("malformed", "data must be [3, session-id, encrypt0]")
        return kind, [obj[1], obj[2]]
    raise PeerError("malformed", "unknown frame type %d" % kind)


def frame_session_id(data):
    """The session id a frame belongs to (open/accept: read from the signed body, unverified)."""
    kind, fields = decode_frame(data)
    if kind == FRAME_DATA:
        return fields[0]
    return _body(cose.decode_sign1(fields[0]).payload)[3]


def _sign_aad(kind):
    return cbor.dumps([PEER_DOMAIN, "open" if kind == FRAME_OPEN else "accept"])


def _body(payload):
    try:
        body = cbor.loads(payload, max_depth=4)
    except LedgerlinkError as exc:
        raise PeerError("malformed", "signed body is not CBOR: %s" % exc)
    if not isinstance(body, dict) or len(body) != 5 or not all(k in (1, 2, 3, 4, 5) for k in body):
        raise PeerError("malformed", "signed body must have fields 1 to 5")
    for key, size in ((1, ID_LEN), (2, ID_LEN), (3, SESSION_ID_LEN), (4, EPHEMERAL_LEN)):
        if not isinstance(body[key], bytes) or len(body[key]) != size:
            raise PeerError("malformed", "signed body field %d must be %d bytes" % (key, size))
    if not (cbor.is_uint(body[5]) or (isinstance(body[5], bytes) and len(body[5]) == 32)):
        raise PeerError("malformed", "signed body field 5 must be a time or a hash")
    return body


def _keys(crypto, ikm, salt, label, initiator, responder):
    okm = crypto.hkdf(ikm, salt, cbor.dumps([PEER_DOMAIN, label, initiator, responder]), OKM_LEN)
    return okm[:KEY_LEN], okm[KEY_LEN:]


def _piv(counter):
    return counter.to_bytes(4, "big") if counter else b"\x00"


def _nonce_counter(piv):
    return int.from_bytes(piv, "big")


class PeerSession:
    """One session between this device (``own_id``) and ``peer_id``; made by ``initiate`` or
    ``Responder.accept_open``. ``seal`` makes a data frame, ``receive`` checks any frame of the session.

    ``frames``: every frame sent and received, in order (wire bytes), for exchange digests.
    """

    def __init__(self, crypto, own_priv, own_id, peer_id, peer_pub, session_id, initiator):
        self.crypto = crypto
        self._own_priv = own_priv
        self.own_id = own_id
        self.peer_id = peer_id
        self.peer_pub = peer_pub
        self.session_id = session_id
        self.initiator = initiator
        self.state = "opening"
        self._eph_priv = None
        self._open_sign1 = None
        self._send = None               # (key, base_iv) of our direction
        self._recv = None
        self.sent = 0                   # counter of the last data frame sent
        self.received = 0               # counter of the last data frame received
        self.close_reason = None

    @property
    def is_open(self):
        return self.state == "open"

    def _aad(self, direction):
        return cbor.dumps([PEER_DOMAIN, self.session_id, direction])

    def _direction(self, sending):
        return "i2r" if sending == self.initiator else "r2i"

    def _seal_with(self, keys, counter, direction, plaintext):
        return cose.encrypt0(plaintext, keys[0], partial_iv=_piv(counter), base_iv=keys[1],
                             external_aad=self._aad(direction), backend=self.crypto)

    def _open_with(self, keys, direction, frame):
        try:
            msg = cose.decode_encrypt0(frame)
            if msg.partial_iv is None or len(msg.partial_iv) > 4:
                raise PeerError("malformed", "data must carry a Partial IV of 1 to 4 bytes")
            plaintext = cose.decrypt0(frame, keys[0], keys[1], self._aad(direction), self.crypto)
        except PeerError:
            raise
        except LedgerlinkError as exc:
            raise PeerError("tampered", "data does not decrypt: %s" % exc)
        return _nonce_counter(msg.partial_iv), plaintext

    def _set_keys(self, z, accept_sign1):
        salt = _sha256(self._open_sign1 + accept_sign1)
        i, r = (self.own_id, self.peer_id) if self.initiator else (self.peer_id, self.own_id)
        i2r = _keys(self.crypto, z, salt, "i2r", i, r)
        r2i = _keys(self.crypto, z, salt, "r2i", i, r)
        self._send, self._recv = (i2r, r2i) if self.initiator else (r2i, i2r)
        self._eph_priv = None
        self.state = "open"

    def seal(self, plaintext):
        """A data frame carrying ``plaintext`` (a packet) to the peer."""
        if self.state != "open":
            raise PeerError("state", "session is %s" % self.state)
        if self.sent >= MAX_COUNTER:
            raise PeerError("state", "session counter exhausted: open a new session")
        self.sent += 1
        enc = self._seal_with(self._send, self.sent, self._direction(True), plaintext)
        return cbor.dumps([FRAME_DATA, self.session_id, enc])

    def receive(self, frame):
        """Check a frame from the peer; the packet bytes it carries, or None (an accept without data).

        PeerError: "malformed", "tampered" (does not decrypt or verify), "replay" (counter not above the
        last), "state" (not expected now), "closed".
        """
        if self.state == "closed":
            raise PeerError("closed", "session is closed (%s)" % self.close_reason)
        kind, fields = decode_frame(frame)
        if kind == FRAME_ACCEPT:
            return self._receive_accept(fields)
        if kind != FRAME_DATA or self.state != "open":
            raise PeerError("state", "frame type %d not expected in state %s" % (kind, self.state))
        if fields[0] != self.session_id:
            raise PeerError("state", "frame of another session")
        counter, plaintext = self._open_with(self._recv, self._direction(False), fields[1])
        if counter <= self.received:
            raise PeerError("replay", "counter %d is not above %d" % (counter, self.received))
        self.received = counter
        return plaintext

    def _receive_accept(self, fields):
        if not self.initiator or self.state != "opening":
            raise PeerError("state", "accept not expected")
        sign1, data = fields
        try:
            payload = cose.verify_sign1(sign1, self.peer_pub, _sign_aad(FRAME_ACCEPT), self.crypto)
        except LedgerlinkError as exc:
            raise PeerError("tampered", "accept does not verify under the peer's registered key: %s" % exc)
        body = _body(payload)
        if body[1] != self.peer_id or body[2] != self.own_id or body[3] != self.session_id \
                or body[5] != _sha256(self._open_sign1):
            raise PeerError("tampered", "accept is not for this open")
        self._set_keys(self.crypto.ecdh(self._eph_priv, body[4]), sign1)
        if data is None:
            return None
        counter, plaintext = self._open_with(self._recv, self._direction(False), data)
        if counter != 0:
            raise PeerError("malformed", "accept data must have counter 0")
        return plaintext

    def close(self, reason=CLOSE_DONE):
        """Forget the keys; later frames are refused. A close packet to send first: seal(encode_close(..))."""
        self.state = "closed"
        self.close_reason = reason
        self._send = self._recv = self._eph_priv = None


def initiate(own_priv, own_id, peer_id, peer_pub, time_ms, early=None, backend=None, rng=None):
    """Open a session to ``peer_id`` whose registered key is ``peer_pub`` (proven by the caller).

    Returns (session, open frame). ``early``: a packet sealed to the responder's registered key, read
    by it even when it receives the open much later (a queued query).
    """
    crypto = get_backend(backend)
    session_id = (rng or _urandom)(SESSION_ID_LEN)
    eph = crypto.generate_private_key(rng)
    session = PeerSession(crypto, own_priv, bytes(own_id), bytes(peer_id), bytes(peer_pub), session_id, True)
    session._eph_priv = eph
    body = {1: session.own_id, 2: session.peer_id, 3: session_id, 4: crypto.public_key(eph, True), 5: time_ms}
    sign1 = cose.sign1(cbor.dumps(body), own_priv, session.own_id, _sign_aad(FRAME_OPEN), crypto)
    session._open_sign1 = sign1
    frame = [FRAME_OPEN, sign1]
    if early is not None:
        z = crypto.ecdh(eph, session.peer_pub)
        keys = _keys(crypto, z, _sha256(sign1), "early", session.own_id, session.peer_id)
        frame.append(session._seal_with(keys, 0, "early", early))
    return session, cbor.dumps(frame)


def _urandom(n):
    import os

    return os.urandom(n)


class Responder:
    """The responder side of this device: checks opens addressed to it and remembers their session ids.

    ``peer_key(device_id)`` returns the registered public key of an active device, proven by the caller
    (discovery), or None: the open is then refused as "unregistered".
    """

    def __init__(self, own_priv, own_id, peer_key, max_age_ms=DEFAULT_MAX_AGE_MS, backend=None):
        self.crypto = get_backend(backend)
        self._own_priv = own_priv
        self.own_id = bytes(own_id)
        self.peer_key = peer_key
        self.max_age_ms = max_age_ms
        self._seen = []

    def accept_open(self, frame, now_ms, reply=None, rng=None):
        """Check an open frame. Returns (session, early packet bytes or None, accept frame).

        ``reply(early) -> packet or None``: the packet the accept carries (the answer to an early query).
        PeerError: "unregistered", "tampered", "replay", "expired", "malformed", "state".
        """
        kind, fields = decode_frame(frame)
        if kind != FRAME_OPEN:
            raise PeerError("state", "not an open")
        sign1, early = fields
        try:
            unverified = cose.decode_sign1(sign1)
        except LedgerlinkError as exc:
            raise PeerError("malformed", "open is not a COSE_Sign1: %s" % exc)
        claimed = _body(unverified.payload)
        if claimed[2] != self.own_id:
            raise PeerError("state", "open is addressed to another device")
        if claimed[1] == self.own_id:
            raise PeerError("state", "open from this device itself")
        peer_pub = self.peer_key(claimed[1])
        if peer_pub is None:
            raise PeerError("unregistered", "device %s is not a registered, active device" % claimed[1].hex())
        try:
            cose.verify_sign1(sign1, peer_pub, _sign_aad(FRAME_OPEN), self.crypto)
        except LedgerlinkError as exc:
            raise PeerError("tampered", "open does not verify under the sender's registered key: %s" % exc)
        body = claimed
        if not cbor.is_uint(body[5]):
            raise PeerError("malformed", "open time must be an unsigned integer")
        if body[5] + self.max_age_ms < now_ms:
            raise PeerError("expired", "open is older than %d ms" % self.max_age_ms)
        if body[3] in self._seen:
            raise PeerError("replay", "session id already seen")
        self._seen.append(body[3])
        if len(self._seen) > SEEN_LIMIT:
            self._seen.pop(0)
        session = PeerSession(self.crypto, self._own_priv, self.own_id, body[1], peer_pub, body[3], False)
        session._open_sign1 = sign1
        early_plain = None
        if early is not None:
            z = self.crypto.ecdh(self._own_priv, body[4])
            keys = _keys(self.crypto, z, _sha256(sign1), "early", body[1], self.own_id)
            counter, early_plain = session._open_with(keys, "early", early)
            if counter != 0:
                raise PeerError("malformed", "early data must have counter 0")
        crypto = self.crypto
        eph = crypto.generate_private_key(rng)
        accept = {1: self.own_id, 2: body[1], 3: body[3], 4: crypto.public_key(eph, True), 5: _sha256(sign1)}
        accept_sign1 = cose.sign1(cbor.dumps(accept), self._own_priv, self.own_id, _sign_aad(FRAME_ACCEPT), crypto)
        session._set_keys(crypto.ecdh(eph, body[4]), accept_sign1)
        out = [FRAME_ACCEPT, accept_sign1]
        answer = reply(early_plain) if reply is not None else None
        if answer is not None:
            out.append(session._seal_with(session._send, 0, session._direction(True), answer))
        return session, early_plain, cbor.dumps(out)


def exchange_digest(session_id, query_frame, info_frame):
    """SHA-256 of one query/information exchange as both devices saw it on the wire (ciphertext only):
    the digest a communication record holds. It shows the exchange took place, not what it said."""
    h = hashlib.sha256(cbor.head(4, 4) + cbor.dumps(PEER_DOMAIN))     # hashed part by part: no copy of
    for part in (session_id, query_frame, info_frame):                  # the frames on a board's heap
        h.update(cbor.head(2, len(part)))
        h.update(part)
    return h.digest()

