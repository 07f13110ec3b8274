"""Anonymous sessions with dynamic certificates (docs/protocol.md, "Anonymous sessions"): the derivations
and messages the device, the fog (gateway), the ledger contract and the cloud share.

A device holds a 32-byte device secret ``s`` from its owner. Its k-th dynamic certificate is
``id_k = SHA-256(ID_DOMAIN || s || k)[0:16]`` with secret ``x_k`` (HKDF of ``s`` and ``k``) and point
``X_k = x_k*G``; the owner records (id_k, X_k) for a batch of its devices' counters on the ledger. A
request names id_k and carries an RFC 8235 proof of x_k, encrypted (ECIES, C1..C3) to the fog's key,
with the device's real id signed and encrypted to the cloud's escrow key under the same ephemeral key.
Nothing else in a request is about the device, so two requests are linked only by what the fog, the
broker or a ledger reader cannot compute: ``s``, ``x_k``, the ephemeral keys and the escrow key.

Protects against: linking sessions (ids and points come from a secret hash chain, every other field is
fresh randomness or a constant of the site); a certificate used twice (primaryHash at the fog,
secondaryHash in the ledger state); a proof moved to another request (C1 is in its OtherInfo); a
framed de-anonymization (the escrow carries the device's identity signature over C1 and id_k).
Portable: runs on CPython and MicroPython.
"""

import hashlib

from ledgerlink.core import cbor, ecies, kdf, p256
from ledgerlink.core.errors import InvalidMessage

SECRET_LEN = 32
ANON_ID_LEN = 16
REPLY_TAG_LEN = 8
SESSION_KEY_LEN = 16
SESSION_IV_LEN = 13
SESSION_ID_LEN = 8
MAX_ANON_BATCH = 256                # (id, point) pairs in one anon-certs transaction
MAX_REQUEST = 512                   # an anon-request on the wire, bytes

ID_DOMAIN = b"ledgerlink-anon-id-v1"
KEY_DOMAIN = b"ledgerlink-anon-key-v1"
PROOF_DOMAIN = "ledgerlink-anon-proof-v1"
ESCROW_DOMAIN = "ledgerlink-anon-escrow-v1"
PRIMARY_DOMAIN = b"ledgerlink-anon-primary-v1"
SECONDARY_DOMAIN = b"ledgerlink-anon-secondary-v1"
REQUEST_INFO = b"ledgerlink-anon-request-v1"
RESPONSE_INFO = b"ledgerlink-anon-response-v1"
ESCROW_INFO = b"ledgerlink-anon-escrow-v1"
GRANT_INFO = b"ledgerlink-anon-grant-v1"
GRANT_AAD = b"ledgerlink-anon-grant-v1"
COUNTER_DOMAIN = b"ledgerlink-anon-counter-v1"

RESULT_OK = 0


# --- derivations -----------------------------------------------------------------------------------

def _k(k):
    if not isinstance(k, int) or not 0 < k <= 0xFFFFFFFF:
        raise InvalidMessage("certificate counter must be in [1, 2^32 - 1]")
    return k.to_bytes(4, "big")


def anon_id(secret, k):
    """id_k = SHA-256(ID_DOMAIN || s || uint32(k))[0:16], the k-th dynamic identity of secret ``s``."""
    return hashlib.sha256(ID_DOMAIN + bytes(secret) + _k(k)).digest()[:ANON_ID_LEN]


def anon_secret(secret, k):
    """x_k, 32 bytes in [1, n-1]: HKDF-SHA256(ikm = s, salt = KEY_DOMAIN, info = uint32(k), 48) mod (n-1) + 1."""
    okm = kdf.hkdf(bytes(secret), KEY_DOMAIN, _k(k), 48)
    return (int.from_bytes(okm, "big") % (p256.N - 1) + 1).to_bytes(32, "big")


def certificate_batch(secret, first, last):
    """[(id_k, X_k compressed)] for k in [first, last]: what the owner records for one device."""
    from ledgerlink.core import schnorr_zk

    return [(anon_id(secret, k), schnorr_zk.public_point(anon_secret(secret, k))) for k in range(first, last + 1)]


def primary_hash(anon_id_):
    """The fog's primaryHash of a certificate (algorithm 2): SHA-256(PRIMARY_DOMAIN || id_k)."""
    return hashlib.sha256(PRIMARY_DOMAIN + bytes(anon_id_)).digest()


def secondary_hash(anon_id_):
    """The ledger's secondaryHash of a certificate (algorithm 3), the spent record's id."""
    return hashlib.sha256(SECONDARY_DOMAIN + bytes(anon_id_)).digest()


def proof_context(c1):
    """OtherInfo of a request's proof: cbor([PROOF_DOMAIN, C1]), so a proof serves one request only."""
    return cbor.dumps([PROOF_DOMAIN, bytes(c1)])


def escrow_message(c1, anon_id_):
    """What the device's identity key signs inside the escrow: cbor([ESCROW_DOMAIN, C1, id_k])."""
    return cbor.dumps([ESCROW_DOMAIN, bytes(c1), bytes(anon_id_)])


# --- messages --------------------------------------------------------------------------------------

def _bstr(value, lo, hi, what):
    if not isinstance(value, bytes) or not lo <= len(value) <= hi:
        raise InvalidMessage("%s must be a byte string of %d to %d bytes" % (what, lo, hi))
    return value


def encode_request(c1, c2, c3):
    """anon-request = [C1, C2, C3]."""
    return cbor.dumps([bytes(c1), bytes(c2), bytes(c3)])


def decode_request(data):
    """(C1, C2, C3) of an anon-request; raises DecodeError/InvalidMessage (C1 is not decoded as a point)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_REQUEST:
        raise InvalidMessage("anon-request must be at most %d bytes" % MAX_REQUEST)
    obj = cbor.loads(bytes(data), max_depth=2)
    if not isinstance(obj, list) or len(obj) != 3:
        raise InvalidMessage("anon-request must be [C1, C2, C3]")
    return (_bstr(obj[0], ecies.C1_LEN, ecies.C1_LEN, "C1"), _bstr(obj[1], 1, MAX_REQUEST, "C2"),
            _bstr(obj[2], ecies.TAG_LEN, ecies.TAG_LEN, "C3"))


def encode_request_body(anon_id_, proof, time_ms, reply_tag, escrow):
    """anon-request-body = {1: id_k, 2: proof, 3: time-ms, 4: reply-tag, 5: [escrow C2, escrow C3]}."""
    return cbor.dumps({1: bytes(anon_id_), 2: bytes(proof), 3: int(time_ms), 4: bytes(reply_tag),
                       5: [bytes(escrow[0]), bytes(escrow[1])]})


def decode_request_body(data):
    """(id_k, proof, time-ms, reply-tag, (escrow C2, C3)) of an anon-request-body; raises InvalidMessage."""
    obj = cbor.loads(bytes(data), max_depth=3)
    if not isinstance(obj, dict) or sorted(obj) != [1, 2, 3, 4, 5]:
        raise InvalidMessage("anon-request-body must be {1: id, 2: proof, 3: time, 4: reply-tag, 5: escrow}")
    escrow = obj[5]
    if not cbor.is_uint(obj[3]) or not isinstance(escrow, list) or len(escrow) != 2:
        raise InvalidMessage("anon-request-body has a bad time or escrow")
    return (_bstr(obj[1], ANON_ID_LEN, ANON_ID_LEN, "id_k"), _bstr(obj[2], 65, 65, "proof"), obj[3],
            _bstr(obj[4], REPLY_TAG_LEN, REPLY_TAG_LEN, "reply tag"), (_bstr(escrow[0], 1, 128, "escrow C2"),
            _bstr(escrow[1], ecies.TAG_LEN, ecies.TAG_LEN, "escrow C3")))


def encode_response(c2, c3):
    """anon-response = [C2, C3], sealed under the request's response keys."""
    return cbor.dumps([bytes(c2), bytes(c3)])


def decode_response(data):
    obj = cbor.loads(bytes(data), max_depth=2)
    if not isinstance(obj, list) or len(obj) != 2:
        raise InvalidMessage("anon-response must be [C2, C3]")
    return _bstr(obj[0], 1, 256, "C2"), _bstr(obj[1], ecies.TAG_LEN, ecies.TAG_LEN, "C3")


def encode_response_body(result, session=None, spend_tx=None):
    """anon-response-body: {1: 0, 2: key, 3: base-iv, 4: session-id, 5: valid-until, 6: spend tx id} when
    granted, {1: reason-code} when refused."""
    if result != RESULT_OK:
        return cbor.dumps({1: int(result)})
    key, base_iv, session_id, valid_until_s = session
    return cbor.dumps({1: RESULT_OK, 2: bytes(key), 3: bytes(base_iv), 4: bytes(session_id),
                       5: int(valid_until_s), 6: bytes(spend_tx)})


def decode_response_body(data):
    """(reason, None) for a refusal, (0, (key, base-iv, session-id, valid-until, spend-tx)) for a grant."""
    obj = cbor.loads(bytes(data), max_depth=2)
    if not isinstance(obj, dict) or not cbor.is_uint(obj.get(1)):
        raise InvalidMessage("anon-response-body must carry a result code")
    if obj[1] != RESULT_OK:
        if sorted(obj) != [1]:
            raise InvalidMessage("a refusal carries only its reason")
        return obj[1], None
    if sorted(obj) != [1, 2, 3, 4, 5, 6] or not cbor.is_uint(obj[5]):
        raise InvalidMessage("a grant must be {1: 0, 2: key, 3: base-iv, 4: session-id, 5: valid-until, 6: tx}")
    return RESULT_OK, (_bstr(obj[2], SESSION_KEY_LEN, SESSION_KEY_LEN, "key"),
                       _bstr(obj[3], SESSION_IV_LEN, SESSION_IV_LEN, "base-iv"),
                       _bstr(obj[4], SESSION_ID_LEN, SESSION_ID_LEN, "session id"), obj[5],
                       _bstr(obj[6], 32, 32, "spend tx id"))


def encode_escrow_plain(device_id, signature):
    """escrow-plain = [device-id, sig64]: the real id and its signature over ``escrow_message``."""
    return cbor.dumps([bytes(device_id), bytes(signature)])


def decode_escrow_plain(data):
    obj = cbor.loads(bytes(data), max_depth=2)
    if not isinstance(obj, list) or len(obj) != 2:
        raise InvalidMessage("escrow must be [device-id, signature]")
    return _bstr(obj[0], 16, 16, "device id"), _bstr(obj[1], 64, 64, "signature")


def encode_grant_payload(session_id, key_box, c1, escrow, spend_tx, valid_until_s, anon_id_):
    """anon-grant payload: {1: session-id, 2: [C1, C2, C3] (key || base-iv to the cloud), 3: request C1,
    4: [escrow C2, C3], 5: spend tx id, 6: valid-until, 7: anon-id}."""
    return cbor.dumps({1: bytes(session_id), 2: [bytes(x) for x in key_box], 3: bytes(c1),
                       4: [bytes(escrow[0]), bytes(escrow[1])], 5: bytes(spend_tx), 6: int(valid_until_s),
                       7: bytes(anon_id_)})


def decode_grant_payload(data):
    """(session-id, (C1, C2, C3), request C1, (escrow C2, C3), spend tx id, valid-until, anon-id);
    InvalidMessage."""
    obj = cbor.loads(bytes(data), max_depth=3)
    if not isinstance(obj, dict) or sorted(obj) != [1, 2, 3, 4, 5, 6, 7]:
        raise InvalidMessage("anon-grant payload must have the fields 1 to 7")
    box, escrow = obj[2], obj[4]
    if (not isinstance(box, list) or len(box) != 3 or not isinstance(escrow, list) or len(escrow) != 2
            or not cbor.is_uint(obj[6])):
        raise InvalidMessage("anon-grant has a bad key box, escrow or validity")
    return (_bstr(obj[1], SESSION_ID_LEN, SESSION_ID_LEN, "session id"),
            (_bstr(box[0], ecies.C1_LEN, ecies.C1_LEN, "C1"), _bstr(box[1], 1, 64, "C2"),
             _bstr(box[2], ecies.TAG_LEN, ecies.TAG_LEN, "C3")),
            _bstr(obj[3], ecies.C1_LEN, ecies.C1_LEN, "request C1"),
            (_bstr(escrow[0], 1, 128, "escrow C2"), _bstr(escrow[1], ecies.TAG_LEN, ecies.TAG_LEN, "escrow C3")),
            _bstr(obj[5], 32, 32, "spend tx id"), obj[6], _bstr(obj[7], ANON_ID_LEN, ANON_ID_LEN, "anon-id"))


def request_topic(site):
    """The topic every anonymous request of a site is published on (no device id in it)."""
    return "ll/%s/anon/req" % site


def reply_topic(site, reply_tag):
    """The topic of the answer to one request: its random reply tag, nothing of the device."""
    return "ll/%s/anon/rsp/%s" % (site, bytes(reply_tag).hex())


def grant_topic(site):
    """The topic of the fog's grants to the cloud."""
    return "ll/%s/anon/cloud" % site


def data_topic(site, session_id):
    """The topic of a device's data under an anonymous session: its random session id, nothing else."""
    return "ll/%s/anon/up/%s" % (site, bytes(session_id).hex())

