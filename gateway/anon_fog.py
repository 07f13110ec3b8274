"""The fog's side of anonymous sessions (docs/protocol.md, "Anonymous sessions"), sans-I/O like ``checks``.

``AnonFog.on_request`` takes an anon-request from the site's request topic and either refuses it
(``AnonRefused``, with an encrypted ``AnonReply`` when the request could be read) or asks the ledger to
spend the certificate (``AnonSpend``: an anon-spend transaction). ``on_spend_result`` takes the
ledger's answer: applied, shown by a record proof of the spent record this very transaction wrote, the
fog makes the session key and sends it to the device (``AnonReply``) and, encrypted to the cloud's
escrow key, to the cloud (``AnonGrant``); refused, the device gets the ledger's reason. Both ledger
facts the fog relies on (the certificate's point, the spend) come as record proofs under headers
certified by 2f+1 of the validators it trusts (``spv.verify_record_proof``), so one lying ledger node
can delay or refuse a session but not grant one. ``AnonService`` runs a fog against a ledger client.

A request passes, in order: size and form (malformed) -> ECIES tag with the topic as aad (bad-tag) ->
time within the skew (clock-skew) -> its C1 not seen before (anon-replay) -> a token of the fog's bucket
for the checks that cost signatures (rate-limited) -> a proved certificate record for its id
(anon-unknown-certificate; ledger-unavailable) -> primaryHash not in the fog's table (anon-spent-primary,
algorithm 2) -> the Schnorr proof (anon-bad-proof); then the contract checks secondaryHash
(anon-spent-secondary, algorithm 3) and the proof again.

Protects against: a certificate used twice at this fog (primaryHash, kept in ``AnonStore`` across
restarts; marked only once a proof verified, so nobody can burn another's certificate with a forged
proof) or at two fogs (the ledger's secondaryHash); replayed requests; a session key reaching the cloud
or the device before both tables and both proof checks passed; a flood of requests that name public
certificate ids with forged proofs costing more than ``checks_per_s`` checks (the bucket is the fog's,
not a device's: a request does not say whose it is, so such a flood delays every device alike).

What the fog keeps (``AnonStore``): the primaryHash of each spent certificate and SHA-256(C1) of recent
requests; nothing names a device, and it cannot open the escrow (it holds no escrow key).
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable

from ledgerlink.core import cbor, cose, ecies, schnorr_zk
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import InvalidTag, LedgerlinkError
from ledgerlink.protocol import anon_wire as aw, spv
from ledgerlink.gateway.checks import TokenBucket
from ledgerlink.protocol.codes import (REASON_BAD_TAG, REASON_CLOCK_SKEW, REASON_LEDGER_UNAVAILABLE, REASON_MALFORMED,
                                       REASON_RATE_LIMITED, device_id)
from ledgerlink.protocol.ledger_tx import (RECORD_ANON_CERT, RECORD_ANON_SPENT, REASON_ANON_BAD_PROOF,
                                           REASON_ANON_REPLAY, REASON_ANON_SPENT_PRIMARY,
                                           REASON_ANON_UNKNOWN_CERTIFICATE, anon_spend_tx, state_key, tx_id)


@dataclass
class AnonReply:
    """An encrypted anon-response to publish on the request's reply topic."""

    topic: str
    payload: bytes


@dataclass
class AnonRefused:
    """A refused request, for counting (``reason`` as in docs/protocol.md)."""

    reason: int
    detail: str


@dataclass
class AnonSpend:
    """Submit ``tx`` (anon-spend) and call ``on_spend_result(tx_id, code)`` with the ledger's result."""

    tx: bytes
    tx_id: bytes


@dataclass
class AnonGrant:
    """The signed anon-grant for the cloud: the session key, encrypted to its escrow key, and the escrow."""

    topic: str
    payload: bytes


class AnonStore:
    """The fog's tables in SQLite: ``anon_primary`` (primaryHash of spent certificates) and ``anon_seen``
    (SHA-256 of recent requests' C1, until they are too old to pass the time check)."""

    def __init__(self, path: str = ":memory:") -> None:
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS anon_primary (hash BLOB PRIMARY KEY, at_ms INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS anon_seen (hash BLOB PRIMARY KEY, forget_ms INTEGER NOT NULL)")
        self.db.commit()

    def spent(self, primary: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM anon_primary WHERE hash = ?", (primary,)).fetchone() is not None

    def mark_spent(self, primary: bytes, now_ms: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO anon_primary VALUES (?, ?)", (primary, now_ms))
        self.db.commit()

    def seen(self, request: bytes, now_ms: int) -> bool:
        row = self.db.execute("SELECT forget_ms FROM anon_seen WHERE hash = ?", (request,)).fetchone()
        return row is not None and row[0] > now_ms

    def mark_seen(self, request: bytes, forget_ms: int, now_ms: int) -> None:
        self.db.execute("DELETE FROM anon_seen WHERE forget_ms <= ?", (now_ms,))
        self.db.execute("INSERT OR REPLACE INTO anon_seen VALUES (?, ?)", (request, forget_ms))
        self.db.commit()

    def rows(self) -> list[tuple[str, tuple]]:
        """Every row kept, as (table, row)."""
        out = [("anon_primary", r) for r in self.db.execute("SELECT hash, at_ms FROM anon_primary ORDER BY hash")]
        return out + [("anon_seen", r) for r in self.db.execute("SELECT hash, forget_ms FROM anon_seen ORDER BY hash")]


class _Refusal(Exception):
    def __init__(self, reason: int, detail: str, reply: bool) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        self.reply = reply


@dataclass
class _Pending:
    reply_topic: str
    response_keys: tuple
    c1: bytes
    escrow: tuple
    anon_id: bytes


class AnonFog:
    """A fog node's anonymous-session service for ``site``.

    ``ecies_private``: the fog's request key (its public key is what devices encrypt to);
    ``identity_private``: its ledger key (signs anon-spend transactions and grants); ``cert_source(anon_id)``
    gives a ledger record proof of the anon-cert record of ``anon_id`` (present or absent), checked
    against ``validator_keys``; it may raise (the ledger is not reachable).
    """

    def __init__(self, site: str, chain_id: str, validator_keys: list[bytes], ecies_private: bytes,
                 identity_private: bytes, cloud_public: bytes, cert_source: Callable[[bytes], Any], store: AnonStore,
                 rng: Callable[[int], bytes], max_skew_ms: int = 30_000, session_lifetime_s: int = 3600,
                 checks_per_s: float = 200.0, checks_burst: float = 400.0, backend: Any = None,
                 group_key: bytes | None = None) -> None:
        self.site = site
        self.chain_id = chain_id
        self.validator_keys = list(validator_keys)
        self.group_key = group_key          # the set's FROST group key, when its headers name one
        self._ecies = ecies_private
        self._identity = identity_private
        self.crypto = get_backend(backend)
        self.gateway_id = device_id(self.crypto.public_key(identity_private, True))
        self.cloud_public = cloud_public
        self.cert_source = cert_source
        self.store = store
        self.rng = rng
        self.max_skew_ms = max_skew_ms
        self.session_lifetime_s = session_lifetime_s
        self.pending: dict[bytes, _Pending] = {}
        self.bucket = TokenBucket(checks_per_s, checks_burst, 0)

    @property
    def public_key(self) -> bytes:
        """The key devices encrypt their requests to (compressed)."""
        return self.crypto.public_key(self._ecies, True)

    def on_request(self, topic: str, payload: Any, now_ms: int) -> list:
        """Check an anon-request; never raises for bad input."""
        keys = None
        try:
            if topic != aw.request_topic(self.site):
                raise _Refusal(REASON_MALFORMED, "not this site's anonymous request topic", False)
            try:
                c1, c2, c3 = aw.decode_request(payload)
                z = ecies.shared(self._ecies, c1, self.crypto)
            except LedgerlinkError as exc:
                raise _Refusal(REASON_MALFORMED, "bad anon-request: %s" % exc, False) from None
            try:
                body = ecies.open_sealed(ecies.derive(z, c1, aw.REQUEST_INFO, self.crypto), c2, c3, topic.encode(),
                                         self.crypto)
            except InvalidTag:
                raise _Refusal(REASON_BAD_TAG, "request does not open under the fog's key", False) from None
            try:
                anon_id, proof, time_ms, reply_tag, escrow = aw.decode_request_body(body)
            except LedgerlinkError as exc:
                raise _Refusal(REASON_MALFORMED, "bad anon-request-body: %s" % exc, False) from None
            keys = ecies.derive(z, c1, aw.RESPONSE_INFO, self.crypto)
            reply_topic = aw.reply_topic(self.site, reply_tag)
            return self._check(anon_id, proof, time_ms, c1, escrow, reply_topic, keys, now_ms)
        except _Refusal as r:
            out: list = [AnonRefused(r.reason, r.detail)]
            if r.reply and keys is not None:
                out.append(self._reply(reply_topic, keys, aw.encode_response_body(r.reason)))
            return out

    def _check(self, anon_id: bytes, proof: bytes, time_ms: int, c1: bytes, escrow: tuple, reply_topic: str,
               keys: tuple, now_ms: int) -> list:
        if abs(time_ms - now_ms) > self.max_skew_ms:
            raise _Refusal(REASON_CLOCK_SKEW, "request time is %d ms off" % (time_ms - now_ms), True)
        seen = hashlib.sha256(c1).digest()
        if self.store.seen(seen, now_ms):
            raise _Refusal(REASON_ANON_REPLAY, "request seen before", False)
        self.store.mark_seen(seen, now_ms + 2 * self.max_skew_ms, now_ms)
        if not self.bucket.take(now_ms):
            raise _Refusal(REASON_RATE_LIMITED, "too many anonymous requests", True)
        point = self._proved_record(RECORD_ANON_CERT, anon_id, lambda: self.cert_source(anon_id))
        if point is not None:
            point = point.get(1) if isinstance(point, dict) else None
            if not isinstance(point, bytes) or len(point) != 33:
                raise _Refusal(REASON_LEDGER_UNAVAILABLE, "the certificate record is malformed", True)
        if point is None:
            raise _Refusal(REASON_ANON_UNKNOWN_CERTIFICATE, "no dynamic certificate with this id", True)
        primary = aw.primary_hash(anon_id)
        if self.store.spent(primary):
            raise _Refusal(REASON_ANON_SPENT_PRIMARY, "certificate already spent at this fog", True)
        try:
            schnorr_zk.verify(point, proof, anon_id, aw.proof_context(c1))
        except LedgerlinkError:
            raise _Refusal(REASON_ANON_BAD_PROOF, "proof of the certificate's secret does not verify", True) from None
        self.store.mark_spent(primary, now_ms)
        tx = anon_spend_tx(self.chain_id, self._identity, anon_id, proof, c1, now_ms, backend=self.crypto,
                           rng=self.rng)
        txid = tx_id(tx)
        self.pending[txid] = _Pending(reply_topic, keys, c1, escrow, anon_id)
        return [AnonSpend(tx, txid)]

    def _proved_record(self, kind: int, record_id: bytes, fetch: Callable[[], Any]) -> dict | None:
        """The record of (kind, record_id) from a record proof ``fetch()`` gives, checked under a certified
        header; None when the proof shows it absent; _Refusal(ledger-unavailable) for anything else."""
        try:
            _, key, value = spv.verify_record_proof(fetch(), self.chain_id, self.validator_keys, self.crypto,
                                                   self.group_key)
            if key != state_key(kind, record_id):
                raise LedgerlinkError("the proof is of another record")
            return None if value is None else cbor.loads(value)
        except (LedgerlinkError, ConnectionError, OSError, ValueError, TypeError, KeyError) as exc:
            raise _Refusal(REASON_LEDGER_UNAVAILABLE, "no proved ledger record: %s" % exc, True) from None

    def on_spend_result(self, txid: bytes, code: int, now_ms: int, spent_proof: Any = None) -> list:
        """The ledger's answer to the anon-spend ``txid``: ``code`` 0 (applied) with ``spent_proof``, a record
        proof of the spent record it wrote, or a refusal code. Answers the device, and the cloud on success."""
        pending = self.pending.pop(txid, None)
        if pending is None:
            return []
        if code == 0:
            try:
                spent = self._proved_record(RECORD_ANON_SPENT, aw.secondary_hash(pending.anon_id), lambda: spent_proof)
            except _Refusal as r:
                spent, code = None, r.reason
            else:
                if spent is None or spent.get(1) != self.gateway_id or spent.get(3) != txid:
                    code = REASON_LEDGER_UNAVAILABLE
        if code != 0:
            return [AnonRefused(code, "the ledger refused the spend"),
                    self._reply(pending.reply_topic, pending.response_keys, aw.encode_response_body(code))]
        key, base_iv = self.rng(aw.SESSION_KEY_LEN), self.rng(aw.SESSION_IV_LEN)
        session_id = self.rng(aw.SESSION_ID_LEN)
        valid_until_s = now_ms // 1000 + self.session_lifetime_s
        body = aw.encode_response_body(aw.RESULT_OK, (key, base_iv, session_id, valid_until_s), txid)
        box = ecies.encrypt(self.cloud_public, key + base_iv, aw.GRANT_INFO, session_id, self.rng, self.crypto)
        grant = aw.encode_grant_payload(session_id, box, pending.c1, pending.escrow, txid, valid_until_s,
                                        pending.anon_id)
        signed = cose.sign1(grant, self._identity, self.gateway_id, aw.GRANT_AAD, self.crypto)
        return [self._reply(pending.reply_topic, pending.response_keys, body),
                AnonGrant(aw.grant_topic(self.site), signed)]

    def _reply(self, topic: str, keys: tuple, body: bytes) -> AnonReply:
        c2, c3 = ecies.seal(keys, body, topic.encode(), self.crypto)
        return AnonReply(topic, aw.encode_response(c2, c3))


class AnonService:
    """A fog run against a ledger client (``LedgerClient`` or anything with its ``submit`` and ``record``):
    ``handle`` takes an anon-request and returns the (topic, payload) pairs to publish, having spent the
    certificate on the ledger in between. Refusals are counted in ``refused`` by reason."""

    def __init__(self, fog: AnonFog, ledger: Any, wait_ms: int = 10_000) -> None:
        self.fog = fog
        self.ledger = ledger
        self.wait_ms = wait_ms
        self.refused: dict[int, int] = {}
        fog.cert_source = self._cert_proof

    def _cert_proof(self, anon_id: bytes) -> Any:
        return self.ledger.record(RECORD_ANON_CERT, anon_id)["proof"]

    def _spend(self, effect: AnonSpend, now_ms: int) -> list:
        spent = aw.secondary_hash(self.fog.pending[effect.tx_id].anon_id)
        try:
            answer = self.ledger.submit(effect.tx, self.wait_ms)
            code = answer.get("code", REASON_LEDGER_UNAVAILABLE) if answer.get("ok") else REASON_LEDGER_UNAVAILABLE
            if answer.get("status") not in ("committed", "refused"):
                code = REASON_LEDGER_UNAVAILABLE
            proof = self.ledger.record(RECORD_ANON_SPENT, spent)["proof"] if code == 0 else None
        except (ConnectionError, OSError, TimeoutError, KeyError):
            code, proof = REASON_LEDGER_UNAVAILABLE, None
        return self.fog.on_spend_result(effect.tx_id, code, now_ms, proof)

    def handle(self, topic: str, payload: bytes, now_ms: int) -> list[tuple[str, bytes]]:
        effects = self.fog.on_request(topic, payload, now_ms)
        out = []
        for effect in effects:
            if isinstance(effect, AnonSpend):
                effects = effects + self._spend(effect, now_ms)
        for effect in effects:
            if isinstance(effect, (AnonReply, AnonGrant)):
                out.append((effect.topic, effect.payload))
            elif isinstance(effect, AnonRefused):
                self.refused[effect.reason] = self.refused.get(effect.reason, 0) + 1
        return out
