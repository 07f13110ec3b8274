"""ECQV session opening and session records of ``DeviceProtocol`` (docs/protocol.md, "Sessions").

Loaded when a session is requested, checked or restored (``DeviceProtocol`` calls these with itself):
a signed-mode board never loads it, and the board client unloads it, with the ECQV code, once a session
is open. ``encode_session``, ``decode_session`` and ``PendingSession`` are also named by
``device_protocol``. What is protected against and how it is tested: ``device_protocol`` (nonce reuse
across resets, forged or replayed session responses).
"""

from ledgerlink.core import cbor, cose, p256
from ledgerlink.core.errors import InvalidMessage, LedgerlinkError
from ledgerlink.protocol.codes import MAX_SEQ, NONCE_LEN
from ledgerlink.protocol.device_protocol import (SESSION_RECORD_VERSION, DeviceError, Ignored, OutFrame, Session,
                                                 SessionOpened, _checked, _forget_on_boards, _is_hash, _unchecked)


class PendingSession:
    """An open session request: the ECQV secret k_U, the nonce, the time and the request frame hash."""

    def __init__(self, secret, nonce, time_ms, frame_hash=None):
        self.secret = secret
        self.nonce = nonce
        self.time_ms = time_ms
        self.frame_hash = frame_hash


def encode_session(session):
    """Bytes to keep a session across resets: cbor([2, cert, key, base-iv, gateway-id, mark]) + 4-byte check."""
    if not cbor.is_uint(session.mark) or session.mark > MAX_SEQ:
        raise DeviceError("the session has no counter mark: it cannot be kept")
    k = session.keys
    return _checked(cbor.dumps([SESSION_RECORD_VERSION, session.cert, k.key, k.base_iv, session.gateway_id,
                                session.mark]))


def decode_session(data, device_id):
    """The Session stored by ``encode_session`` for ``device_id``; raises DecodeError/InvalidMessage.

    The certificate must name ``device_id`` and be a session certificate; the session id is
    recomputed from it, so a record cannot pair keys with another certificate's id. Records of
    version 1 (no counter mark) are refused.
    """
    from ledgerlink.core import ecqv, session_keys   # sessions only: a signed-mode board never loads them

    obj = cbor.loads(_unchecked(data, "session record"), max_depth=4, max_size=1024)
    if not isinstance(obj, list) or len(obj) != 6 or obj[0] != SESSION_RECORD_VERSION:
        raise InvalidMessage("session record must be [2, cert, key, base-iv, gateway-id, mark]")
    cert, key, base_iv, gateway_id, mark = obj[1], obj[2], obj[3], obj[4], obj[5]
    if (not isinstance(key, bytes) or len(key) != session_keys.KEY_LEN or not isinstance(base_iv, bytes)
            or len(base_iv) != session_keys.IV_LEN or not isinstance(gateway_id, bytes)
            or not 0 < len(gateway_id) <= 64 or not cbor.is_uint(mark) or mark > MAX_SEQ):
        raise InvalidMessage("session record fields have the wrong sizes")
    parsed = ecqv.decode_cert(cert)
    if parsed.subject != device_id or parsed.usage != ecqv.USAGE_SESSION:
        raise InvalidMessage("session record is not a session of this device")
    keys = session_keys.SessionKeys(key, base_iv, session_keys.session_id(cert))
    return Session(keys, gateway_id, parsed.valid_until, cert, mark)


def request(device, time_ms):
    """Start an ECQV session request; a newer request replaces a pending one."""
    from ledgerlink.core import ecqv

    priv = device._identity()
    secret, point = ecqv.create_request(device.rng)
    nonce = device.rng(NONCE_LEN)
    topic = device.topic("session")
    payload = cbor.dumps({1: device.device_id, 2: point, 3: nonce, 4: int(time_ms)})
    frame = cose.sign1(payload, priv, device.device_id, topic.encode(), device.crypto)
    out = OutFrame(topic, frame)
    device._pending_session = PendingSession(secret, nonce, int(time_ms), out.frame_hash)
    return out


def check_response(device, resp, now_ms):
    """Check a ``session-response`` map against the pending request; return (Session, cert-tx or None).

    Raises InvalidMessage for a malformed or mismatched response, InvalidCertificate (or another
    LedgerlinkError) when the certificate or the reconstructed key does not check, DeviceError when
    nothing is pending or no CA key is configured. The pending request stays pending on failure.
    """
    pending = device._pending_session
    if pending is None:
        raise DeviceError("no session request is pending")
    if device.ca_public is None:
        raise DeviceError("no fog CA key configured: sessions cannot be checked")
    if not isinstance(resp, dict):
        raise InvalidMessage("session response must be a map")
    for label in resp:
        if label not in (1, 2, 3, 4, 5, 6):
            raise InvalidMessage("session response has an unknown field %r" % (label,))
    for label in (1, 2, 3, 4, 5):
        if label not in resp:
            raise InvalidMessage("session response lacks field %d" % label)
    from ledgerlink.core import ecqv, session_keys

    nonce, cert, r, q_gw, gw_id = resp[1], resp[2], resp[3], resp[4], resp[5]
    cert_tx = resp.get(6)
    if nonce != pending.nonce:
        raise InvalidMessage("session response for another request")
    if (not isinstance(cert, bytes) or not isinstance(r, bytes) or len(r) != 32 or not isinstance(q_gw, bytes)
            or not isinstance(gw_id, bytes) or not 0 < len(gw_id) <= 64
            or (cert_tx is not None and not _is_hash(cert_tx))):
        raise InvalidMessage("malformed session response")
    parsed = ecqv.decode_cert(cert)
    if parsed.subject != device.device_id:
        raise InvalidMessage("session certificate names another device")
    if parsed.usage != ecqv.USAGE_SESSION:
        raise InvalidMessage("certificate is not a session certificate")
    if parsed.issuer != gw_id:
        raise InvalidMessage("session certificate issued by another gateway")
    if parsed.peer is None or p256.decode_point(q_gw) != parsed.peer:
        raise InvalidMessage("gateway key is not the one the certificate names")
    if not parsed.valid_at(now_ms // 1000):
        raise InvalidMessage("session certificate is not valid now")
    valid_until = parsed.valid_until
    d_u, _ = ecqv.reconstruct(pending.secret, cert, r, device.ca_public)
    parsed = ecqv = None            # a board forgets ECQV before the ECDH of the key derivation
    _forget_on_boards(("ledgerlink.core", "ecqv"))
    keys = session_keys.derive(d_u, q_gw, cert, device.device_id, gw_id, device.crypto)
    return Session(keys, gw_id, valid_until, cert), cert_tx


def handle_response(device, resp, now_ms):
    """Reconstruct the session key from a ``session-response`` and take the session; never raises
    for bad input (returns Ignored with the reason)."""
    if device._pending_session is None:
        return Ignored("no session request is pending")
    try:
        session, cert_tx = device.check_session_response(resp, now_ms)
    except DeviceError:
        raise
    except LedgerlinkError as exc:
        return Ignored("session response refused: %s: %s" % (type(exc).__name__, exc))
    device._pending_session = None
    session.mark = getattr(device.counter, "last", None)
    hold = getattr(device.counter, "hold", None)
    if hold is not None:
        hold()                      # the mark is stored: a restart keeps the counter and the session
    device.session = session
    return SessionOpened(session.keys.session_id, session.gateway_id, session.valid_until_s, cert_tx)


def restore(device, record, now_ms):
    """Take the session kept by ``session_record`` and return it; raise a LedgerlinkError instead when
    it may not be used: damaged or not this device's (InvalidMessage, DecodeError), the counter was
    lost at start or is below the record's mark (its numbers, and so its nonces, could repeat), or the
    session has expired (DeviceError). The caller deletes a refused record."""
    session = decode_session(record, device.device_id)
    if getattr(device.counter, "lost", True):
        raise DeviceError("the sequence counter was lost: the stored session cannot be used again")
    if device.counter.last < session.mark:
        raise DeviceError("the sequence counter (%d) is below the mark of the stored session (%d)"
                          % (device.counter.last, session.mark))
    if session.valid_until_s is not None and now_ms // 1000 >= session.valid_until_s:
        raise DeviceError("the stored session has expired")
    device.session = session
    return session
