"""Session chain statements (docs/protocol.md, "Session chain statements"), in the portable subset.

A session frame (COSE_Encrypt0) is sealed with a key the gateway can compute too, so on its own it does
not show that the device sent it. A device therefore chains the frames it seals under one session, in
seq order, and signs the chain head with its identity key:

    head_0 = SHA-256("ledgerlink-chain-v1" || session id)
    head_i = SHA-256(head_(i-1) || SHA-256(frame_i))

A chain statement is a signed reading (COSE_Sign1, kid = device id, external_aad = the device's ``up``
topic) whose measurements are exactly {"ll.chain": [session id, first seq, last seq, head]}: it is
stored, acknowledged, anchored and receipted like any reading. Each statement starts a new chain
(head_0 again) at the first session frame after the previous statement's range.

Protects against a gateway (or anyone holding the site key) passing off a session frame as the device's:
a frame is covered only when it is among the frames of ``session id`` with seq in [first, last] whose
hashes, in seq order, give the head the device signed. A forged frame, a dropped or reordered frame, or a
frame of another session in the range gives another head. Tested in tests/protocol/test_session_chain.py
(hypothesis on the encoder and decoder, forged, dropped and reordered frames),
tests/gateway/test_session_chain.py (the gateway's check against its store, receipts saying whether a
reading is covered) and tests/micropython/test_session_chain_in_vm.py.
"""

import hashlib

from ledgerlink.protocol.codes import MAX_SEQ  # noqa: F401  (a statement's seqs are 1..MAX_SEQ)

CHAIN_LABEL = b"ledgerlink-chain-v1"
STATEMENT_KEY = "ll.chain"      # the measurement that makes a signed reading a chain statement
SESSION_ID_LEN = 8              # as session_keys.SESSION_ID_LEN, which a board unloads once its session is open
HASH_LEN = 32
MAX_SPAN = 1024                 # last seq - first seq of one statement (the gateway looks up each seq)
EVERY_FRAMES = 64               # a device states its chain after this many session frames,
EVERY_MS = 60000                # or this long after the chain's first frame (also with no frame since), and when the session changes


def _sha256(data):
    return hashlib.sha256(data).digest()


def start(session_id):
    """head_0 of a chain over frames of ``session_id``."""
    return _sha256(CHAIN_LABEL + bytes(session_id))


def link(head, frame_hash):
    """The head after a frame whose SHA-256 is ``frame_hash``."""
    return _sha256(head + frame_hash)


def head_of(session_id, frame_hashes):
    """The head of a chain over ``frame_hashes`` (in seq order)."""
    head = start(session_id)
    for h in frame_hashes:
        head = link(head, h)
    return head


class Chain:
    """A device's chain of one session's frames since its last statement: ``session_id``, ``first``,
    ``last`` (seqs), ``head``, ``count`` of frames and ``started_ms`` (the first frame's time)."""

    def __init__(self, session_id, started_ms):
        self.session_id = bytes(session_id)
        self.head = start(session_id)
        self.first = None
        self.last = None
        self.count = 0
        self.started_ms = started_ms

    def add(self, seq, frame_hash):
        """Chain the next frame sealed under the session (seqs increase)."""
        if self.last is not None and seq <= self.last:
            raise ValueError("chained frames must have increasing seqs")
        if self.first is None:
            self.first = seq
        self.last = seq
        self.head = link(self.head, frame_hash)
        self.count += 1

    def due(self, now_ms):
        """True when a statement of this chain is due (``EVERY_FRAMES`` frames or ``EVERY_MS`` old)."""
        return self.count >= EVERY_FRAMES or (self.count > 0 and now_ms - self.started_ms >= EVERY_MS)

    def measurements(self):
        """The measurements of the chain's statement reading."""
        if self.count == 0:
            raise ValueError("an empty chain has no statement")
        return {STATEMENT_KEY: [self.session_id, self.first, self.last, self.head]}


class Chains:
    """A device's chains not yet stated: ``current`` (of the session it seals under now) and ``closed``
    ones of earlier sessions (at most ``CLOSED_MAX``; older ones are dropped, their frames uncovered)."""

    CLOSED_MAX = 4

    def __init__(self):
        self.current = None
        self.closed = []

    def add(self, session_id, seq, frame_hash, time_ms):
        """Chain a frame sealed under ``session_id``; a frame of another session closes the current chain."""
        chain = self.current
        if chain is not None and chain.session_id != session_id:
            self.closed.append(chain)
            while len(self.closed) > self.CLOSED_MAX:
                self.closed.pop(0)
            chain = None
        if chain is None:
            chain = self.current = Chain(session_id, time_ms)
        chain.add(seq, frame_hash)

    def due(self, now_ms):
        """True when a statement is due: a closed chain, or the current one is long or old (``Chain.due``)."""
        return len(self.closed) > 0 or (self.current is not None and self.current.due(now_ms))

    def take(self, now_ms, close=False):
        """The next chain to state (then done with: the next frame starts a new chain), or None. ``close``:
        the current chain even when not due (its session ends)."""
        if self.closed:
            return self.closed.pop(0)
        chain = self.current
        if chain is not None and chain.count and (close or chain.due(now_ms)):
            self.current = None
            return chain
        return None


_CHECK = ("Statement", "parse", "decode", "verify", "session_frame", "covered")


def __getattr__(name):
    """The statement checks (``session_chain_check``, what a gateway does with statements), loaded when
    first named: a board only chains its frames and states them."""
    if name in _CHECK:
        from ledgerlink.protocol import session_chain_check

        value = globals()[name] = getattr(session_chain_check, name)     # named directly from now on
        return value
    raise AttributeError(name)
