"""The gateway without its transport: checks (``GatewayCore``), durable store and ledger lookups, wired.

``GatewayService.handle_many`` runs a group of inputs (frames, registry answers, headers, ticks) through
the checks and carries out the effects: the accepted frames, warnings and certificates of the whole group
are committed to the store in one transaction (durable) before anything is published or acknowledged;
refusals are queued as ledger warnings and answered on the device's down topic; issued session
certificates are stored (to restore sessions after a restart and to record them on the ledger).
It returns what to publish and the SHA-256 of every frame that is now decided, so the transport
acknowledges a frame only after its durable append (or its refusal). Each stored frame's device gets a
stored-ack, all of a group's under one signed commit statement, which signs the group's republished
verified readings too (docs/protocol.md, "Delivery", "Signed republish"); a copy of
a stored frame, and a frame a device asks for on its ``ask`` topic, is answered from the store with its
ack and, once anchored, its receipt. Registry lookups
(``fetch_registry``) and the batcher's ledger calls block, so the transport runs them on other threads.

Protects against the loss of acknowledged frames (append before ack; a device drops a frame only on a
stored-ack), replays across restarts (``restore`` rebuilds the replay windows exactly as the store holds
them: no seq that was never stored counts as seen) and lost sessions (``restore`` re-derives session keys
from the stored certificates). Tested in tests/gateway/test_service.py, tests/gateway/test_delivery.py
and through tests/gateway/test_e2e.py.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from ledgerlink.core import cbor, cose, ecqv
from ledgerlink.protocol import stored_ack
from ledgerlink.gateway import checks as c
from ledgerlink.core.errors import InvalidProof
from ledgerlink.gateway.chain_statements import ChainStatements
from ledgerlink.gateway.batcher import Ledger, Outgoing, batch_receipts, cbor_head, encoded_proofs_of_leaves
from ledgerlink.gateway.store import StoredMessage, Store
from ledgerlink.gateway.verify_ahead import VerifyAhead
from ledgerlink.protocol.codes import RECORD_DEVICE

log = logging.getLogger("ledgerlink.gateway")

DOWN_TOPICS = 1 << 14          # down and verified topics of devices remembered (each emptied when full)


@dataclass
class Handled:
    """Result of feeding one input: what to publish, frames decided (to ack), registry lookups to run."""

    outgoing: list[Outgoing] = field(default_factory=list)
    decided: list[bytes] = field(default_factory=list)
    fetch: list[bytes] = field(default_factory=list)


@dataclass
class Checked:
    """The effects of a checked group, not yet stored (``GatewayService.check_many``)."""

    effects: list[c.Effect]
    now_ms: int


class GatewayService:
    def __init__(self, core: c.GatewayCore, store: Store, verify_threads: int = 1) -> None:
        self.core = core
        self.store = store
        core.session_source = store.session_cert
        self.chains = ChainStatements(store)
        self.verifier: VerifyAhead | None = None
        if verify_threads > 1:
            self.verifier = core.crypto = VerifyAhead(core.crypto, verify_threads)
        self.observer: Any = None      # ``ledgerlink.gateway.metrics.GatewayMetrics``: sees inputs and effects
        self._down_topics: dict[bytes, str] = {}      # device -> its down topic, for the stored-acks
        self._verified_topics: dict[bytes, str] = {}  # device -> its verified topic, for the republished readings

    def restore(self, now_ms: int) -> None:
        """After a (re)start: replay windows from the store, sessions from the stored certificates."""
        for dev, (highest, seen) in self.store.seq_windows().items():
            self.core.restore_window(dev, highest, now_ms, seen)
        lifetime_ms = self.core.limits.session_lifetime_s * 1000
        for dev, cert in self.store.certificates(issued_from_ms=now_ms - lifetime_ms):
            try:
                if ecqv.decode_cert(cert).valid_until <= now_ms // 1000:
                    continue
                self.core.install_session(cert, dev)
            except Exception as exc:  # noqa: BLE001 - a stored certificate that no longer parses
                log.warning("stored certificate not restored: %s", exc)
        for reg in self.store.registrations():
            self.core.restore_registration(reg.device, reg.time_ms, reg.held_ms)

    def _effects(self, effects: list[c.Effect], now_ms: int) -> Handled:
        """Carry out ``effects``: their store writes in one transaction, then what to publish and ack."""
        out = Handled()
        accepted: list[tuple[bytes, bytes, int, int, str, int]] = []
        accepts: list[tuple[int, Outgoing]] = []          # (index in effects, its verified republish)
        warnings: list[tuple[dict, int]] = []
        certs: list[tuple[bytes, bytes, int]] = []
        held: list[tuple[bytes, bytes, int, dict, int, int]] = []
        settled: list[bytes] = []
        found: list[StoredMessage] = []                   # frames answered from the store: ack and receipt
        in_group: dict[bytes, tuple[bytes, int]] = {}     # frames accepted in this group: hash -> (device, seq)
        statements: list[tuple[bytes, list[bytes]]] = []   # chain statements that match: (hash, covered hashes)
        verified_topics = self._verified_topics
        if len(verified_topics) > DOWN_TOPICS:
            verified_topics.clear()
        for k, e in enumerate(effects):
            if isinstance(e, c.Accept) and e.chain is not None:
                e = effects[k] = self._chain_checked(e, effects[:k], statements, now_ms)
            if isinstance(e, c.Refuse) and e.code == c.REPLAY and e.reply_topic is not None:
                dup = self._stored(e.warning_id, e.offender, in_group)
                if dup is not None:
                    effects[k] = c.StoredAlready(e.offender, e.warning_id)
                    found.append(dup)
                    out.decided.append(e.warning_id)
                    continue
            if isinstance(e, c.Accept):
                in_group[e.frame_hash] = (e.device_id, e.seq)
                accepted.append((e.frame, e.device_id, e.seq, e.time_ms, e.topic, now_ms, e.frame_hash))
                topic = verified_topics.get(e.device_id)
                if topic is None:
                    topic = verified_topics[e.device_id] = self.core.verified_topic(e.device_id)
                verified = Outgoing(topic, e.verified_reading(self.core.gateway_name))
                accepts.append((k, verified))
                out.outgoing.append(verified)
                out.decided.append(e.frame_hash)
            elif isinstance(e, c.Refuse):
                if e.report:
                    warnings.append((e.warning_entry(), now_ms))
                if e.reply_topic is not None:
                    out.outgoing.append(Outgoing(e.reply_topic, e.reply()))
                out.decided.append(e.warning_id)
                log.info("refused %s from %s: %d %s", e.warning_id.hex()[:16], e.offender.hex(), e.code, e.text)
            elif isinstance(e, c.Reply):
                out.outgoing.append(Outgoing(e.topic, e.payload))
                if e.frame_hash is not None:
                    out.decided.append(e.frame_hash)
            elif isinstance(e, c.CertIssued):
                certs.append((e.device_id, e.cert, now_ms))
            elif isinstance(e, c.FetchRegistry):
                out.fetch.append(e.device_id)
            elif isinstance(e, c.HeaderUpdated):
                out.outgoing.append(Outgoing(self.core.header_topic(), e.certified, retain=True))
            elif isinstance(e, c.Ignored):
                log.warning("ignored: %s", e.reason)
            elif isinstance(e, c.RegistrationReceived):
                held.append((e.device_id, e.request, e.role, e.attributes, e.time_ms, now_ms))
                log.info("registration request of %s held for an admin", e.device_id.hex())
            elif isinstance(e, c.RegistrationSettled):
                settled.append(e.device_id)
            elif isinstance(e, c.AskStored):
                found.extend(self._asked(e, out))
                out.decided.append(e.frame_hash)
        self.store.write_registrations(held, settled)
        elsewhere: list[tuple[int, bool]] = []
        self.store.write_many(accepted, warnings, certs, elsewhere, statements)   # and what statements cover
        stored = [(row[1], row[2], row[6], verified) for row, (_, verified) in zip(accepted, accepts)]
        if elsewhere:
            self._stored_elsewhere(effects, accepts, elsewhere, out, now_ms)
            gone = {i for i, _ in elsewhere}
            stored = [entry for i, entry in enumerate(stored) if i not in gone]
            for i, same_frame in elsewhere:
                msg = self.store.message_by_hash(accepted[i][6]) if same_frame else None
                if msg is not None:
                    found.append(msg)
        gone = {i for i, _ in elsewhere}
        for i, row in enumerate(accepted):
            if row[0][:1] == b"\xd0" and i not in gone:         # a session frame this process stored
                self.chains.note(row[1], row[2], row[0], row[6])
        stored += [(m.device, m.seq, m.frame_hash, None) for m in found]
        if stored:
            out.outgoing.extend(self._acks(stored, now_ms))
        for m in found:
            batch = self.store.anchored_batch_of(m) if m.id else None
            if batch is not None:
                out.outgoing.extend(batch_receipts(self.store, self.core.site, batch, m.frame_hash))
        if self.observer is not None:
            self.observer.effects(effects, now_ms)
        return out

    def _chain_checked(self, e: c.Accept, earlier: list[c.Effect], statements: list[tuple[bytes, list[bytes]]],
                       now_ms: int) -> c.Accept | c.Refuse:
        """A chain statement that matches the session frames stored (or accepted earlier in the group), noted in
        ``statements``; else its refusal (``CHAIN_MISMATCH``)."""
        try:
            statements.append((e.frame_hash, self.chains.check(e, earlier)))
            return e
        except InvalidProof as exc:
            core = self.core
            return c.Refuse(e.frame_hash, core.gateway_id, e.device_id, now_ms, c.CHAIN_MISMATCH, str(exc)[:c.MAX_DETAIL],
                            core.down_topic(e.device_id), core._reportable(e.device_id, now_ms))

    def _stored(self, frame_hash: bytes, device: bytes, in_group: dict[bytes, tuple[bytes, int]]) -> StoredMessage | None:
        """The stored message (or one accepted earlier in this group: id 0) of ``device`` whose frame hash is
        ``frame_hash``; None when it is not stored."""
        got = in_group.get(frame_hash)
        if got is not None:
            return StoredMessage(0, frame_hash, got[0], got[1], 0, "", 0) if got[0] == device else None
        msg = self.store.message_by_hash(frame_hash)
        return msg if msg is not None and msg.device == device else None

    def _asked(self, e: c.AskStored, out: Handled) -> list[StoredMessage]:
        """The stored frames of a receipt request; a ``not-stored`` reply for each item that is not stored."""
        found = []
        for item in e.items:
            msg = self.store.message_by_seq(e.device_id, item) if isinstance(item, int) \
                else self.store.message_by_hash(item)
            if msg is not None and msg.device == e.device_id:
                found.append(msg)
            else:
                out.outgoing.append(Outgoing(self.core.down_topic(e.device_id),
                                             cbor.dumps({0: stored_ack.KIND_NOT_STORED, 1: item})))
        return found

    def _acks(self, stored: list[tuple[bytes, int, bytes, Outgoing | None]], now_ms: int) -> list[Outgoing]:
        """One ``stored-ack`` per stored (device, seq, frame hash, its verified republish or None), all under
        one signed commit statement that also signs the verified readings (their payloads are replaced by
        their ``signed-verified-reading``)."""
        core = self.core
        acks, signed = commit_group([(dev, seq, h, None if v is None else v.payload) for dev, seq, h, v in stored],
                                    now_ms, core.keys.identity, core.gateway_id, core.site, core.crypto)
        topics = self._down_topics
        if len(topics) > DOWN_TOPICS:
            topics.clear()
        out = []
        for (dev, _, h, verified), ack, reading in zip(stored, acks, signed):
            topic = topics.get(dev)
            if topic is None:
                topic = topics[dev] = core.down_topic(dev)
            if verified is not None:
                verified.payload = reading
            out.append(Outgoing(topic, ack, False, h, 0))       # QoS 0 (positional: half the cost of keywords)
        return out

    def _stored_elsewhere(self, effects: list[c.Effect], accepts: list[tuple[int, Outgoing]],
                          elsewhere: list[tuple[int, bool]], out: Handled, now_ms: int) -> None:
        """Accepted frames whose (device, seq) another gateway process sharing the store had already
        stored: the same frame is answered with its ack and receipt (by the caller); a different frame
        under a taken seq is refused as a replay and reported. Neither is republished."""
        warnings = []
        for i, same_frame in elsewhere:
            k, verified = accepts[i]
            e = effects[k]
            assert isinstance(e, c.Accept)
            out.outgoing.remove(verified)
            if same_frame:
                effects[k] = c.StoredAlready(e.device_id, e.frame_hash)
                continue
            refusal = c.Refuse(e.frame_hash, self.core.gateway_id, e.device_id, now_ms, c.REPLAY,
                               "sequence number %d already taken, or below the replay window, at another gateway process"
                               % e.seq,
                               self.core.down_topic(e.device_id))
            effects[k] = refusal
            out.outgoing.append(Outgoing(refusal.reply_topic, refusal.reply()))
            if refusal.report:
                warnings.append((refusal.warning_entry(), now_ms))
        if warnings:
            self.store.write_many(warnings=warnings)

    def _feed(self, item: tuple, now_ms: int) -> list[c.Effect]:
        kind = item[0]
        if kind == "frame":
            return self.core.on_frame(item[1], item[2], now_ms, item[3] if len(item) > 3 else None)
        if kind == "registry":
            effects = self.core.on_registry_proof(item[2], now_ms, item[1])
            if self.observer is not None:
                self.observer.registry_updated(item[1])
            return effects
        if kind == "header":
            return self.core.on_header(item[1], now_ms)
        if kind == "tick":
            return self.core.tick(now_ms)
        if kind == "block":
            return self.core.on_block(item[1], item[2], now_ms)
        if kind == "gap":
            return self.core.on_gap(item[1], now_ms)
        raise ValueError("unknown input %r" % (kind,))

    def handle_many(self, items: list[tuple], now_ms: int) -> Handled:
        """Feed several inputs in order: ``("frame", topic, payload[, its SHA-256])``, ``("registry", device_id, proof)``,
        ``("header", certified)``, ``("block", certified, txs)``, ``("gap", certified)``, ``("tick",)``.

        Their store writes are committed together (one transaction) before this returns, so every
        frame in ``decided`` may be acknowledged.
        """
        return self.commit(self.check_many(items, now_ms))

    def check_many(self, items: list[tuple], now_ms: int) -> Checked:
        """The checks of ``handle_many`` alone: the core's state moves on, nothing is stored or published.

        ``commit`` of the result must follow, in the same order as the groups were checked, before any
        of its frames is acknowledged; it may run on another thread while the next group is checked.
        """
        if self.observer is not None:
            frames = [(item[1], item[2], item[3] if len(item) > 3 else _frame_hash(item[2]))
                      for item in items if item[0] == "frame"]
            if frames:
                self.observer.frames(frames, now_ms)
        if self.verifier is not None:
            self.verifier.prime(self.core.signature_checks([(item[1], item[2]) for item in items
                                                             if item[0] == "frame"]))
        effects: list[c.Effect] = []
        for item in items:
            effects.extend(self._feed(item, now_ms))
        return Checked(effects, now_ms)

    def commit(self, checked: Checked) -> Handled:
        """Store the writes of a checked group in one transaction; then what to publish and acknowledge."""
        return self._effects(checked.effects, checked.now_ms)

    def handle_frame(self, topic: str, payload: bytes, now_ms: int) -> Handled:
        return self.handle_many([("frame", topic, payload)], now_ms)

    def handle_registry(self, dev: bytes, proof: object, now_ms: int) -> Handled:
        return self.handle_many([("registry", dev, proof)], now_ms)

    def tick(self, now_ms: int) -> Handled:
        return self.handle_many([("tick",)], now_ms)


def sign_statement(root: bytes, count: int, time_ms: int, private_key: bytes, gateway_id: bytes, site: str,
                   backend: Any = None) -> bytes:
    """A ``commit-statement`` (docs/protocol.md, "Delivery") over the root of ``count`` ack entries."""
    return cose.sign1(cbor.dumps({1: root, 2: count, 3: time_ms}), private_key, gateway_id,
                      stored_ack.statement_aad(site), backend)


def commit_group(stored: list[tuple[bytes, int, bytes, bytes | None]], time_ms: int, private_key: bytes,
                 gateway_id: bytes, site: str, backend: Any = None) -> tuple[list[bytes], list[bytes | None]]:
    """The ``stored-ack`` of each stored (device id of 16 bytes, seq, frame hash, its ``verified-reading`` or
    None) and the ``signed-verified-reading`` of each reading (None where there is none), all under one
    commit statement (docs/protocol.md, "Delivery" and "Signed republish"): the ack entry of a frame with
    a reading ends with the reading's SHA-256, so one signature binds (device, seq, frame hash) for the
    device and (reading, frame hash) for its subscribers."""
    head = cbor_head
    sha256 = hashlib.sha256
    seqs = [head(0, seq) for _, seq, _, _ in stored]
    digests = [None if r is None else sha256(r).digest() for _, _, _, r in stored]
    # merkle.leaf_hash of each stored_ack.entry, the entry encoded in place
    leaves = [sha256(b"".join((b"\x00\x83\x50", dev, s, b"\x58\x20", h))).digest() if d is None
              else sha256(b"".join((b"\x00\x84\x50", dev, s, b"\x58\x20", h, b"\x58\x20", d))).digest()
              for (dev, _, h, _), s, d in zip(stored, seqs, digests)]
    root, proofs = encoded_proofs_of_leaves(leaves)
    statement = sign_statement(root, len(leaves), time_ms, private_key, gateway_id, site, backend)
    item = head(2, len(statement)) + statement
    tail = b"\x05" + item
    arrays = [head(4, n) for n in range((len(leaves) - 1).bit_length() + 1)]      # up to the tree's depth
    acks: list[bytes] = []
    signed: list[bytes | None] = []
    for i, ((_, _, h, reading), s, d, (count, path)) in enumerate(zip(stored, seqs, digests, proofs)):
        index = head(0, i)
        proof = arrays[count] + path
        if reading is None:
            acks.append(b"".join((b"\xa6\x00\x05\x01\x58\x20", h, b"\x02", s, b"\x03", index, b"\x04", proof, tail)))
            signed.append(None)
            continue
        if reading[:1] != b"\xa6":
            raise ValueError("a verified-reading is a CBOR map of 6 entries")
        acks.append(b"".join((b"\xa7\x00\x05\x01\x58\x20", h, b"\x02", s, b"\x03", index, b"\x04", proof, tail,
                              b"\x06\x58\x20", d)))
        signed.append(b"".join((b"\xa7", memoryview(reading)[1:], b"\x07\x83", index, proof, item)))
    return acks, signed


def _frame_hash(payload: Any) -> bytes:
    """SHA-256 of a frame as the checks take it (anything but bytes is the empty frame)."""
    return c.sha256(bytes(payload) if isinstance(payload, (bytes, bytearray)) else b"")


def fetch_registry(ledger: Ledger, dev: bytes) -> object | None:
    """The ledger's record proof of device ``dev`` (checked by the core, not here), or None."""
    try:
        res = ledger.record(RECORD_DEVICE, dev)
    except Exception as exc:  # noqa: BLE001 - ledger unavailable; the core times the frame out
        log.warning("registry lookup failed: %s", exc)
        return None
    if not isinstance(res, dict) or not res.get("ok"):
        return None
    return res.get("proof")


def fetch_header(ledger: Ledger) -> bytes | None:
    try:
        res = ledger.latest()
    except Exception as exc:  # noqa: BLE001
        log.warning("header lookup failed: %s", exc)
        return None
    if not isinstance(res, dict) or not res.get("ok"):
        return None
    return cbor.dumps(res["certified_header"])
