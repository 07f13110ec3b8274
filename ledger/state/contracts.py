"""The ledger contracts: one function per tx kind, each reading and writing through a journal.

A contract either returns having written its records into ``ctx.view`` (a journal over the state) or
raises ``Refusal(code, text)``; the caller drops the journal of a refused transaction, so nothing of it
is ever applied. Contracts only use data from the transaction, the state and the block (height, time),
so every replica reaches the same result.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ledgerlink.core import cbor, schnorr_zk
from ledgerlink.core.errors import LedgerlinkError

from ledgerlink.protocol import anon_wire
from ledgerlink.ledger.state.codes import DeviceStatus, ImageType, Reason, RecordKind as RK, Role, TxKind
from ledgerlink.protocol.ledger_tx import (MAX_ID, MAX_INPUTS, MAX_REQUEST, MAX_TEXT, MAX_WARNINGS,  # noqa: F401
                                           Refusal,
                                           check_attributes, check_registration_request, check_set_change,
                                           get_bstr, get_pubkey, get_tstr, get_uint, invalid_field as _bad,
                                           rotation_message, state_key)
from ledgerlink.protocol.validator_set import keys_of

_ANCHOR = int(RK.ANCHOR)


class Journal:
    """Writes of one transaction (or block) over a read function; nothing reaches the base until merged.

    A ``lazy`` journal (a dry run whose writes are dropped) keeps written records unencoded until
    one is read back.
    """

    __slots__ = ("_base", "_lazy", "writes")

    def __init__(self, base: Callable[[bytes], bytes | None], lazy: bool = False) -> None:
        self._base = base
        self._lazy = lazy
        self.writes: dict[bytes, Any] = {}

    def get_raw(self, key: bytes) -> bytes | None:
        if key in self.writes:
            value = self.writes[key]
            if type(value) is not bytes:
                value = self.writes[key] = cbor.dumps(value)
            return value
        return self._base(key)

    def get(self, kind: int, record_id: Any) -> dict | None:
        raw = self.get_raw(state_key(kind, record_id))
        return None if raw is None else cbor.loads(raw)

    def exists(self, kind: int, record_id: Any) -> bool:
        return self.get_raw(state_key(kind, record_id)) is not None

    def put(self, kind: int, record_id: Any, record: dict) -> None:
        self.put_at(state_key(kind, record_id), record)

    def put_at(self, key: bytes, record: dict) -> None:
        """``put`` under an already computed state key."""
        self.writes[key] = record if self._lazy else cbor.dumps(record)

    def put_raw(self, key: bytes, raw: bytes) -> None:
        self.writes[key] = raw


class TxContext:
    """What a contract sees: the journal, the block, the chain settings and the authenticated tx."""

    __slots__ = ("view", "chain", "chain_id", "skew", "height", "block_time", "submitter", "record", "body",
                 "nonce", "tx_id", "backend")

    def __init__(self, view: Journal, chain: dict, height: int, block_time: int, submitter: bytes,
                 submitter_record: dict, body: dict, tx_id: bytes, backend: Any) -> None:
        self.view = view
        self.chain = chain
        self.chain_id: str = chain[1]
        self.skew: int = chain[2]
        self.height = height
        self.block_time = block_time
        self.submitter = submitter
        self.record = submitter_record
        self.body = body
        self.nonce: bytes = body[3]
        self.tx_id = tx_id
        self.backend = backend


# -- field checks ----------------------------------------------------------------------------------

_KEY_SETS: dict[tuple, tuple[frozenset, frozenset]] = {}


def check_keys(body: dict, required: Iterable[int], optional: Iterable[int] = ()) -> None:
    """Refuse a body that lacks a required field or carries one the tx kind does not define."""
    if type(required) is tuple and type(optional) is tuple:
        sets = _KEY_SETS.get((required, optional))
        if sets is None:
            need = frozenset(required) | {1, 2, 3}
            sets = (need, need | frozenset(optional))
            if len(_KEY_SETS) < 64:
                _KEY_SETS[(required, optional)] = sets
        if sets[1].issuperset(body) and sets[0].issubset(body):
            return
    req = set(required) | {1, 2, 3}
    allowed = req | set(optional)
    for key in body:
        if key not in allowed:
            raise _bad("field %r is not defined for this transaction kind" % (key,))
    for key in req:
        if key not in body:
            raise _bad("field %d is missing" % key)


is_uint = cbor.is_uint


def require_role(ctx: TxContext, *roles: int) -> None:
    if ctx.record[3] not in roles:
        names = "/".join(Role(r).name.lower() for r in roles)
        raise Refusal(Reason.NOT_AUTHORIZED, "only a %s key may submit this transaction" % names)


def _target(ctx: TxContext, dev: bytes) -> dict:
    rec = ctx.view.get(RK.DEVICE, dev)
    if rec is None:
        raise Refusal(Reason.UNKNOWN_TARGET, "device %s is not registered" % dev.hex())
    return rec


# -- device registry --------------------------------------------------------------------------------

def device_record(dev: bytes, pubkey: bytes, role: int, attributes: dict, at: int, by: bytes) -> dict:
    """A new device record (see docs/protocol.md, `device-record`)."""
    return {1: dev, 2: pubkey, 3: int(role), 4: attributes, 5: int(DeviceStatus.ACTIVE), 6: at, 7: by, 8: 1}


def register(ctx: TxContext) -> None:
    require_role(ctx, Role.ADMIN)
    check_keys(ctx.body, (4,))
    req = check_registration_request(get_bstr(ctx.body, 4, 1, MAX_REQUEST), ctx.backend)
    if req.time_ms > ctx.block_time + ctx.skew:
        raise Refusal(Reason.CLOCK_SKEW, "registration request is dated after the block time")
    if ctx.view.exists(RK.DEVICE, req.device_id):
        raise Refusal(Reason.ALREADY_EXISTS, "device %s is already registered" % req.device_id.hex())
    ctx.view.put(RK.DEVICE, req.device_id, device_record(req.device_id, req.pubkey, req.role, req.attributes,
                                                         ctx.block_time, ctx.submitter))


def rotate_key(ctx: TxContext) -> None:
    check_keys(ctx.body, (4, 5))
    new_key = get_pubkey(ctx.body, 4)
    pop = get_bstr(ctx.body, 5, 64, 64)
    if new_key == ctx.record[2]:
        raise _bad("the new key is the current key")
    message = rotation_message(ctx.chain_id, ctx.submitter, bytes(ctx.body[4]), ctx.nonce)
    if not ctx.backend.verify(new_key, message, pop):
        raise Refusal(Reason.BAD_PROOF_OF_POSSESSION, "the new key's signature does not verify")
    rec = dict(ctx.record)
    rec[2] = new_key
    rec[8] = rec[8] + 1
    rec[11] = ctx.block_time
    ctx.view.put(RK.DEVICE, ctx.submitter, rec)


def _status_change(ctx: TxContext, banned: bool) -> None:
    require_role(ctx, Role.ADMIN)
    check_keys(ctx.body, (4, 5))
    target = get_bstr(ctx.body, 4, 16, 16)
    reason = get_tstr(ctx.body, 5)
    if target == ctx.submitter:
        raise Refusal(Reason.NOT_AUTHORIZED, "an admin may not change its own status")
    rec = dict(_target(ctx, target))
    if banned and rec[5] == DeviceStatus.BANNED:
        raise Refusal(Reason.WRONG_STATUS, "device is already banned")
    if not banned and rec[5] != DeviceStatus.BANNED:
        raise Refusal(Reason.WRONG_STATUS, "device is not banned")
    rec[5] = int(DeviceStatus.BANNED if banned else DeviceStatus.ACTIVE)
    rec[9 if banned else 10] = {1: ctx.block_time, 2: ctx.submitter, 3: reason}
    ctx.view.put(RK.DEVICE, target, rec)


def ban(ctx: TxContext) -> None:
    _status_change(ctx, True)


def unban(ctx: TxContext) -> None:
    _status_change(ctx, False)


# -- anchors, certificates, firmware ------------------------------------------------------------------

def _batch_id(body: dict) -> int | bytes:
    value = body.get(4)
    if is_uint(value):
        return value
    return get_bstr(body, 4, 1, 32)


def anchor(ctx: TxContext) -> None:
    require_role(ctx, Role.GATEWAY)
    check_keys(ctx.body, (4, 5, 6))
    batch_id = _batch_id(ctx.body)
    root = get_bstr(ctx.body, 5, 32, 32)
    count = get_uint(ctx.body, 6, 1, 0xFFFFFFFF)
    key = state_key(_ANCHOR, [ctx.submitter, batch_id])
    if ctx.view.get_raw(key) is not None:
        raise Refusal(Reason.ALREADY_EXISTS, "batch %r of this gateway is already anchored" % (batch_id,))
    ctx.view.put_at(key, {1: ctx.submitter, 2: batch_id, 3: root, 4: count, 5: ctx.height,
                          6: ctx.block_time, 7: ctx.tx_id})


def cert_record(ctx: TxContext) -> None:
    require_role(ctx, Role.GATEWAY, Role.ADMIN)
    check_keys(ctx.body, (4, 5, 6, 7, 8, 9))
    cert_hash = get_bstr(ctx.body, 4, 32, 32)
    subject = get_bstr(ctx.body, 5, 16, 16)
    issuer = get_bstr(ctx.body, 6, 1, MAX_ID)
    valid_from = get_uint(ctx.body, 7)
    valid_until = get_uint(ctx.body, 8)
    serial = get_bstr(ctx.body, 9, 1, MAX_ID)
    if valid_until <= valid_from:
        raise _bad("certificate validity ends before it starts")
    if ctx.view.exists(RK.CERT, cert_hash):
        raise Refusal(Reason.CERTIFICATE_REUSE, "certificate %s is already recorded" % cert_hash.hex())
    if _target(ctx, subject)[5] == DeviceStatus.BANNED:
        raise Refusal(Reason.WRONG_STATUS, "certificate subject is banned")
    ctx.view.put(RK.CERT, cert_hash, {1: subject, 2: issuer, 3: valid_from, 4: valid_until, 5: serial,
                                      6: ctx.submitter, 7: ctx.height, 8: ctx.block_time})


def firmware(ctx: TxContext) -> None:
    """An image record; with a sequence (field 9), the record of an update manifest, whose sequence must be
    above the latest release of its class and component."""
    require_role(ctx, Role.MAINTENANCE)
    check_keys(ctx.body, (4, 5, 6, 7), (8, 9))
    image_hash = get_bstr(ctx.body, 4, 32, 32)
    version = get_tstr(ctx.body, 5, 1, MAX_ID)
    device_class = get_tstr(ctx.body, 6, 1, MAX_ID)
    image_type = get_uint(ctx.body, 7, ImageType.FIRMWARE, ImageType.APP_LIBRARY)
    if ctx.view.exists(RK.FIRMWARE, image_hash):
        raise Refusal(Reason.ALREADY_EXISTS, "image %s is already recorded" % image_hash.hex())
    rec = {1: image_type, 2: version, 3: device_class, 5: ctx.submitter, 6: ctx.height, 7: ctx.block_time}
    latest = {1: image_hash, 2: version, 3: ctx.height}
    if 8 in ctx.body:
        rec[4] = get_uint(ctx.body, 8)
    if 9 in ctx.body:
        sequence = get_uint(ctx.body, 9, 1)
        prev = ctx.view.get(RK.FIRMWARE_LATEST, [image_type, device_class])
        if prev is not None and sequence <= prev.get(4, 0):
            raise _bad("sequence %d is not above the latest release's %d" % (sequence, prev[4]))
        rec[8] = latest[4] = sequence
    ctx.view.put(RK.FIRMWARE, image_hash, rec)
    ctx.view.put(RK.FIRMWARE_LATEST, [image_type, device_class], latest)


def device_version(ctx: TxContext) -> None:
    """A device's version-statement, relayed by any registered key: signed by the device's registered key of a
    device not banned, newer than the one recorded, naming a recorded release of the device's class, component
    and sequence (or sequence 0, as deployed). Against a relayer that forges, replays or misattributes what a
    device runs (tests/updates/test_versions_ledger.py)."""
    from ledgerlink.protocol import update_version as uv

    check_keys(ctx.body, (4,))
    raw = get_bstr(ctx.body, 4, 1, uv.STATEMENT_MAX)
    try:
        body, st, sig = uv.decode_statement(raw)
    except LedgerlinkError as exc:
        raise _bad(str(exc)) from None
    dev, cls, component, sequence, digest, when = st[1], st[2], st[3], st[4], st[5], st[6]
    rec = _target(ctx, dev)
    if rec[5] == DeviceStatus.BANNED:
        raise Refusal(Reason.WRONG_STATUS, "device %s is banned" % dev.hex())
    if not ctx.backend.verify(rec[2], uv.tbs(ctx.chain_id, body), sig):
        raise Refusal(Reason.BAD_SIGNATURE, "the version-statement is not signed by the device's registered key")
    registered_class = rec[4].get("class") if isinstance(rec[4], dict) else None
    if registered_class is not None and registered_class != cls:
        raise Refusal(Reason.WRONG_CLASS, "device %s is registered as class %r, not %r" % (dev.hex(),
                                                                                         registered_class, cls))
    if when > ctx.block_time + ctx.skew:
        raise Refusal(Reason.CLOCK_SKEW, "version-statement is dated after the block time")
    prev = ctx.view.get(RK.DEVICE_VERSION, [dev, component])
    if prev is not None and when <= prev[5]:
        raise Refusal(Reason.REPLAY, "a version-statement of this device and component as new is recorded")
    version = None
    if digest is not None:
        release = ctx.view.get(RK.FIRMWARE, digest)
        if release is None or 8 not in release:
            raise Refusal(Reason.UNKNOWN_RELEASE, "manifest %s is not a recorded release" % digest.hex())
        if release[3] != cls or release[1] != component or release[8] != sequence:
            raise Refusal(Reason.WRONG_CLASS, "manifest %s is release %d of component %d for class %r" % (
                digest.hex(), release[8], release[1], release[3]))
        version = release[2]
    ctx.view.put(RK.DEVICE_VERSION, [dev, component], {1: sequence, 2: digest, 3: version, 4: cls, 5: when,
                                                      6: ctx.submitter, 7: ctx.height, 8: ctx.block_time})


# -- manufacturing records ------------------------------------------------------------------------------

def provenance(ctx: TxContext) -> None:
    """A lot's provenance; field 10: the recorded lots it was made from (record field 8)."""
    check_keys(ctx.body, (4, 5, 6, 7, 8, 9), (10,))
    material = get_bstr(ctx.body, 4, 1, MAX_ID)
    origin = get_tstr(ctx.body, 5)
    batch = get_tstr(ctx.body, 6, 1, MAX_ID)
    form = get_tstr(ctx.body, 7, 1, MAX_ID)
    produced = get_uint(ctx.body, 8)
    key = get_pubkey(ctx.body, 9)
    if produced > ctx.block_time + ctx.skew:
        raise _bad("production time is after the block time")
    if ctx.view.exists(RK.PROVENANCE, material):
        raise Refusal(Reason.ALREADY_EXISTS, "material %s is already recorded" % material.hex())
    rec = {1: origin, 2: batch, 3: form, 4: produced, 5: key, 6: ctx.submitter, 7: ctx.height}
    if 10 in ctx.body:
        inputs = ctx.body[10]
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_INPUTS:
            raise _bad("field 10 must be a list of 1 to %d input lots" % MAX_INPUTS)
        for lot in inputs:
            if not isinstance(lot, bytes) or not 1 <= len(lot) <= MAX_ID:
                raise _bad("field 10 must hold lot ids of 1 to %d bytes" % MAX_ID)
            if lot == material or not ctx.view.exists(RK.PROVENANCE, lot):
                raise Refusal(Reason.UNKNOWN_TARGET, "input lot %s is not recorded" % lot.hex())
        rec[8] = list(inputs)
    ctx.view.put(RK.PROVENANCE, material, rec)


def communication(ctx: TxContext) -> None:
    check_keys(ctx.body, (4, 5, 6, 7, 8))
    sender = get_bstr(ctx.body, 4, 16, 16)
    receiver = get_bstr(ctx.body, 5, 16, 16)
    msg_type: int | str = ctx.body[6] if is_uint(ctx.body.get(6)) else get_tstr(ctx.body, 6, 1, 32)
    size = get_uint(ctx.body, 7)
    digest = get_bstr(ctx.body, 8, 32, 32)
    if ctx.submitter != sender and ctx.record[3] != Role.GATEWAY:
        raise Refusal(Reason.NOT_AUTHORIZED, "only the sender or a gateway may record a communication")
    _target(ctx, sender)
    _target(ctx, receiver)
    rid = [sender, digest]
    if ctx.view.exists(RK.COMMUNICATION, rid):
        raise Refusal(Reason.ALREADY_EXISTS, "communication is already recorded")
    ctx.view.put(RK.COMMUNICATION, rid, {1: sender, 2: receiver, 3: msg_type, 4: size, 5: digest,
                                         6: ctx.submitter, 7: ctx.height, 8: ctx.block_time})


def warnings(ctx: TxContext) -> None:
    require_role(ctx, Role.GATEWAY)
    check_keys(ctx.body, (4,))
    entries = ctx.body[4]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_WARNINGS:
        raise _bad("field 4 must be a list of 1 to %d refusal records" % MAX_WARNINGS)
    seen = set()
    parsed = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise _bad("a refusal record must be a map")
        for key in entry:
            if key not in (1, 2, 3, 4, 5):
                raise _bad("refusal record field %r is not defined" % (key,))
        wid = get_bstr(entry, 1, 32, 32)
        offender = get_bstr(entry, 2, 0, MAX_ID)
        when = get_uint(entry, 3)
        reason = get_uint(entry, 4, 1, 255)
        detail = get_tstr(entry, 5, 0, MAX_TEXT) if 5 in entry else None
        if wid in seen or ctx.view.exists(RK.WARNING, [ctx.submitter, wid]):
            raise Refusal(Reason.ALREADY_EXISTS, "refusal record %s is already recorded" % wid.hex())
        seen.add(wid)
        parsed.append((wid, offender, when, reason, detail))
    for wid, offender, when, reason, detail in parsed:
        rec: dict[int, Any] = {1: offender, 2: when, 3: reason, 5: ctx.submitter, 6: ctx.height}
        if detail is not None:
            rec[4] = detail
        ctx.view.put(RK.WARNING, [ctx.submitter, wid], rec)
        if offender:
            prev = ctx.view.get(RK.OFFENCES, offender)
            count = 1 if prev is None else prev[1] + 1
            ctx.view.put(RK.OFFENCES, offender, {1: count, 2: when, 3: reason, 4: ctx.submitter})


# -- validator set changes -----------------------------------------------------------------------------

def validator_set_at(view: Journal, chain: dict, height: int) -> tuple[int, list[bytes], int | None]:
    """(epoch, keys, effective height of a change recorded and not yet in effect, or None) of the
    validator set that signs the block at ``height``: the genesis set (epoch 0) or the last change."""
    latest = view.get(RK.VALIDATOR_EPOCH, 0)
    if latest is None:
        return 0, list(chain[5]), None
    epoch, effective = latest[1], latest[2]
    if effective > height:
        previous = view.get(RK.VALIDATOR_SET, epoch - 1) if epoch > 1 else None
        keys = list(chain[5]) if previous is None else keys_of(previous[2])
        return epoch - 1, keys, effective
    return epoch, keys_of(view.get(RK.VALIDATOR_SET, epoch)[2]), None


def validator_set_change(ctx: TxContext) -> None:
    """Record a validator set approved by 2f+1 of the current set, effective at its height (one pending
    change at a time)."""
    require_role(ctx, Role.ADMIN, Role.VALIDATOR)
    check_keys(ctx.body, (4, 5, 6, 7), (8, 9))
    epoch, keys, pending = validator_set_at(ctx.view, ctx.chain, ctx.height)
    if pending is not None:
        raise Refusal(Reason.CHANGE_PENDING, "a validator set change takes effect at height %d" % pending)
    change = check_set_change(ctx.body, ctx.chain_id, epoch, keys, ctx.height, ctx.backend)
    ctx.view.put(RK.VALIDATOR_SET, change.epoch, change.record(ctx.height))
    ctx.view.put(RK.VALIDATOR_EPOCH, 0, {1: change.epoch, 2: change.height})


# -- anonymous sessions (docs/protocol.md, "Anonymous sessions") -----------------------------------------

def anon_certs(ctx: TxContext) -> None:
    """Record a batch of dynamic certificates (anon-id -> X_k), submitted by the devices' owner (an admin)."""
    require_role(ctx, Role.ADMIN)
    check_keys(ctx.body, (4,))
    pairs = ctx.body[4]
    if not isinstance(pairs, list) or not 1 <= len(pairs) <= anon_wire.MAX_ANON_BATCH:
        raise _bad("field 4 must be a list of 1 to %d [anon-id, point] pairs" % anon_wire.MAX_ANON_BATCH)
    previous = b""
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise _bad("a dynamic certificate is [anon-id, point]")
        anon_id = get_bstr({4: pair[0]}, 4, anon_wire.ANON_ID_LEN, anon_wire.ANON_ID_LEN)
        point = get_pubkey({5: pair[1]}, 5)
        if len(pair[1]) != 33:
            raise _bad("a dynamic certificate's point is compressed (33 bytes)")
        if anon_id <= previous:
            raise _bad("dynamic certificates must be sorted by anon-id, without repeats")
        previous = anon_id
        if ctx.view.exists(RK.ANON_CERT, anon_id):
            raise Refusal(Reason.ALREADY_EXISTS, "dynamic certificate %s is already recorded" % anon_id.hex())
        ctx.view.put(RK.ANON_CERT, anon_id, {1: point, 2: ctx.submitter, 3: ctx.height})


def anon_spend(ctx: TxContext) -> None:
    """Spend a dynamic certificate: its record exists, its secondaryHash is not spent (algorithm 3), and the
    requester's Schnorr proof verifies against its point for the request's C1."""
    require_role(ctx, Role.GATEWAY)
    check_keys(ctx.body, (4, 5, 6))
    anon_id = get_bstr(ctx.body, 4, anon_wire.ANON_ID_LEN, anon_wire.ANON_ID_LEN)
    proof = get_bstr(ctx.body, 5, schnorr_zk.PROOF_LEN, schnorr_zk.PROOF_LEN)
    c1 = get_bstr(ctx.body, 6, 33, 33)
    cert = ctx.view.get(RK.ANON_CERT, anon_id)
    if cert is None:
        raise Refusal(Reason.ANON_UNKNOWN_CERTIFICATE, "no dynamic certificate %s" % anon_id.hex())
    spent_id = anon_wire.secondary_hash(anon_id)
    if ctx.view.exists(RK.ANON_SPENT, spent_id):
        raise Refusal(Reason.ANON_SPENT_SECONDARY, "dynamic certificate already spent")
    try:
        schnorr_zk.verify(cert[1], proof, anon_id, anon_wire.proof_context(c1))
    except LedgerlinkError:
        raise Refusal(Reason.ANON_BAD_PROOF, "the proof of the certificate's secret does not verify") from None
    ctx.view.put(RK.ANON_SPENT, spent_id, {1: ctx.submitter, 2: ctx.height, 3: ctx.tx_id})


CONTRACTS: dict[int, Callable[[TxContext], None]] = {
    TxKind.REGISTER: register,
    TxKind.ROTATE_KEY: rotate_key,
    TxKind.BAN: ban,
    TxKind.UNBAN: unban,
    TxKind.ANCHOR: anchor,
    TxKind.CERT_RECORD: cert_record,
    TxKind.FIRMWARE: firmware,
    TxKind.DEVICE_VERSION: device_version,
    TxKind.PROVENANCE: provenance,
    TxKind.COMMUNICATION: communication,
    TxKind.WARNINGS: warnings,
    TxKind.ANON_CERTS: anon_certs,
    TxKind.ANON_SPEND: anon_spend,
    TxKind.VALIDATOR_SET_CHANGE: validator_set_change,
}
