"""A copy of a device's frame with its signature flipped to (r, n - s) cannot pre-empt the device.

The gateway names frames by SHA-256 of the frame, so without the canonical-signature rule an attacker in
the broker's position could deliver the flipped copy first: it would be stored and anchored under another
hash, the device's own frame refused as a replay, and its receipt would never match."""

from __future__ import annotations

from ledgerlink.core import cbor, cose, ecdsa
from ledgerlink.gateway import checks as c

from tests.gateway.test_checks import Env, _session, reading, refused, up


def malleated(frame: bytes) -> bytes:
    msg = cose.decode_sign1(frame)
    s = int.from_bytes(msg.signature[32:], "big")
    flipped = msg.signature[:32] + (ecdsa.N - s).to_bytes(32, "big")
    items = cbor.loads(frame)
    assert items.value[3] == msg.signature
    items.value[3] = flipped
    return cbor.dumps(items)


def test_flipped_signature_copy_is_refused_and_the_devices_frame_is_stored():
    e = Env()
    topic = up(e.net["sensor"].id)
    frame = reading(e.net, "sensor", 1)
    copy = malleated(frame)
    assert copy != frame
    refused(e.one(topic, copy), c.BAD_SIGNATURE)
    acc = e.one(topic, frame)
    assert isinstance(acc, c.Accept) and acc.frame_hash == c.sha256(frame)


def test_flipped_session_request_is_refused_and_the_devices_request_is_answered():
    e = Env()
    _secret, _r_u, topic, req = _session(e)
    refused(e.one(topic, malleated(req)), c.BAD_SIGNATURE)
    assert isinstance(e.feed(topic, req)[0], c.Reply)
