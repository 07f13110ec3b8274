"""Ledger transactions and records as gateways, admin tools and ledger nodes write and read them.

A transaction is a COSE_Sign1 (tag 18) by the submitter with kid = submitter device-id; its
external_aad is ``cbor(["ledgerlink-tx-v1", chain-id])``, so a transaction signed for one chain does not
verify on another. Here: the tx kinds, record kinds and reasons a device never sees (the others are in
``codes``), state keys, device ids, the transaction builders, the tx root, and the checks of a
``registration-request`` (the ledger's register contract and a gateway's ``reg`` topic use the same).
Portable like the rest of ``ledgerlink.protocol``; a board does not import it.
"""

import hashlib
import os
import struct
from hashlib import sha256 as _sha256

from ledgerlink.core import cbor, cose, merkle, p256
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import LedgerlinkError
from ledgerlink.protocol import codes, spv, validator_set
from ledgerlink.protocol.codes import NONCE_LEN, TX_ANCHOR, TX_DOMAIN

TX_REGISTER = 1
TX_ROTATE_KEY = 2
TX_BAN = 3
TX_UNBAN = 4
TX_CERT_RECORD = 6              # TX_ANCHOR (5) is in codes
TX_FIRMWARE = 7
TX_PROVENANCE = 8
TX_COMMUNICATION = 9
TX_WARNINGS = 10
TX_ANON_CERTS = 20              # anonymous sessions: an owner records a batch of dynamic certificates
TX_ANON_SPEND = 21              # a fog spends one, with the requester's proof
TX_DEVICE_VERSION = 11          # a relayed version-statement (update_transport); records RECORD_DEVICE_VERSION
TX_VALIDATOR_SET_CHANGE = 16    # validator-set-change (validator_set); records RECORD_VALIDATOR_SET/_EPOCH

# First element of the state key preimage cbor([record-kind, id]); the id of each kind follows it.
RECORD_CHAIN = 0                # 0: chain configuration written at genesis
RECORD_NONCE = 2                # [submitter device-id, nonce]; RECORD_DEVICE (1) is in codes
RECORD_ANCHOR = 3               # [gateway device-id, batch-id]
RECORD_CERT = 4                 # SHA-256 of the ecqv-cert bytes
RECORD_FIRMWARE_LATEST = 6      # [image-type, device-class]; RECORD_FIRMWARE (5) is in codes
RECORD_PROVENANCE = 7           # material-id
RECORD_COMMUNICATION = 8        # [sender device-id, digest]
RECORD_WARNING = 9              # [gateway device-id, warning-id]
RECORD_OFFENCES = 10            # offender (bstr)
RECORD_DEVICE_VERSION = 11      # [device-id, component]: the version the device states it runs
RECORD_VALIDATOR_EPOCH = 17     # 0: the last validator set change {1: epoch, 2: effective height};
                                # RECORD_VALIDATOR_SET (16) is in codes
RECORD_ANON_CERT = 20           # anon-id: the point X_k of a dynamic certificate
RECORD_ANON_SPENT = 21          # secondaryHash of a spent dynamic certificate

# ledger-reason: the reasons only the ledger gives (the others are codes.REASON_*)
REASON_OK = 0
REASON_UNKNOWN_TX_KIND = 20
REASON_INVALID_FIELD = 21
REASON_NOT_AUTHORIZED = 22
REASON_BAD_PROOF_OF_POSSESSION = 23
REASON_ALREADY_EXISTS = 24
REASON_UNKNOWN_TARGET = 25
REASON_WRONG_STATUS = 26
REASON_UNKNOWN_RELEASE = 27     # a version-statement names a digest the ledger does not record as a release
REASON_WRONG_CLASS = 28         # ... or a release of another device class or component, or another sequence
# anonymous sessions, given by the fog (in its encrypted answer) and by the anon-spend contract
REASON_ANON_UNKNOWN_CERTIFICATE = 60    # no anon-cert record for the id
REASON_ANON_BAD_PROOF = 61              # the Schnorr proof does not verify
REASON_ANON_SPENT_PRIMARY = 62          # the fog's primaryHash table holds the certificate (algorithm 2)
REASON_ANON_SPENT_SECONDARY = 63        # the ledger's secondaryHash table holds it (algorithm 3)
REASON_ANON_REPLAY = 64                 # the fog saw this request (its C1) before
# validator-set-change refusals
REASON_STALE_EPOCH = 40         # epoch is not the current epoch + 1
REASON_SHORT_QUORUM = 41        # fewer than 2f+1 approvals of the current set
REASON_DUPLICATE_SIGNER = 42    # two approvals by one validator
REASON_FOREIGN_SIGNER = 43      # an approval by an index outside the current set
REASON_HEIGHT_NOT_FUTURE = 44   # effective height not above the block that records the change
REASON_EMPTY_SET = 45
REASON_OVERSIZED_SET = 46       # more than validator_set.MAX_VALIDATORS
REASON_BAD_APPROVAL = 47        # an approval signature that does not verify
REASON_CHANGE_PENDING = 48      # a change is recorded and not yet in effect
REASON_MEMBER_MOVED = 49        # a validator of both sets at another index
_reason_names = None


def reason_name(code):
    """The name of a refusal reason, the gateway's or the ledger's (5 -> "bad-signature"); "code-N" if unknown."""
    global _reason_names
    if _reason_names is None:
        from ledgerlink.protocol import codes

        _reason_names = {}
        for names in (codes.__dict__, globals()):
            for name, value in names.items():
                if name.startswith("REASON_") and name != "REASON_OK":
                    _reason_names[value] = name[7:].lower().replace("_", "-")
    return _reason_names.get(code, "code-%d" % code if isinstance(code, int) else "unknown")

ROTATE_DOMAIN = "ledgerlink-rotate-v1"      # rotate-pop
MAX_ID = 64                     # ids of other records (offender, material, ...), bytes
MAX_TEXT = 256                  # text fields, attribute values and warning details, characters
MAX_ATTRIBUTES = 16
MAX_ATTR_KEY = 32
MAX_REQUEST = 2048              # a registration-request inside a register transaction, bytes
MAX_WARNINGS = 32               # refusal records in one warnings transaction
MAX_INPUTS = 16                 # input lots one provenance record names
MAX_UINT = cbor.UINT_MAX

_head = cbor.head
_BSTR_HEAD = [_head(2, n) for n in range(256)]
_UINT = [_head(0, n) for n in range(256)]
_PAIR = [bytes((0x82, k)) for k in range(24)]


def _uint(x):
    """CBOR of an unsigned integer 0 <= x <= 2**64 - 1."""
    if x < 256:
        return _UINT[x]
    if x < 0x10000:
        return struct.pack(">BH", 0x19, x)
    if x < 0x100000000:
        return struct.pack(">BI", 0x1A, x)
    return struct.pack(">BQ", 0x1B, x)


def _id_item(x):
    """CBOR of a byte string or an unsigned integer up to 2**64 - 1; None for anything else."""
    t = type(x)
    if t is bytes:
        n = len(x)
        return (_BSTR_HEAD[n] if n < 256 else _head(2, n)) + x
    if t is int and 0 <= x <= cbor.UINT_MAX:
        return _uint(x)
    return None


def _id_cbor(record_id):
    """Deterministic CBOR of the usual record ids (bstr, uint, or a list of those), else None."""
    t = type(record_id)
    if t is bytes and len(record_id) < 256:
        return _BSTR_HEAD[len(record_id)] + record_id
    if (t is list or t is tuple) and len(record_id) == 2:
        a = _id_item(record_id[0])
        b = _id_item(record_id[1])
        if a is None or b is None:
            return None
        return b"\x82" + a + b
    item = _id_item(record_id)
    if item is not None:
        return item
    if t is list or t is tuple:
        parts = [_head(4, len(record_id))]
        for x in record_id:
            item = _id_item(x)
            if item is None:
                return None
            parts.append(item)
        return b"".join(parts)
    return None


def state_key(kind, record_id):
    """State key of a record: ``spv.state_key``, SHA-256(cbor([record-kind, id])).

    ``record_id`` is a bstr, an int, or a list of those (composite ids such as [gateway, batch-id]).
    Byte strings, unsigned integers and lists of them are encoded here directly (the same bytes as
    ``cbor.dumps``); any other id goes through ``spv.state_key``.
    """
    kind = int(kind)
    body = _id_cbor(record_id) if 0 <= kind < 24 else None
    if body is not None:
        return _sha256(_PAIR[kind] + body).digest()
    if isinstance(record_id, tuple):
        record_id = list(record_id)
    return spv.state_key(kind, record_id)


_SIGN1_HEAD = b"\xd2\x84\x43\xa1\x01\x26\xa1\x04\x50"   # 18([h'A10126', {4: 16-byte kid ...
_SIG_HEAD = b"\x58\x40"


def bstr_head(n):
    """Shortest CBOR head of a byte string of n bytes."""
    return _BSTR_HEAD[n] if n < 256 else cbor.head(2, n)


def split_sign1(tx):
    """(kid, payload, signature) of a transaction in the exact deterministic form the builders write
    (protected header {1: -7}, unprotected {4: 16-byte kid}, attached payload, 64-byte signature), so
    that ``cose.decode_sign1`` would give the same fields; None for any other form."""
    if not tx.startswith(_SIGN1_HEAD) or len(tx) < 28:
        return None
    kid = tx[9:25]
    b = tx[25]
    if b < 0x58:
        if b < 0x40:
            return None
        n, i = b - 0x40, 26
    elif b == 0x58:
        n, i = tx[26], 27
        if n < 24:
            return None
    elif b == 0x59:
        n, i = int.from_bytes(tx[26:28], "big"), 28
        if n < 0x100:
            return None
    else:
        return None
    end = i + n
    if len(tx) != end + 66 or tx[end:end + 2] != _SIG_HEAD:
        return None
    return kid, tx[i:end], tx[end + 2:]


def tx_tbs_prefix(chain_id):
    """CBOR of the transaction Sig_structure ["Signature1", h'A10126', tx_aad(chain_id), payload] up to
    the payload (which follows as a byte string)."""
    aad = tx_aad(chain_id)
    return b"\x84\x6aSignature1\x43\xa1\x01\x26" + bstr_head(len(aad)) + aad


def compress_pubkey(pubkey):
    """The 33-byte SEC 1 compressed form of a 33- or 65-byte P-256 key (raises InvalidPoint)."""
    return p256.encode_point(p256.decode_point(bytes(pubkey)), True)


def device_id(pubkey):
    """Device id (``codes.device_id``) of a 33- or 65-byte key, which is checked to be on the curve
    (raises InvalidPoint)."""
    return codes.device_id(compress_pubkey(pubkey))


def tx_aad(chain_id):
    """external_aad of every transaction signature on chain ``chain_id``."""
    return cbor.dumps([TX_DOMAIN, chain_id])


def tx_id(tx):
    """Transaction id: SHA-256 of the transaction bytes (the tx-root leaf entry)."""
    return hashlib.sha256(bytes(tx)).digest()


def rotation_message(chain_id, dev_id, new_pubkey, nonce):
    """Bytes the new key signs in a rotate-key transaction (its proof of possession)."""
    return cbor.dumps([ROTATE_DOMAIN, chain_id, bytes(dev_id), bytes(new_pubkey), bytes(nonce)])


def _rng(rng):
    return rng or os.urandom


def build_tx(chain_id, priv, kind, time_ms, fields, nonce=None, kid=None, backend=None,
             rng=None):
    """Sign a transaction of ``kind`` with body fields ``fields`` (keys 4 and up) as COSE_Sign1.

    ``kid`` defaults to the device id of ``priv``; ``nonce`` to 16 random bytes.
    """
    be = get_backend(backend)
    if kid is None:
        kid = codes.device_id(be.public_key(priv, True))
    if nonce is None:
        nonce = _rng(rng)(NONCE_LEN)
    body = {1: int(kind), 2: int(time_ms), 3: bytes(nonce)}
    for key, value in fields.items():
        body[int(key)] = value
    return cose.sign1(cbor.dumps(body), priv, kid, tx_aad(chain_id), be)


def registration_request(priv, role, attributes, time_ms, backend=None):
    """The device's own registration-request (its proof of possession), signed by its identity key."""
    be = get_backend(backend)
    pub = be.public_key(priv, True)
    dev = codes.device_id(pub)
    payload = {1: dev, 2: pub, 3: int(role), 4: dict(attributes), 5: int(time_ms)}
    return cose.sign1(cbor.dumps(payload), priv, dev, b"", be)


def register_tx(chain_id, admin_priv, request, time_ms, **kw):
    return build_tx(chain_id, admin_priv, TX_REGISTER, time_ms, {4: request}, **kw)


def rotate_key_tx(chain_id, priv, new_priv, time_ms, nonce=None, backend=None, rng=None, **kw):
    """Rotate-key transaction: signed by the current key, carrying the new key's proof of possession.

    ``kw`` may carry ``kid`` (the device id, needed once the key has been rotated before).
    """
    be = get_backend(backend)
    kid = kw.pop("kid", None) or device_id(be.public_key(priv, True))
    if nonce is None:
        nonce = _rng(rng)(NONCE_LEN)
    new_pub = be.public_key(new_priv, True)
    pop = be.sign(new_priv, rotation_message(chain_id, kid, new_pub, nonce))
    return build_tx(chain_id, priv, TX_ROTATE_KEY, time_ms, {4: new_pub, 5: pop}, nonce=nonce,
                    kid=kid, backend=be, **kw)


def ban_tx(chain_id, admin_priv, target, reason, time_ms, **kw):
    return build_tx(chain_id, admin_priv, TX_BAN, time_ms, {4: bytes(target), 5: reason}, **kw)


def unban_tx(chain_id, admin_priv, target, reason, time_ms, **kw):
    return build_tx(chain_id, admin_priv, TX_UNBAN, time_ms, {4: bytes(target), 5: reason}, **kw)


def anchor_tx(chain_id, gateway_priv, batch_id, root, count, time_ms, **kw):
    return build_tx(chain_id, gateway_priv, TX_ANCHOR, time_ms, {4: batch_id, 5: bytes(root), 6: count}, **kw)


def cert_record_tx(chain_id, issuer_priv, cert_hash, subject, issuer, valid_from, valid_until, serial, time_ms,
                   **kw):
    fields = {4: bytes(cert_hash), 5: bytes(subject), 6: bytes(issuer), 7: valid_from, 8: valid_until,
              9: bytes(serial)}
    return build_tx(chain_id, issuer_priv, TX_CERT_RECORD, time_ms, fields, **kw)


def cert_record_tx_for(chain_id, issuer_priv, cert_bytes, time_ms, **kw):
    """cert-record transaction for an ECQV certificate: its hash and fields, not the certificate itself."""
    from ledgerlink.core import ecqv

    cert = ecqv.decode_cert(cert_bytes)
    return cert_record_tx(chain_id, issuer_priv, hashlib.sha256(bytes(cert_bytes)).digest(), cert.subject,
                          cert.issuer, cert.valid_from, cert.valid_until, cert.serial, time_ms, **kw)


def firmware_tx(chain_id, maintenance_priv, image_hash, version, device_class, image_type, time_ms, size=None,
                sequence=None, **kw):
    """A firmware record; with ``sequence``, the record of an update manifest whose digest is ``image_hash``."""
    fields = {4: bytes(image_hash), 5: version, 6: device_class, 7: image_type}
    if size is not None:
        fields[8] = size
    if sequence is not None:
        fields[9] = sequence
    return build_tx(chain_id, maintenance_priv, TX_FIRMWARE, time_ms, fields, **kw)


def device_version_tx(chain_id, relay_priv, statement, time_ms, **kw):
    """A device-version transaction: a relayer (any registered key) carries a device's version-statement."""
    return build_tx(chain_id, relay_priv, TX_DEVICE_VERSION, time_ms, {4: bytes(statement)}, **kw)


def provenance_tx(chain_id, priv, material_id, origin, batch, form, produced_ms, material_pubkey, time_ms,
                  inputs=None, **kw):
    """A lot's provenance; ``inputs``: the ids of the recorded lots it was made from (its material chain)."""
    fields = {4: bytes(material_id), 5: origin, 6: batch, 7: form, 8: produced_ms, 9: bytes(material_pubkey)}
    if inputs is not None:
        fields[10] = [bytes(lot) for lot in inputs]
    return build_tx(chain_id, priv, TX_PROVENANCE, time_ms, fields, **kw)


def communication_tx(chain_id, priv, sender, receiver, msg_type, size, digest, time_ms, **kw):
    fields = {4: bytes(sender), 5: bytes(receiver), 6: msg_type, 7: size, 8: bytes(digest)}
    return build_tx(chain_id, priv, TX_COMMUNICATION, time_ms, fields, **kw)


def anon_certs_tx(chain_id, owner_priv, certificates, time_ms, **kw):
    """anon-certs transaction: the (anon-id, X_k) pairs of a batch, sorted by id (the order tells nothing of
    which device holds which)."""
    pairs = sorted([bytes(i), bytes(x)] for i, x in certificates)
    return build_tx(chain_id, owner_priv, TX_ANON_CERTS, time_ms, {4: pairs}, **kw)


def anon_spend_tx(chain_id, fog_priv, anon_id, proof, c1, time_ms, **kw):
    """anon-spend transaction: the fog spends certificate ``anon_id``; the contract checks ``proof`` against
    the request's ``c1``."""
    return build_tx(chain_id, fog_priv, TX_ANON_SPEND, time_ms, {4: bytes(anon_id), 5: bytes(proof), 6: bytes(c1)},
                    **kw)


def warning_entry(warning_id, offender, time_ms, reason, detail=None):
    """One refusal record of a warnings batch."""
    entry = {1: bytes(warning_id), 2: bytes(offender), 3: time_ms, 4: reason}
    if detail is not None:
        entry[5] = detail
    return entry


def warnings_tx(chain_id, gateway_priv, entries, time_ms, **kw):
    return build_tx(chain_id, gateway_priv, TX_WARNINGS, time_ms, {4: list(entries)}, **kw)


def approve_set_change(chain_id, validator_priv, epoch, new_keys, height, backend=None, group_key=None):
    """One validator's approval signature of the change to ``new_keys`` (with its FROST ``group_key``, if
    any) at ``height`` (epoch = current + 1)."""
    message = validator_set.approval_message(chain_id, epoch, validator_set.set_hash(new_keys, group_key), height)
    return get_backend(backend).sign(validator_priv, message)


def validator_set_change_tx(chain_id, priv, epoch, new_keys, height, approvals, time_ms, group_key=None,
                            verifying_shares=None, **kw):
    """validator-set-change transaction; ``approvals`` is ``[[index, signature], ...]`` by the current set.
    ``group_key`` and ``verifying_shares`` (the new set's threshold key) are carried as given."""
    fields = {4: epoch, 5: validator_set.set_entries(new_keys), 6: height,
              7: [[int(i), bytes(sig)] for i, sig in approvals]}
    if group_key is not None:
        fields[8] = bytes(group_key)
    if verifying_shares is not None:
        fields[9] = list(verifying_shares)
    return build_tx(chain_id, priv, TX_VALIDATOR_SET_CHANGE, time_ms, fields, **kw)


def tx_root(txs):
    """RFC 9162 Merkle tree head over a block's transactions (``merkle.root_of``)."""
    return merkle.root_of(txs)


# --- field checks (a ``Refusal`` carries the ledger reason) ----------------------------------------


class Refusal(Exception):
    """A transaction (or a registration request) is refused with a numeric reason code and a text."""

    def __init__(self, code, text):
        super().__init__(code, text)
        self.code = int(code)
        self.text = text


def invalid_field(text):
    """The Refusal of a field that does not check (``invalid-field``)."""
    return Refusal(REASON_INVALID_FIELD, text)


def get_uint(m, key, lo=0, hi=MAX_UINT):
    value = m.get(key)
    if not cbor.is_uint(value) or not lo <= value <= hi:
        raise invalid_field("field %d must be an unsigned integer in [%d, %d]" % (key, lo, hi))
    return value


def get_bstr(m, key, lo, hi):
    value = m.get(key)
    if not isinstance(value, (bytes, bytearray)) or not lo <= len(value) <= hi:
        raise invalid_field("field %d must be a byte string of %d to %d bytes" % (key, lo, hi))
    return bytes(value)


def get_tstr(m, key, lo=1, hi=MAX_TEXT):
    value = m.get(key)
    if not isinstance(value, str) or not lo <= len(value) <= hi:
        raise invalid_field("field %d must be a text string of %d to %d characters" % (key, lo, hi))
    return value


def get_pubkey(m, key):
    value = m.get(key)
    if not isinstance(value, (bytes, bytearray)) or len(value) not in (33, 65):
        raise invalid_field("field %d must be a 33- or 65-byte P-256 public key" % key)
    try:
        return compress_pubkey(bytes(value))
    except LedgerlinkError:
        raise invalid_field("field %d is not a valid P-256 point" % key) from None


def check_attributes(attrs):
    if not isinstance(attrs, dict) or len(attrs) > MAX_ATTRIBUTES:
        raise invalid_field("device attributes must be a map of at most %d entries" % MAX_ATTRIBUTES)
    for name, value in attrs.items():
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_ATTR_KEY:
            raise invalid_field("attribute names must be text of 1 to %d characters" % MAX_ATTR_KEY)
        if isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise invalid_field("attribute %r is longer than %d characters" % (name, MAX_TEXT))
        elif not (isinstance(value, int) and not isinstance(value, bool) and -MAX_UINT - 1 <= value <= MAX_UINT):
            raise invalid_field("attribute %r must be text or an integer" % (name,))
        if name in ("name", "model", "location") and not isinstance(value, str):
            raise invalid_field("attribute %r must be text" % (name,))
    return dict(attrs)


class RegistrationRequest:
    """The checked content of a device's ``registration-request`` (its proof of possession verified)."""

    def __init__(self, device_id, pubkey, role, attributes, time_ms):
        self.device_id = device_id
        self.pubkey = pubkey
        self.role = role
        self.attributes = attributes
        self.time_ms = time_ms

    def __eq__(self, other):
        return isinstance(other, RegistrationRequest) and self.__dict__ == other.__dict__

    def __repr__(self):
        return "RegistrationRequest(%s, role=%d)" % (self.device_id.hex(), self.role)


def check_registration_request(request, backend=None):
    """Decode a ``registration-request`` and verify its proof of possession; raise Refusal."""
    try:
        frame = cose.decode_sign1(request)
        req = cbor.loads(frame.payload)
        kid = frame.kid
    except LedgerlinkError:
        raise invalid_field("registration request is not a well-formed COSE_Sign1") from None
    if not isinstance(req, dict):
        raise invalid_field("registration request payload must be a map")
    for key in req:
        if key not in (1, 2, 3, 4, 5):
            raise invalid_field("registration request field %r is not defined" % (key,))
    dev = get_bstr(req, 1, 16, 16)
    pubkey = get_pubkey(req, 2)
    role = get_uint(req, 3, 1, 7)
    attrs = check_attributes(req.get(4))
    req_time = get_uint(req, 5)
    if device_id(pubkey) != dev:
        raise Refusal(REASON_BAD_PROOF_OF_POSSESSION, "device id is not derived from the public key")
    if kid != dev:
        raise Refusal(REASON_BAD_PROOF_OF_POSSESSION, "registration request kid is not the device id")
    try:
        cose.verify_sign1(request, bytes(req[2]), b"", backend)
    except LedgerlinkError:
        raise Refusal(REASON_BAD_PROOF_OF_POSSESSION, "registration request signature does not verify") from None
    return RegistrationRequest(dev, pubkey, role, attrs, req_time)


class SetChange:
    """The checked content of a ``validator-set-change``: ``epoch``, ``keys``, ``height`` (effective),
    ``set_hash``, ``group_key`` and ``verifying_shares`` (None when absent)."""

    def __init__(self, epoch, keys, height, set_hash, group_key, verifying_shares):
        self.epoch = epoch
        self.keys = keys
        self.height = height
        self.set_hash = set_hash
        self.group_key = group_key
        self.verifying_shares = verifying_shares

    def record(self, recorded_at):
        """The ``validator-set-record`` written for this change by the block at ``recorded_at``."""
        rec = {1: self.epoch, 2: validator_set.set_entries(self.keys), 3: self.height, 4: self.set_hash,
               7: recorded_at}
        if self.group_key is not None:
            rec[5] = self.group_key
        if self.verifying_shares is not None:
            rec[6] = self.verifying_shares
        return rec


GROUP_KEY_LEN = 33              # a FROST group key or verifying share: a compressed P-256 point


def check_set_change(body, chain_id, current_epoch, current_keys, block_height, backend=None):
    """Check a validator-set-change body against the set in effect at ``block_height`` (``current_keys``
    of ``current_epoch``); return a SetChange or raise Refusal with the reason that refuses it.

    Refuses: a stale epoch, an empty or oversized set, a validator of both sets at another index,
    an effective height not above ``block_height``, and approvals that are short of 2f+1 of the
    current set, repeat a signer, name an index outside it or do not verify.
    """
    epoch = get_uint(body, 4)
    if epoch != current_epoch + 1:
        raise Refusal(REASON_STALE_EPOCH, "epoch %d is not the next epoch %d" % (epoch, current_epoch + 1))
    entries = body.get(5)
    if not isinstance(entries, list):
        raise invalid_field("field 5 must be the validator set [+ [index, key]]")
    if not entries:
        raise Refusal(REASON_EMPTY_SET, "the new validator set is empty")
    if len(entries) > validator_set.MAX_VALIDATORS:
        raise Refusal(REASON_OVERSIZED_SET, "the new validator set has %d members, at most %d"
                      % (len(entries), validator_set.MAX_VALIDATORS))
    try:
        keys = validator_set.keys_of(entries)
        shorts = [compress_pubkey(key) for key in keys]
    except LedgerlinkError as exc:
        raise invalid_field(str(exc)) from None
    if len(set(shorts)) != len(shorts):             # one key in both forms would vote twice
        raise invalid_field("the new validator set names one key twice")
    old = [compress_pubkey(k) for k in current_keys]
    for i, short in enumerate(shorts):
        if short in old and old.index(short) != i:
            raise Refusal(REASON_MEMBER_MOVED, "validator %d of the current set would move to index %d"
                          % (old.index(short), i))
    height = get_uint(body, 6)
    if height <= block_height:
        raise Refusal(REASON_HEIGHT_NOT_FUTURE, "effective height %d is not above block %d" % (height, block_height))
    group_key = get_bstr(body, 8, GROUP_KEY_LEN, GROUP_KEY_LEN) if 8 in body else None
    shares = None
    if 9 in body:
        shares = body[9]
        if group_key is None or not isinstance(shares, list) or len(shares) != len(keys) \
                or not all(isinstance(x, bytes) and len(x) == GROUP_KEY_LEN for x in shares):
            raise invalid_field("field 9 must hold one 33-byte verifying share per validator, with a group key")
    new_hash = validator_set.set_hash(keys, group_key)
    approvals = body.get(7)
    if not isinstance(approvals, list):
        raise invalid_field("field 7 must be the approvals [+ [index, signature]]")
    message = validator_set.approval_message(chain_id, epoch, new_hash, height)
    crypto = get_backend(backend)
    seen = set()
    for item in approvals:
        if not isinstance(item, list) or len(item) != 2 or not cbor.is_uint(item[0]) \
                or not isinstance(item[1], bytes) or len(item[1]) != 64:
            raise invalid_field("an approval must be [validator-index, 64-byte signature]")
        index = item[0]
        if index >= len(current_keys):
            raise Refusal(REASON_FOREIGN_SIGNER, "approval by index %d outside the current set of %d"
                          % (index, len(current_keys)))
        if index in seen:
            raise Refusal(REASON_DUPLICATE_SIGNER, "two approvals by validator %d" % index)
        seen.add(index)
        if not crypto.verify(current_keys[index], message, item[1]):
            raise Refusal(REASON_BAD_APPROVAL, "approval of validator %d does not verify" % index)
    need = spv.quorum(len(current_keys)) if current_keys else 1
    if not current_keys or len(seen) < need:
        raise Refusal(REASON_SHORT_QUORUM, "%d approvals of the current set, %d needed" % (len(seen), need))
    return SetChange(epoch, keys, height, new_hash, group_key, shares)
