"""Checking session chain statements (a gateway's side of ``session_chain``): decoding a statement and
finding the frames it covers. ``session_chain`` names these too and loads this module when one is first
used, so a board, which only chains its frames and states them, never holds them. What is protected
against and how it is tested: ``session_chain``.
"""

from ledgerlink.core import cbor, cose
from ledgerlink.core.errors import InvalidMessage, InvalidProof
from ledgerlink.protocol.codes import MAX_SEQ
from ledgerlink.protocol.session_chain import HASH_LEN, MAX_SPAN, SESSION_ID_LEN, STATEMENT_KEY, _sha256, head_of


class Statement:
    """A decoded chain statement: ``device_id``, ``seq`` and ``time_ms`` of its reading, ``session_id``,
    ``first``, ``last`` and ``head``."""

    def __init__(self, device_id, seq, time_ms, session_id, first, last, head):
        self.device_id = device_id
        self.seq = seq
        self.time_ms = time_ms
        self.session_id = session_id
        self.first = first
        self.last = last
        self.head = head

    def __repr__(self):
        return "Statement(%s, %d..%d)" % (self.session_id.hex(), self.first, self.last)


def parse(measurements):
    """(session id, first, last, head) of a statement's measurements; InvalidMessage when malformed."""
    if not isinstance(measurements, dict) or len(measurements) != 1:
        raise InvalidMessage("a chain statement's measurements are exactly {%r: [...]}" % STATEMENT_KEY)
    body = measurements.get(STATEMENT_KEY)
    if not isinstance(body, list) or len(body) != 4:
        raise InvalidMessage("chain statement must be [session id, first seq, last seq, head]")
    sid, first, last, head = body
    if not isinstance(sid, bytes) or len(sid) != SESSION_ID_LEN:
        raise InvalidMessage("chain statement session id must be %d bytes" % SESSION_ID_LEN)
    if not isinstance(head, bytes) or len(head) != HASH_LEN:
        raise InvalidMessage("chain statement head must be %d bytes" % HASH_LEN)
    if not cbor.is_uint(first) or not cbor.is_uint(last) or not 1 <= first <= last <= MAX_SEQ:
        raise InvalidMessage("chain statement seqs must satisfy 1 <= first <= last < 2^32")
    if last - first > MAX_SPAN:
        raise InvalidMessage("chain statement spans more than %d seqs" % MAX_SPAN)
    return sid, first, last, head


def decode(reading):
    """A ``Statement`` from the CBOR of a statement reading (``ledgerlink.protocol.reading``, which a
    device does not load)."""
    from ledgerlink.protocol import reading as readings

    dev, seq, t, meas = readings.parse(bytes(reading))
    sid, first, last, head = parse(meas)
    if first <= seq <= last:
        raise InvalidMessage("a chain statement cannot cover its own seq")
    return Statement(dev, seq, t, sid, first, last, head)


def verify(frame, public_key, topic, backend=None):
    """Check a statement frame (COSE_Sign1 by the device key ``public_key``, bound to the ``up`` ``topic``);
    return its ``Statement``. InvalidSignature, InvalidMessage or DecodeError when it does not check."""
    payload = cose.verify_sign1(frame, public_key, topic.encode(), backend)
    return decode(payload)


def session_frame(frame):
    """(session id, seq) of a session frame (COSE_Encrypt0 with a Partial IV), or None for any other frame."""
    try:
        msg = cose.decode_encrypt0(bytes(frame))
    except Exception:   # noqa: BLE001 - not a session frame
        return None
    if msg.kid is None or len(msg.kid) != SESSION_ID_LEN or msg.partial_iv is None:
        return None
    return msg.kid, int.from_bytes(msg.partial_iv, "big")


def covered(statement, frames):
    """The SHA-256 of each frame the statement covers: ``frames`` are (seq, frame bytes) of the device,
    e.g. all it stored with seq in [first, last]; those of the statement's session in that range, in seq
    order, must give its head. InvalidProof when they do not (a frame forged, dropped or reordered)."""
    chained = []
    for seq, frame in frames:
        if not statement.first <= seq <= statement.last:
            continue
        found = session_frame(frame)
        if found is None or found[0] != statement.session_id:
            continue
        if found[1] != seq:
            raise InvalidProof("frame stored at seq %d carries Partial IV %d" % (seq, found[1]))
        chained.append((seq, _sha256(bytes(frame))))
    chained.sort()
    for i in range(1, len(chained)):
        if chained[i][0] == chained[i - 1][0]:
            raise InvalidProof("two frames of the session at seq %d" % chained[i][0])
    hashes = [h for _, h in chained]
    if not chained or chained[0][0] != statement.first or chained[-1][0] != statement.last:
        raise InvalidProof("the frames of the session do not span the statement's range %d..%d"
                           % (statement.first, statement.last))
    if head_of(statement.session_id, hashes) != statement.head:
        raise InvalidProof("the frames of session %s in %d..%d do not give the signed head"
                           % (statement.session_id.hex(), statement.first, statement.last))
    return hashes
