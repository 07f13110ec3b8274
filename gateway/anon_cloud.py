"""The cloud side of anonymous sessions (docs/protocol.md, "Anonymous sessions"): the escrow key holder.

``AnonCloud.on_grant`` takes a fog's signed anon-grant (sent only after the fog's and the ledger's checks
passed) and opens the session key sealed to the escrow key; ``open_data`` opens what the device sends
under that session (replays and other sessions' frames refused); ``deanonymize`` opens the device's escrow
(sealed under the request's C1 to the same key) and returns the device id, after checking the device's
identity signature over (C1, anon-id) with the key the registry holds for that id, so a device cannot
name another as itself.

Protects against: a session key or a device id reaching anyone without the escrow private key (the
fog, the broker and ledger readers see only ECIES ciphertexts); grants not made by a known fog (COSE
signature with a fixed external_aad); a framed device (the identity signature inside the escrow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ledgerlink.core import cose, ecies
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidMessage, InvalidSignature
from ledgerlink.protocol import anon_wire as aw


@dataclass
class CloudSession:
    """A session the cloud holds: the key shared with the device and what it may de-anonymize with."""

    session_id: bytes
    key: bytes
    base_iv: bytes
    valid_until_s: int
    spend_tx: bytes
    fog_id: bytes
    c1: bytes
    escrow: tuple
    anon_id: bytes
    last_seq: int = 0


class AnonCloud:
    """``escrow_private``: the cloud's escrow key; ``fog_keys``: {fog device id: its identity public key};
    ``device_key(device_id)``: the registered identity key of a device (None if unknown)."""

    def __init__(self, escrow_private: bytes, fog_keys: dict[bytes, bytes],
                 device_key: Callable[[bytes], bytes | None], backend: Any = None) -> None:
        self._escrow = escrow_private
        self.fog_keys = dict(fog_keys)
        self.device_key = device_key
        self.crypto = get_backend(backend)
        self.sessions: dict[bytes, CloudSession] = {}

    @property
    def public_key(self) -> bytes:
        return self.crypto.public_key(self._escrow, True)

    def on_grant(self, frame: bytes) -> CloudSession:
        """Check and open an anon-grant; raises a LedgerlinkError when it is not a known fog's or does not open."""
        msg = cose.decode_sign1(frame)
        fog_key = self.fog_keys.get(msg.kid or b"")
        if fog_key is None:
            raise InvalidMessage("anon-grant from an unknown fog")
        cose.verify_sign1(frame, fog_key, aw.GRANT_AAD, self.crypto)
        session_id, box, c1, escrow, spend_tx, valid_until_s, anon_id = aw.decode_grant_payload(msg.payload)
        material = ecies.decrypt(self._escrow, box[0], box[1], box[2], aw.GRANT_INFO, session_id, self.crypto)
        if len(material) != aw.SESSION_KEY_LEN + aw.SESSION_IV_LEN:
            raise InvalidMessage("anon-grant key material has the wrong size")
        session = CloudSession(session_id, material[:aw.SESSION_KEY_LEN], material[aw.SESSION_KEY_LEN:],
                               valid_until_s, spend_tx, msg.kid, c1, escrow, anon_id)
        self.sessions[session_id] = session
        return session

    def deanonymize(self, session: CloudSession) -> bytes:
        """The device id behind ``session``; InvalidSignature when the escrow's identity signature over
        (C1, anon-id) does not check with that device's registered key; InvalidTag when it does not open."""
        keys = ecies.derive(ecies.shared(self._escrow, session.c1, self.crypto), session.c1, aw.ESCROW_INFO,
                            self.crypto)
        device, signature = aw.decode_escrow_plain(ecies.open_sealed(keys, session.escrow[0], session.escrow[1],
                                                                     session.c1, self.crypto))
        key = self.device_key(device)
        if key is None or not self.crypto.verify(key, aw.escrow_message(session.c1, session.anon_id), signature):
            raise InvalidSignature("the escrow's identity signature does not check")
        return device

    def open_data(self, topic: str, frame: bytes, now_ms: int) -> tuple[bytes, int, bytes]:
        """(session id, seq, plaintext) of a device's anon-data frame; InvalidMessage for an unknown or expired
        session, a topic not the session's, or a sequence number not above the last one taken (a replay);
        InvalidTag when anything was altered. Only a session this cloud holds a grant for opens."""
        msg = cose.decode_encrypt0(frame)
        session = self.sessions.get(msg.kid or b"")
        if session is None:
            raise InvalidMessage("no granted session with this id")
        if not topic.endswith("/anon/up/" + session.session_id.hex()):
            raise InvalidMessage("frame is not on its session's topic")
        if now_ms // 1000 >= session.valid_until_s:
            raise InvalidMessage("the session has expired")
        seq = int.from_bytes(msg.partial_iv or b"", "big")
        if msg.partial_iv is None or len(msg.partial_iv) != 4 or seq <= session.last_seq:
            raise InvalidMessage("sequence number %d is not above the session's last (%d)" % (seq, session.last_seq))
        plaintext = cose.decrypt0(frame, session.key, session.base_iv, topic.encode(), self.crypto)
        session.last_seq = seq
        return session.session_id, seq, plaintext
