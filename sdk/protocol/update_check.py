"""The checks of an update offer a device makes before it takes one byte of payload (docs/protocol.md, "Updates").

An offer is ``{1: signed manifest, 2: record proof of the signer's device record, 3: record proof of the
manifest's ledger record}``. ``check_offer`` runs, in this order: the signer is a maintenance device whose
active record a proof against a 2f+1 certified header shows, and the manifest's signature verifies with
that record's key; the ledger holds the manifest digest's record (proved the same way), naming the same
component, class, sequence, size and signer; the manifest is for this device's class. The sequence,
dependency, size and digest checks need the device's state and are made by ``update_agent``. The offer is
taken apart by offsets (``_offer_parts``), and each part is decoded when its check comes and let go after
it: never two proofs decoded at once, nor the whole offer (a board checks it in the heap of one part).

Each refusal is an ``UpdateRefused`` with a reason code ``UPDATE_*`` (docs/protocol.md, ``update-reason``).
Protects against: a key that is not (or no longer) a maintenance key; a manifest not released on the
ledger; a lying ledger node, gateway or broker (any proof that does not check against 2f+1 validators);
a release for another class of device; an offer whose proofs predate a ban of its signer, replayed
(its proofs' headers lie more than ``fresh_heights`` below the newest header the device verified).
"""

import gc
import sys

from ledgerlink.core import cbor
from ledgerlink.core.errors import DecodeError, LedgerlinkError
from ledgerlink.protocol.codes import RECORD_DEVICE, RECORD_FIRMWARE, ROLE_MAINTENANCE, STATUS_ACTIVE

# update-reason: why a device refused an update or gave up a new version (docs/protocol.md)
UPDATE_MALFORMED = 1            # offer, manifest or stored state of the download does not decode
UPDATE_UNTRUSTED_SIGNER = 2     # the signer's record is absent, not a maintenance key or not active
UPDATE_BAD_SIGNATURE = 3
UPDATE_BAD_PROOF = 4            # a record proof does not check against a 2f+1 certified header
UPDATE_NOT_ON_LEDGER = 5        # no ledger record of the manifest digest, or one that says otherwise
UPDATE_WRONG_CLASS = 6
UPDATE_UNSUPPORTED = 7          # a component this device does not install
UPDATE_STALE_SEQUENCE = 8       # sequence not above the one the device accepted last
UPDATE_STATE_UNREADABLE = 9     # the device's update state is missing or damaged: nothing is installed
UPDATE_DEPENDENCY = 10          # a dependency is not the manifest of an installed component
UPDATE_BUSY = 11                # an update of the component awaits its check-in
UPDATE_SIZE = 12                # payload shorter or longer than the manifest says
UPDATE_DIGEST = 13
UPDATE_WRITE_FAILED = 14        # storing or switching failed; the running version stays
UPDATE_ROLLED_BACK = 15         # the new version did not check in within its deadline
UPDATE_STALE_PROOF = 16         # a proof's header is more than fresh-heights below the newest the device verified

OFFER_MAX = 8192                # bytes of an update offer (a manifest and two record proofs)
MESSAGE_MAX = OFFER_MAX + 64    # bytes of an update-message
MSG_OFFER = 1                   # update-message [1, update-offer]
_ON_BOARD = sys.implementation.name != "cpython"
FRESH_HEIGHTS = 256             # default: blocks an offer's proofs may lie below the newest header seen


class UpdateRefused(LedgerlinkError):
    """An update refused with ``code`` (``UPDATE_*``) and ``reason`` (text); nothing of it was installed."""

    def __init__(self, code, reason):
        super().__init__("update refused (%d): %s" % (code, reason))
        self.code = code
        self.reason = reason


def encode_offer(signed_manifest, signer_proof, manifest_proof):
    """An update offer from the signed manifest and the two record proofs (maps or CBOR bytes)."""
    def obj(p):
        return cbor.loads(bytes(p), max_depth=12) if isinstance(p, (bytes, bytearray)) else p
    return cbor.dumps({1: bytes(signed_manifest), 2: obj(signer_proof), 3: obj(manifest_proof)})


_PART_DEPTH = 13                # nesting of an offer's part: the offer nests at most 14 deep


def _skip(data, pos, depth=0):
    """The offset just after the CBOR data item at ``pos`` of ``data`` (its heads only are read; ``cbor.loads``
    of the item's bytes checks the rest). DecodeError for a truncated, indefinite or too deep item."""
    end = len(data)
    if pos >= end:
        raise DecodeError("truncated input: data item expected at offset %d" % pos)
    ib = data[pos]
    major, ai = ib >> 5, ib & 31
    pos += 1
    if ai < 24:
        arg = ai
    elif ai < 28:
        n = 1 << (ai - 24)
        if pos + n > end:
            raise DecodeError("truncated head at offset %d" % (pos - 1))
        arg = int.from_bytes(bytes(data[pos:pos + n]), "big")
        pos += n
    else:
        raise DecodeError("indefinite length or reserved value at offset %d" % (pos - 1))
    if major in (0, 1, 7):
        return pos
    if major in (2, 3):
        if arg > end - pos:
            raise DecodeError("truncated string at offset %d" % pos)
        return pos + arg
    if depth >= _PART_DEPTH + 1:
        raise DecodeError("nesting deeper than %d at offset %d" % (_PART_DEPTH + 1, pos))
    count = 1 if major == 6 else arg * 2 if major == 5 else arg
    if count > end - pos:
        raise DecodeError("container at offset %d declares more items than the input holds" % pos)
    for _ in range(count):
        pos = _skip(data, pos, depth + 1)
    return pos


def _offer_parts(data):
    """The (start, end) offsets in ``data`` of an offer's signed manifest, signer proof and manifest proof;
    each part is decoded alone (and let go) to refuse a malformed offer before any check, as a decode of the
    whole offer would, without holding the offer's objects (UpdateRefused UPDATE_MALFORMED)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UpdateRefused(UPDATE_MALFORMED, "offer does not decode: CBOR input must be bytes")
    if len(data) > OFFER_MAX:
        raise UpdateRefused(UPDATE_MALFORMED, "offer of %d bytes exceeds %d" % (len(data), OFFER_MAX))
    data = memoryview(data)
    parts = []
    try:
        if bytes(data[:1]) != b"\xa3":
            raise UpdateRefused(UPDATE_MALFORMED, "offer must be {1: signed manifest, 2: proof, 3: proof}")
        pos = 1
        for label in (1, 2, 3):
            if bytes(data[pos:pos + 1]) != bytes((label,)):
                raise UpdateRefused(UPDATE_MALFORMED, "offer must be {1: signed manifest, 2: proof, 3: proof}")
            end = _skip(data, pos + 1)
            if not isinstance(_part(data, (pos + 1, end)), bytes) and label == 1:
                raise UpdateRefused(UPDATE_MALFORMED, "offer must be {1: signed manifest, 2: proof, 3: proof}")
            parts.append((pos + 1, end))
            pos = end
        if pos != len(data):
            raise DecodeError("%d trailing bytes after the data item" % (len(data) - pos))
    except (LedgerlinkError, TypeError) as exc:
        if isinstance(exc, UpdateRefused):
            raise
        raise UpdateRefused(UPDATE_MALFORMED, "offer does not decode: %s" % exc)
    return parts


def _part(data, where):
    """The decoded part of an offer at ``where`` (from ``_offer_parts``)."""
    return cbor.loads(memoryview(data)[where[0]:where[1]], max_depth=_PART_DEPTH)


def offer_in_message(payload):
    """The offer of an update-message ``[1, offer]`` in deterministic CBOR, as a memoryview into ``payload``
    (no copy), or None for any other message."""
    if not isinstance(payload, (bytes, bytearray)) or not 3 <= len(payload) <= MESSAGE_MAX:
        return None
    if payload[0] != 0x82 or payload[1] != MSG_OFFER:
        return None
    head = payload[2]
    if 0x40 <= head <= 0x57:
        start, n = 3, head - 0x40
    elif head == 0x58 and len(payload) > 3 and payload[3] >= 24:
        start, n = 4, payload[3]
    elif head == 0x59 and len(payload) > 4 and (payload[3] << 8 | payload[4]) >= 256:
        start, n = 5, payload[3] << 8 | payload[4]
    else:
        return None
    if start + n != len(payload):
        return None
    return memoryview(payload)[start:]


def offer_digest(data):
    """The manifest digest of an offer (its signed manifest decoded alone), or None when it does not decode."""
    from ledgerlink.protocol import update_manifest

    try:
        return update_manifest.Signed(_part(data, _offer_parts(data)[0])).digest
    except (LedgerlinkError, TypeError, KeyError, IndexError):
        return None


def _proven(proof, chain_id, validator_keys, expected_key, what, backend, oldest_height=0, group_key=None,
            verified=None):
    """(the decoded record, or None when proven absent, a record proof shows under ``expected_key``; its
    header's height, which is at least ``oldest_height``; (its certified header's hash, Header) for ``verified``
    of the next proof's check: the offer's two proofs are usually of one header, checked once)."""
    from ledgerlink.protocol import spv     # here: a board forgets the proof checks' code after an offer's check

    try:
        header, key, value = spv.verify_record_proof(proof, chain_id, validator_keys, backend, group_key, verified)
        if header.height < oldest_height:
            raise UpdateRefused(UPDATE_STALE_PROOF, "the %s proof is of header %d, below the oldest taken (%d)"
                                % (what, header.height, oldest_height))
        if key != expected_key:
            raise UpdateRefused(UPDATE_BAD_PROOF, "the %s proof is for another record" % what)
        record = None if value is None else cbor.loads(value, max_depth=8)
    except (LedgerlinkError, TypeError) as exc:
        if isinstance(exc, UpdateRefused):
            raise
        raise UpdateRefused(UPDATE_BAD_PROOF, "the %s proof does not check: %s" % (what, exc))
    if record is not None and not isinstance(record, dict):
        raise UpdateRefused(UPDATE_BAD_PROOF, "the %s record is not a map" % what)
    return record, header.height, (spv.certified_hash(proof[1]), header)


def check_offer(data, chain_id, validator_keys, device_class, backend=None, newest_height=0,
                fresh_heights=FRESH_HEIGHTS, group_key=None):
    """The ``update_manifest.Signed`` of an offer that passes the signer, signature, ledger and class
    checks, in that order; UpdateRefused otherwise (``group_key``: the set's FROST group key, when its
    headers name one). Both proofs' headers must be at most ``fresh_heights``
    below ``newest_height`` (the newest certified header the device verified); ``Signed.proof_height`` is
    the higher of the two."""
    from ledgerlink.protocol import spv, update_manifest

    parts = _offer_parts(data)
    try:
        signed = update_manifest.Signed(_part(data, parts[0]))
    except (LedgerlinkError, TypeError) as exc:
        raise UpdateRefused(UPDATE_MALFORMED, "signed manifest does not decode: %s" % exc)
    m = signed.manifest
    oldest = newest_height - fresh_heights
    # one part decoded at a time, each let go once checked (and collected on a board): little heap at once
    if _ON_BOARD:
        gc.collect()
    signer, signer_height, verified = _proven(_part(data, parts[1]), chain_id, validator_keys,
                                              spv.state_key(RECORD_DEVICE, signed.signer), "signer", backend, oldest,
                                              group_key)
    if _ON_BOARD:
        gc.collect()
    if signer is None:
        raise UpdateRefused(UPDATE_UNTRUSTED_SIGNER, "the ledger has no device %s" % signed.signer.hex())
    if signer.get(1) != signed.signer or signer.get(3) != ROLE_MAINTENANCE or signer.get(5) != STATUS_ACTIVE:
        raise UpdateRefused(UPDATE_UNTRUSTED_SIGNER, "device %s is not an active maintenance key" % signed.signer.hex())
    if not isinstance(signer.get(2), bytes) or not signed.verify(signer[2], backend):
        raise UpdateRefused(UPDATE_BAD_SIGNATURE, "the manifest's signature does not verify with the signer's key")
    record, record_height, verified = _proven(_part(data, parts[2]), chain_id, validator_keys,
                                              spv.state_key(RECORD_FIRMWARE, signed.digest), "manifest", backend,
                                              oldest, group_key, verified)
    spv = verified = None
    if _ON_BOARD:
        gc.collect()
    if record is None:
        raise UpdateRefused(UPDATE_NOT_ON_LEDGER, "manifest %s is not recorded on the ledger" % signed.digest.hex())
    if (record.get(1) != m.component or record.get(3) != m.device_class or record.get(8) != m.sequence
            or record.get(5) != signed.signer or record.get(4, m.size) != m.size):
        raise UpdateRefused(UPDATE_NOT_ON_LEDGER, "the ledger's record of manifest %s says otherwise"
                            % signed.digest.hex())
    if m.device_class != device_class:
        raise UpdateRefused(UPDATE_WRONG_CLASS, "manifest is for class %r, this device is %r"
                            % (m.device_class, device_class))
    signed.proof_height = max(signer_height, record_height)
    return signed
