"""Refusals of a device's frames (docs/protocol.md, ``refusal``): which frame a ``refusal`` reply names, and
what a ``replay`` refusal does to the counter and the session. ``DeviceProtocol.handle_reply`` loads this
module for each refusal and a board forgets it after, so the heap holds none of it while frames are taken.

Protects against nonce reuse after a counter fell behind the gateway's window: a ``replay`` refusal of a
frame sealed under the current session drops the session and moves the counter ahead (a step that
doubles per refusal, at most ``REPLAY_SKIP_MAX``, reset by a valid receipt). Tested in
tests/device/test_counter_faults.py and tests/device/test_core.py.
"""

from ledgerlink.core import cbor
from ledgerlink.protocol.device_protocol import (MAX_SEQ, REFUSAL_REPLAY, REPLAY_SKIP_MAX, Ignored, Refused,
                                                 _is_hash)


def refusal(device, msg):
    """The Refused (or Ignored) result of a decoded ``refusal`` reply."""
    frame_hash, code, text = msg.get(1), msg.get(2), msg.get(3)
    if not _is_hash(frame_hash) or not cbor.is_uint(code) or not isinstance(text, str):
        return Ignored("malformed refusal")
    pending = device._pending_session
    if pending is not None and pending.frame_hash == frame_hash:
        device._pending_session = None
        return Refused(frame_hash, code, text, None)
    if frame_hash == device._registration:
        device._registration = None
        return Refused(frame_hash, code, text, None)
    seq = None
    for s in device.sent:
        if device.sent[s] == frame_hash:
            seq = s
            break
    if seq is None:
        return Ignored("refusal of a frame this device did not send")
    del device.sent[seq]
    dropped = code == REFUSAL_REPLAY and _replayed(device, seq)
    return Refused(frame_hash, code, text, seq, dropped)


def _replayed(device, seq):
    """The gateway already has ``seq``: move the counter ahead unless an earlier refusal did; drop the
    session when the frame was sealed under it (its numbers may repeat). True when it was dropped."""
    if seq > device._replay_upto:
        device.counter.advance(min(MAX_SEQ, max(device.counter.last, seq) + device._replay_skip))
        device._replay_upto = device.counter.last
        device._replay_skip = min(REPLAY_SKIP_MAX, device._replay_skip * 2)
    session = device.session
    if session is not None and session.first_seq is not None and seq >= session.first_seq:
        device.session = None
        return True
    return False
