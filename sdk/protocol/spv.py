"""Light-client (SPV) checks of what the ledger says, in the portable subset (runs on devices).

A client trusts a validator set (chain id + the validators' public keys), not any single node or the
gateway. It accepts:
- a certified header ``[header, commit-certificate]`` only when the certificate holds at least 2f+1
  distinct validators' ES256 signatures over ``cbor(["ledgerlink-commit-v1", chain-id, height, view,
  header-hash])`` and the header names the trusted validator set (``validators-hash``);
- or, for a validator set with a FROST group key, a threshold certificate ``[view, signature]``: one
  FROST(P-256, SHA-256) signature over the same bytes, made by any 2f+1 validators' key shares, checked
  at the same cost for any number of validators;
- a registry record or its absence only with a sparse-Merkle proof against that header's state root;
- a transaction only with an RFC 9162 inclusion proof against that header's tx root.
Everything else raises InvalidProof (or DecodeError/InvalidMessage for malformed bytes) with the reason.

Protects against a lying gateway, broker or ledger node: forging any of these needs 2f+1 validator
keys. Tested in tests/protocol/test_spv.py with headers certified by real replicas and with forged,
short-quorum, duplicate-vote, wrong-chain and tampered proofs; the same checks run under MicroPython.
"""

import hashlib

from ledgerlink.core import cbor
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidMessage, InvalidProof
from ledgerlink.protocol.codes import COMMIT_DOMAIN

MAX_VALIDATORS = 64


def _sha256(data):
    return hashlib.sha256(data).digest()


def quorum(n):
    """2f+1 for n = 3f+1 validators."""
    return n - (n - 1) // 3


def validators_hash(validator_keys, group_key=None):
    """SHA-256(cbor(validator-set)), validator-set = [+ [index, key]]; with the set's 33-byte FROST group
    key, SHA-256(cbor([validator-set, group-key])) (docs/protocol.md, ``validators-hash``)."""
    validator_set = [[i, k] for i, k in enumerate(validator_keys)]
    if group_key is None:
        return _sha256(cbor.dumps(validator_set))
    if not isinstance(group_key, bytes) or len(group_key) != 33:
        raise InvalidMessage("group key must be a 33-byte compressed point")
    return _sha256(cbor.dumps([validator_set, group_key]))


def _uint(value, what):
    if not cbor.is_uint(value):
        raise InvalidMessage("%s must be an unsigned integer of at most 64 bits" % what)
    return value


def _hash32(value, what):
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidMessage("%s must be a 32-byte hash" % what)
    return value


class Header:
    """A decoded ledger header (see docs/protocol.md, ``header``)."""

    def __init__(self, obj):
        if not isinstance(obj, list) or len(obj) != 7:
            raise InvalidMessage("header must be an array of 7 items")
        if not isinstance(obj[0], str) or not 0 < len(obj[0]) <= 64:
            raise InvalidMessage("header chain id must be text of 1..64 characters")
        self.chain_id = obj[0]
        self.height = _uint(obj[1], "header height")
        self.prev_hash = _hash32(obj[2], "header prev-hash")
        self.time_ms = _uint(obj[3], "header time")
        self.tx_root = _hash32(obj[4], "header tx-root")
        self.state_root = _hash32(obj[5], "header state-root")
        self.validators_hash = _hash32(obj[6], "header validators-hash")
        self.obj = obj
        self.hash = _sha256(cbor.dumps(obj))


def commit_sign_bytes(chain_id, height, view, header_hash):
    """The bytes every commit vote signs."""
    return cbor.dumps([COMMIT_DOMAIN, chain_id, height, view, header_hash])


def _certified_pair(certified):
    if isinstance(certified, (bytes, bytearray)):
        certified = cbor.loads(bytes(certified), max_depth=8)
    if not isinstance(certified, list) or len(certified) != 2:
        raise InvalidMessage("certified header must be [header, commit-certificate]")
    return Header(certified[0]), certified[1]


def verify_certified_header(certified, chain_id, validator_keys, backend=None, group_key=None):
    """Check ``[header, commit-certificate]`` (object or CBOR bytes) against a trusted validator set.

    With the set's FROST ``group_key`` (33 bytes), the header must name ``validators_hash(keys,
    group_key)`` and the certificate may be either shape: a threshold certificate ``[view,
    signature]`` (checked by ``verify_threshold_header``) or the 2f+1-vote certificate.
    Returns the Header. Raises InvalidProof when the quorum, a signature, the chain or the validator
    set does not check.
    """
    header, cert = _certified_pair(certified)
    if group_key is not None and isinstance(cert, list) and len(cert) == 2:
        return _verify_threshold(header, cert, chain_id, validator_keys, group_key, backend)
    if not isinstance(cert, list) or len(cert) != 4 or not isinstance(cert[3], list):
        raise InvalidMessage("commit certificate must be [height, view, header-hash, votes]")
    height = _uint(cert[0], "certificate height")
    view = _uint(cert[1], "certificate view")
    cert_hash = _hash32(cert[2], "certificate header-hash")
    if isinstance(validator_keys, bytes):
        raise InvalidMessage("a vote certificate is checked against the validators' keys, not an anchor hash")
    n = len(validator_keys)
    if not 0 < n <= MAX_VALIDATORS:
        raise InvalidProof("trusted validator set must have 1..%d keys" % MAX_VALIDATORS)
    if header.chain_id != chain_id:
        raise InvalidProof("header is for chain %r, not %r" % (header.chain_id, chain_id))
    if header.validators_hash != validators_hash(validator_keys, group_key):
        raise InvalidProof("header names a different validator set")
    if height != header.height or cert_hash != header.hash:
        raise InvalidProof("certificate is not for this header")
    if len(cert[3]) > n:
        raise InvalidProof("certificate has more votes than validators")
    message = commit_sign_bytes(chain_id, height, view, cert_hash)
    crypto = get_backend(backend)
    seen = []
    for vote in cert[3]:
        if not isinstance(vote, list) or len(vote) != 2:
            raise InvalidMessage("a vote must be [validator-index, signature]")
        index = _uint(vote[0], "vote index")
        signature = vote[1]
        if index >= n:
            raise InvalidProof("vote from unknown validator index %d" % index)
        if index in seen:
            raise InvalidProof("two votes from validator %d" % index)
        if not isinstance(signature, bytes) or not crypto.verify(validator_keys[index], message, signature):
            raise InvalidProof("vote of validator %d does not verify" % index)
        seen.append(index)
    if len(seen) < quorum(n):
        raise InvalidProof("certificate has %d votes, %d needed" % (len(seen), quorum(n)))
    return header


def verify_threshold_header(certified, chain_id, validator_keys, group_key, backend=None):
    """Check ``[header, threshold-certificate]`` (object or CBOR bytes), threshold-certificate =
    ``[view, frost-signature]``: one FROST(P-256, SHA-256) signature by the validator set's group key
    over ``commit_sign_bytes(chain_id, height, view, header-hash)``, the bytes the votes sign.

    ``validator_keys`` is the set's key list, or its 32-byte ``validators_hash(keys, group_key)`` (a
    device that keeps only that anchor checks a header at the same cost for any number of validators).
    The group key's threshold is the one its key generation chose (t = 2f+1); the check cannot see it,
    so the anchor must come from that key generation. Returns the Header; raises InvalidProof when the
    signature, the chain or the validator set does not check, InvalidMessage when malformed.
    """
    header, cert = _certified_pair(certified)
    return _verify_threshold(header, cert, chain_id, validator_keys, group_key, backend)


def _verify_threshold(header, cert, chain_id, validator_keys, group_key, backend):
    from ledgerlink.core import frost_verify   # threshold certificates only: a board on 2f+1 votes never loads it

    if not isinstance(cert, list) or len(cert) != 2:
        raise InvalidMessage("threshold certificate must be [view, frost-signature]")
    view = _uint(cert[0], "certificate view")
    signature = cert[1]
    if not isinstance(signature, bytes) or len(signature) != frost_verify.SIGNATURE_LEN:
        raise InvalidMessage("threshold signature must be %d bytes R || z" % frost_verify.SIGNATURE_LEN)
    if signature[0] not in (2, 3) or int.from_bytes(signature[1:frost_verify.POINT_LEN], "big") >= frost_verify.p256.P:
        raise InvalidMessage("threshold signature's R is not a compressed point encoding")
    if int.from_bytes(signature[frost_verify.POINT_LEN:], "big") >= frost_verify.N:
        raise InvalidMessage("threshold signature's z is not below the group order n")
    if not isinstance(group_key, bytes) or len(group_key) != frost_verify.POINT_LEN:
        raise InvalidMessage("group key must be a 33-byte compressed point")
    if isinstance(validator_keys, bytes):
        trusted_hash = _hash32(validator_keys, "trusted validators-hash")
    else:
        if not 0 < len(validator_keys) <= frost_verify.MAX_PARTICIPANTS:
            raise InvalidProof("trusted validator set must have 1..%d keys" % frost_verify.MAX_PARTICIPANTS)
        trusted_hash = validators_hash(validator_keys, group_key)
    if header.chain_id != chain_id:
        raise InvalidProof("header is for chain %r, not %r" % (header.chain_id, chain_id))
    if header.validators_hash != trusted_hash:
        raise InvalidProof("header names a different validator set")
    message = commit_sign_bytes(chain_id, header.height, view, header.hash)
    if not frost_verify.verify(group_key, message, signature, backend):
        raise InvalidProof("threshold signature does not verify")
    return header


def certified_hash(certified):
    """SHA-256 of a certified header's deterministic encoding (object or CBOR bytes): equal for equal ones."""
    if isinstance(certified, (bytes, bytearray)):
        certified = cbor.loads(bytes(certified), max_depth=8)
    return _sha256(cbor.dumps(certified))


def verify_header_link(previous, header):
    """Check that ``header`` directly follows ``previous`` (both verified Header objects)."""
    if header.height != previous.height + 1 or header.prev_hash != previous.hash:
        raise InvalidProof("header %d does not follow header %d" % (header.height, previous.height))


def state_key(kind, ident):
    """The sparse-Merkle key of a ledger record: SHA-256(cbor([record-kind, id]))."""
    return _sha256(cbor.dumps([kind, ident]))


def verify_record(header, key, value, proof):
    """Check a record (bytes) or its absence (None) under the header's state root; raise InvalidProof."""
    if not isinstance(key, bytes) or len(key) != 32:
        raise InvalidMessage("state key must be 32 bytes")
    if value is not None and not isinstance(value, bytes):
        raise InvalidMessage("record must be bytes or null")
    from ledgerlink.core import smt_proof   # record proofs only: a board checking receipts never loads it

    smt_proof.verify(header.state_root, key, value, proof)


def verify_record_proof(record_proof, chain_id, validator_keys, backend=None, group_key=None, verified=None):
    """Check a ``record-proof`` map {1: certified-header, 2: key, 3: record/null, 4: smt-proof}
    (``group_key`` as in ``verify_certified_header``). ``verified``: (``certified_hash`` of a certified
    header, the Header ``verify_certified_header`` returned for it under the same trusted set); a proof on
    the same certified header checks its record alone.

    Returns (header, key, record bytes or None).
    """
    if isinstance(record_proof, (bytes, bytearray)):
        record_proof = cbor.loads(bytes(record_proof), max_depth=12)
    if not isinstance(record_proof, dict):
        raise InvalidMessage("record proof must be a map")
    for label in (1, 2, 3, 4):
        if label not in record_proof:
            raise InvalidMessage("record proof lacks field %d" % label)
    if verified is not None and certified_hash(record_proof[1]) == verified[0]:
        header = verified[1]
    else:
        header = verify_certified_header(record_proof[1], chain_id, validator_keys, backend, group_key)
    key, value = record_proof[2], record_proof[3]
    verify_record(header, key, value, record_proof[4])
    return header, key, value


def verify_tx_inclusion(header, tx, index, size, proof):
    """Check that ``tx`` is leaf ``index`` of the ``size`` transactions under the header's tx root."""
    if not isinstance(tx, (bytes, bytearray)):
        raise InvalidMessage("transaction must be bytes")
    if not isinstance(proof, list):
        raise InvalidMessage("inclusion proof must be a list of hashes")
    from ledgerlink.core import merkle     # here: a board checking a record proof does not load it

    merkle.verify_inclusion(merkle.leaf_hash(bytes(tx)), index, size, proof, header.tx_root)
