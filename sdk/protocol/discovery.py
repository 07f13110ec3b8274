"""Discovery: directory requests a device sends and the checks it makes of the answers itself.

Portable (CPython and MicroPython). A device asks the site's directory (``ledgerlink.gateway.directory``)
on ``ll/<site>/dev/<id>/dir`` and reads answers on ``.../dira`` (docs/protocol.md, "Discovery"). The
directory only chooses which records to show: each comes as a ``record-proof`` that the device checks
against the validators it trusts (``spv.verify_record_proof``), so it cannot invent, alter or revive a
record. What it can do is leave a matching device out or show an older header: ``min_height`` bounds
the latter; the former is stated in docs/protocol.md's trust model.

Protects against: a lying directory, gateway or ledger node presenting an unregistered device, a
changed key or attributes, or a banned device as a partner (``partner`` refuses a proof of banned
status, and a proof of absence is the "unregistered" answer). Tested in tests/m2m/test_peer_devices.py.
"""

from ledgerlink.core import cbor
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import spv
from ledgerlink.protocol.codes import DEVICE_ID_LEN, RECORD_DEVICE, STATUS_ACTIVE, STATUS_BANNED

# dir-op
DIR_BY_ID = 1
DIR_BY_ATTRIBUTES = 2
DIR_PAIR = 3
DIR_RECORD = 4
DIR_HISTORY = 5
DIR_SUBMIT = 6
# dir-status
DIR_OK = 0
DIR_NOT_FOUND = 1
DIR_REFUSED = 2
DIR_UNAVAILABLE = 3
DIR_NOTICE_BANNED = 1       # dir-notice kind: a device is banned (request id 0)
MAX_RESULTS = 16            # record proofs in one answer
MAX_REQUEST = 4096


class DiscoveryError(LedgerlinkError):
    """A directory answer or record that is not accepted; ``reason`` is one word
    ("malformed", "proof", "unregistered", "banned", "mismatch", "stale")."""

    def __init__(self, reason, text):
        LedgerlinkError.__init__(self, "%s: %s" % (reason, text))
        self.reason = reason


def dir_topic(site, device_id):
    return "ll/%s/dev/%s/dir" % (site, bytes(device_id).hex())


def answer_topic(site, device_id):
    return "ll/%s/dev/%s/dira" % (site, bytes(device_id).hex())


def encode_request(request_id, op, arg=None):
    """A ``dir-request``."""
    req = {1: request_id, 2: op}
    if arg is not None:
        req[3] = arg
    return cbor.dumps(req)


def decode_request(data):
    """(request id, op, arg) of a ``dir-request``; DiscoveryError("malformed")."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_REQUEST:
        raise DiscoveryError("malformed", "a request must be at most %d bytes" % MAX_REQUEST)
    try:
        req = cbor.loads(bytes(data), max_depth=6)
    except LedgerlinkError as exc:
        raise DiscoveryError("malformed", "request is not CBOR: %s" % exc)
    if not isinstance(req, dict) or not all(k in (1, 2, 3) for k in req) or 1 not in req or 2 not in req:
        raise DiscoveryError("malformed", "request must be {1: id, 2: op, ? 3: arg}")
    if not cbor.is_uint(req[1]) or req[2] not in (DIR_BY_ID, DIR_BY_ATTRIBUTES, DIR_PAIR, DIR_RECORD, DIR_HISTORY,
                                                  DIR_SUBMIT):
        raise DiscoveryError("malformed", "bad request id or op")
    return req[1], req[2], req.get(3)


def encode_answer(request_id, status, proofs=None, text=None, result=None, notice=None, ids=None):
    """A ``dir-answer`` (request id 0 with ``notice``: a ``dir-notice``); ``ids``: [record-kind, record-id]
    of each proof, where the device cannot tell it from its request."""
    ans = {1: request_id, 2: status}
    if proofs is not None:
        ans[3] = list(proofs)
    if text is not None:
        ans[4] = text
    if result is not None:
        ans[5] = result
    if notice is not None:
        ans[6] = notice
    if ids is not None:
        ans[7] = list(ids)
    return cbor.dumps(ans)


def decode_answer(data):
    """The ``dir-answer`` map (fields checked for type); DiscoveryError("malformed")."""
    try:
        ans = cbor.loads(bytes(data), max_depth=16)
    except (LedgerlinkError, TypeError) as exc:
        raise DiscoveryError("malformed", "answer is not CBOR: %s" % exc)
    if not isinstance(ans, dict) or not cbor.is_uint(ans.get(1)) or not cbor.is_uint(ans.get(2)):
        raise DiscoveryError("malformed", "answer must be {1: id, 2: status, ...}")
    if 3 in ans and (not isinstance(ans[3], list) or len(ans[3]) > MAX_RESULTS):
        raise DiscoveryError("malformed", "answer field 3 must be a list of at most %d record proofs" % MAX_RESULTS)
    if 7 in ans and not (isinstance(ans[7], list) and all(isinstance(i, list) and len(i) == 2 for i in ans[7])):
        raise DiscoveryError("malformed", "answer field 7 must be a list of [record-kind, record-id]")
    return ans


class DeviceRecord:
    """A device's registry record as proven: ``device_id``, ``pubkey``, ``role``, ``attributes``,
    ``status``, ``height`` (of the header it was proven under)."""

    def __init__(self, device_id, pubkey, role, attributes, status, height):
        self.device_id = device_id
        self.pubkey = pubkey
        self.role = role
        self.attributes = attributes
        self.status = status
        self.height = height

    @property
    def banned(self):
        return self.status == STATUS_BANNED

    def __repr__(self):
        return "DeviceRecord(%s, role=%d, status=%d, %r)" % (self.device_id.hex(), self.role, self.status,
                                                            self.attributes)


def verify_record(proof, chain_id, validators, kind, record_id, min_height=0, backend=None, group_key=None):
    """The record bytes (None: proven absent) of ``[kind, record_id]`` from a ``record-proof``, checked
    against the trusted validators (and their FROST ``group_key``, when their headers name one), under a
    header at ``min_height`` or later. Returns (header, bytes)."""
    try:
        header, key, value = spv.verify_record_proof(proof, chain_id, validators, backend, group_key)
    except LedgerlinkError as exc:
        raise DiscoveryError("proof", "record proof does not verify: %s" % exc)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise DiscoveryError("malformed", "record proof: %s" % exc)
    if key != spv.state_key(kind, record_id):
        raise DiscoveryError("mismatch", "the proof is for another record")
    if header.height < min_height:
        raise DiscoveryError("stale", "proof under header %d, %d or later needed" % (header.height, min_height))
    return header, value


def device_record(proof, chain_id, validators, device_id, min_height=0, backend=None, group_key=None):
    """The proven DeviceRecord of ``device_id``, or None when the proof shows it is not registered."""
    header, value = verify_record(proof, chain_id, validators, RECORD_DEVICE, bytes(device_id), min_height, backend,
                                  group_key)
    if value is None:
        return None
    try:
        rec = cbor.loads(value, max_depth=6)
    except LedgerlinkError as exc:
        raise DiscoveryError("malformed", "device record is not CBOR: %s" % exc)
    if not isinstance(rec, dict) or rec.get(1) != bytes(device_id) or not isinstance(rec.get(2), bytes) \
            or not isinstance(rec.get(4), dict) or rec.get(5) not in (STATUS_ACTIVE, STATUS_BANNED):
        raise DiscoveryError("malformed", "not a device record")
    return DeviceRecord(rec[1], rec[2], rec[3], rec[4], rec[5], header.height)


def proof_device_id(proof):
    """The device id a device record proof claims (unverified: for choosing what to check), or None."""
    try:
        if isinstance(proof, (bytes, bytearray)):
            proof = cbor.loads(bytes(proof), max_depth=12)
        value = proof.get(3) if isinstance(proof, dict) else None
        rec = cbor.loads(value, max_depth=6) if isinstance(value, bytes) else None
    except LedgerlinkError:
        return None
    dev = rec.get(1) if isinstance(rec, dict) else None
    return dev if isinstance(dev, bytes) and len(dev) == DEVICE_ID_LEN else None


def partner(proof, chain_id, validators, device_id, min_height=0, backend=None, group_key=None):
    """The proven record of ``device_id`` as a communication partner: DiscoveryError "unregistered" when
    proven absent, "banned" when proven banned."""
    rec = device_record(proof, chain_id, validators, device_id, min_height, backend, group_key)
    if rec is None:
        raise DiscoveryError("unregistered", "device %s is not registered" % bytes(device_id).hex())
    if rec.status != STATUS_ACTIVE:
        raise DiscoveryError("banned", "device %s is banned" % rec.device_id.hex())
    return rec


def matches(attributes, wanted):
    """Whether a record's ``attributes`` hold every (name, value) of ``wanted``."""
    for name in wanted:
        if name not in attributes or attributes[name] != wanted[name]:
            return False
    return True


def partners(proofs, chain_id, validators, wanted, min_height=0, backend=None, group_key=None):
    """The active devices among ``proofs`` whose attributes hold ``wanted``, each proof checked; a proof
    that does not verify, a banned device or one that does not match is left out (never returned)."""
    out = []
    for proof in proofs:
        dev = proof_device_id(proof)
        if dev is None:
            continue
        try:
            rec = partner(proof, chain_id, validators, dev, min_height, backend, group_key)
        except DiscoveryError:
            continue
        if matches(rec.attributes, wanted):
            out.append(rec)
    return out
