"""The ledger state machine: a deterministic map from (state, block of transactions) to a new state.

The state is a set of CBOR records in a sparse Merkle tree (``ledgerlink.core.smt``) under keys
``state_key(kind, id)``; its root goes into every block header. What it protects against and how:

- forged or altered transactions: each is a COSE_Sign1 verified against the submitter's registered key,
  with the chain id bound in the external_aad (tests: wrong key, altered bytes, unknown submitter,
  other chain);
- replay: a (submitter, nonce) record is written with every applied transaction and a second use is
  refused; the signed time must lie within the chain's skew window of the block time (tests: replayed
  nonce, same tx twice in one block, stale and future times);
- unauthorised changes: each contract checks the submitter's role and status (tests: every role rule,
  banned submitter);
- partial application: each transaction runs in its own journal, merged only when it succeeds; a block
  runs in a journal over the committed state, kept until ``commit`` (tests: root unchanged after refused
  transactions and after ``rollback``; a mixed block applies exactly its good transactions);
- divergence between replicas: contracts use only the transaction, the state and the block height and
  time (tests: replicas fed the same random valid/invalid sequences keep identical roots);
- malformed input: any bytes, of any size, give a reason code, never an exception (hypothesis tests).
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Mapping, Sequence

from ledgerlink.core import cbor, cose, smt
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import LedgerlinkError

from ledgerlink.ledger.state.codes import DeviceStatus, Reason, RecordKind as RK, Role, reason_text
from ledgerlink.ledger.state.contracts import (CONTRACTS, Journal, Refusal, TxContext, check_attributes,
                                               device_record, is_uint)
from ledgerlink.protocol.validator_set import keys_of
from ledgerlink.ledger.state.encoding import (NONCE_LEN, bstr_head, compress_pubkey, device_id, split_sign1,
                                              state_key, tx_aad, tx_id, tx_tbs_prefix)

DEFAULT_MAX_SKEW_MS = 60_000
DEFAULT_MAX_TX_BYTES = cose.MAX_FRAME
CHAIN_RECORD_ID = 0


class StateError(Exception):
    """The caller broke the execute/commit/rollback protocol (wrong height, nothing pending, ...)."""


class TxResult:
    """Outcome of one transaction; unpacks as ``(ok, code)`` and also carries ``text`` and ``tx_id``."""

    __slots__ = ("ok", "code", "text", "tx_id")

    def __init__(self, ok: bool, code: int, text: str, txid: bytes) -> None:
        self.ok = ok
        self.code = int(code)
        self.text = text
        self.tx_id = txid

    def __iter__(self) -> Iterator[Any]:
        return iter((self.ok, self.code))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TxResult):
            return (self.ok, self.code, self.text, self.tx_id) == (other.ok, other.code, other.text, other.tx_id)
        if isinstance(other, tuple):
            return (self.ok, self.code) == other
        return NotImplemented

    def __repr__(self) -> str:
        return "TxResult(ok=%r, code=%d, text=%r)" % (self.ok, self.code, self.text)


class _Pending:
    def __init__(self, height: int, time_ms: int, writes: dict[bytes, bytes], results: list[TxResult],
                 root: bytes, undo: list[tuple[bytes, bytes | None]], txs: list[bytes]) -> None:
        self.height = height
        self.time_ms = time_ms
        self.writes = writes
        self.results = results
        self.root = root
        self.undo = undo
        self.txs = txs


class _Parsed:
    """What a transaction's bytes alone determine, so a transaction checked at admission is not
    decoded again when its block runs. ``early`` is a refusal due before the submitter lookup, ``late``
    one due after the signature check (the order of ``_run``'s checks is kept); ``verified`` holds the
    public keys its signature was found valid under."""

    __slots__ = ("early", "kid", "tbs", "sig", "late", "body", "when", "nonce", "contract", "txid",
                 "verified", "nonce_key")

    def __init__(self) -> None:
        self.early: tuple[int, str] | None = None
        self.late: tuple[int, str] | None = None
        self.kid: bytes | None = None
        self.tbs = self.sig = self.body = self.when = self.nonce = self.contract = self.txid = None
        self.nonce_key: bytes | None = None
        self.verified: set[bytes] = set()


PARSED_CACHE_SIZE = 20000
RECORD_CACHE_SIZE = 4096
_OK_TEXT = reason_text(Reason.OK)
_DEVICE = int(RK.DEVICE)
_NONCE = int(RK.NONCE)


def _genesis_entries(config: Mapping[str, Any], name: str, role: int | None) -> list[tuple[bytes, int, dict]]:
    out = []
    for entry in config.get(name, ()):
        if isinstance(entry, (bytes, bytearray)):
            key, entry_role, attrs = bytes(entry), role, {}
        else:
            key = bytes(entry["key"])
            entry_role = entry.get("role", role)
            attrs = dict(entry.get("attributes", {}))
        if entry_role is None or not 1 <= int(entry_role) <= 7:
            raise ValueError("genesis %s entry needs a role in 1..7" % name)
        try:
            out.append((compress_pubkey(key), int(entry_role), check_attributes(attrs)))
        except (LedgerlinkError, Refusal) as exc:
            raise ValueError("bad genesis %s entry: %s" % (name, exc)) from None
    return out


class LedgerState:
    """Committed ledger state plus at most one executed, not yet committed block.

    Create with ``LedgerState.genesis(config)``. The consensus core calls ``execute`` (which leaves
    the committed state untouched and returns the state root the block would give), then ``commit``
    or ``rollback``. Queries (``get_record``, ``prove``, ``state_root``) always see the committed state.
    """

    def __init__(self, records: dict[bytes, bytes], backend: Any) -> None:
        self._records = records
        self._backend = get_backend(backend)
        self._smt = smt.SparseMerkleTree()
        for key, value in records.items():
            self._smt.set(key, value)
        self._root = self._smt.root()
        chain = cbor.loads(records[state_key(RK.CHAIN, CHAIN_RECORD_ID)])
        self._chain: dict = chain
        self._aad = tx_aad(chain[1])
        self._tbs_prefix = tx_tbs_prefix(chain[1])
        self.height: int | None = None
        self.last_time: int = chain[4]
        self._pending: _Pending | None = None
        self._results: dict[int, list[TxResult]] = {}
        self._parsed: dict[bytes, _Parsed] = {}
        self._submitters: dict[bytes, dict] = {}
        self._device_keys: dict[bytes, bytes] = {}                # device id -> its record's state key
        self._nonce_record: tuple[int, bytes] = (-1, b"")
        self._committed_view = Journal(records.get, lazy=True)     # never written: dry runs get their own

    # -- construction --------------------------------------------------------------------------------

    @classmethod
    def genesis(cls, config: Mapping[str, Any], backend: Any = None) -> "LedgerState":
        """Initial state from ``config``.

        Keys: ``chain_id`` (str, required), ``admins`` (at least one) and ``validators``: lists of public
        keys or of ``{"key": pubkey, "attributes": {...}}``; ``devices``: optional list of
        ``{"key", "role", "attributes"}``; ``time_ms`` (genesis time, default 0), ``max_skew_ms``
        (default 60000), ``max_tx_bytes`` (default and maximum: the 4096-byte COSE frame limit), and with
        threshold certificates ``group_key`` (33 bytes) and ``verifying_shares`` (33 bytes each, validator
        order), recorded in the chain record as fields 6 and 7. Raises ValueError on a bad config.
        """
        chain_id = config.get("chain_id")
        if not isinstance(chain_id, str) or not 1 <= len(chain_id) <= 64:
            raise ValueError("chain_id must be a text of 1 to 64 characters")
        genesis_time = int(config.get("time_ms", 0))
        skew = int(config.get("max_skew_ms", DEFAULT_MAX_SKEW_MS))
        max_tx = int(config.get("max_tx_bytes", DEFAULT_MAX_TX_BYTES))
        if genesis_time < 0 or skew < 0 or not 256 <= max_tx <= cose.MAX_FRAME:
            raise ValueError("time_ms and max_skew_ms must be >= 0 and max_tx_bytes in [256, %d]"
                             % cose.MAX_FRAME)
        admins = _genesis_entries(config, "admins", Role.ADMIN)
        validators = _genesis_entries(config, "validators", Role.VALIDATOR)
        others = _genesis_entries(config, "devices", None)
        if not admins:
            raise ValueError("genesis needs at least one admin key")
        records: dict[bytes, bytes] = {}
        for key, role, attrs in admins + validators + others:
            dev = device_id(key)
            skey = state_key(RK.DEVICE, dev)
            if skey in records:
                raise ValueError("genesis lists device %s twice" % dev.hex())
            records[skey] = cbor.dumps(device_record(dev, key, role, attrs, genesis_time, b""))
        chain = {1: chain_id, 2: skew, 3: max_tx, 4: genesis_time, 5: [key for key, _, _ in validators]}
        group_key, verifying = config.get("group_key"), config.get("verifying_shares")
        if group_key is not None:           # the validators' FROST group key and verifying shares
            if not isinstance(group_key, bytes) or len(group_key) != 33 or not isinstance(verifying, list) \
                    or len(verifying) != len(validators) \
                    or any(not isinstance(v, bytes) or len(v) != 33 for v in verifying):
                raise ValueError("group_key must be 33 bytes with one 33-byte verifying share per validator")
            chain[6] = group_key
            chain[7] = list(verifying)
        records[state_key(RK.CHAIN, CHAIN_RECORD_ID)] = cbor.dumps(chain)
        return cls(records, backend)

    # -- queries -------------------------------------------------------------------------------------

    @property
    def chain_id(self) -> str:
        return self._chain[1]

    @property
    def max_skew_ms(self) -> int:
        return self._chain[2]

    @property
    def max_tx_bytes(self) -> int:
        return self._chain[3]

    def state_root(self) -> bytes:
        """Sparse Merkle root of the committed state."""
        return self._root

    def get_record_bytes(self, kind: int, record_id: Any) -> bytes | None:
        return self._records.get(state_key(kind, record_id))

    def get_record(self, kind: int, record_id: Any) -> dict | None:
        """The committed record decoded from CBOR, or None."""
        raw = self.get_record_bytes(kind, record_id)
        return None if raw is None else cbor.loads(raw)

    def prove(self, kind: int, record_id: Any) -> tuple[bytes, bytes | None, Any]:
        """(state key, record bytes or None, smt proof) against ``state_root()``."""
        key = state_key(kind, record_id)
        pending = self._pending
        if pending is None or not pending.undo:
            return key, self._records.get(key), self._smt.prove(key)
        self._smt_undo(pending.undo)
        try:
            return key, self._records.get(key), self._smt.prove(key)
        finally:
            for k, value in pending.writes.items():
                self._smt.set(k, value)

    def device_status(self, dev: bytes) -> dict | None:
        """Registry view of a device: id, role, status, key, attributes and ban/unban history."""
        rec = self.get_record(RK.DEVICE, dev)
        if rec is None:
            return None
        return {
            "device_id": rec[1], "public_key": rec[2], "role": Role(rec[3]), "attributes": rec[4],
            "status": DeviceStatus(rec[5]), "banned": rec[5] == DeviceStatus.BANNED,
            "registered_at": rec[6], "registered_by": rec[7], "key_version": rec[8],
            "ban": rec.get(9), "unban": rec.get(10), "key_rotated_at": rec.get(11),
        }

    def scheduled_validator_set(self) -> tuple[int, int, tuple[bytes, ...], bytes | None, list | None] | None:
        """(epoch, effective height, keys, group key, verifying shares) of the last validator set change
        committed, or None."""
        latest = self.get_record(RK.VALIDATOR_EPOCH, 0)
        if latest is None:
            return None
        record = self.get_record(RK.VALIDATOR_SET, latest[1])
        return latest[1], latest[2], tuple(keys_of(record[2])), record.get(5), record.get(6)

    def results_of(self, height: int) -> list[TxResult]:
        """Per-transaction results of a committed (or the pending) block; KeyError for other heights."""
        if self._pending is not None and self._pending.height == height:
            return list(self._pending.results)
        return list(self._results[height])

    @property
    def pending_height(self) -> int | None:
        return None if self._pending is None else self._pending.height

    # -- transactions ----------------------------------------------------------------------------------

    def _parse(self, tx: bytes) -> _Parsed:
        """The stateless checks and decoding of ``tx`` (cached by its bytes)."""
        p = self._parsed.get(tx)
        if p is not None:
            return p
        p = _Parsed()
        try:
            self._parse_into(p, tx)
        except Refusal as refusal:
            if p.kid is None:
                p.early = (refusal.code, refusal.text)
            else:
                p.late = (refusal.code, refusal.text)
        if len(self._parsed) >= PARSED_CACHE_SIZE:
            del self._parsed[next(iter(self._parsed))]
        self._parsed[tx] = p
        return p

    def _parse_into(self, p: _Parsed, tx: bytes) -> None:
        if len(tx) > self._chain[3]:
            raise Refusal(Reason.OVERSIZED, "transaction is %d bytes, the limit is %d" % (len(tx), self._chain[3]))
        parts = split_sign1(tx)
        if parts is not None:
            kid, payload, p.sig = parts
            p.tbs = self._tbs_prefix + bstr_head(len(payload)) + payload
        else:
            try:
                msg = cose.decode_sign1(tx)
            except LedgerlinkError:
                raise Refusal(Reason.MALFORMED, "not a COSE_Sign1 with a kid") from None
            kid, payload = msg.kid, msg.payload
            if not isinstance(kid, (bytes, bytearray)) or len(kid) != 16:
                raise Refusal(Reason.MALFORMED, "kid must be a 16-byte device id")
            p.tbs = msg.to_be_signed(self._aad)
            p.sig = msg.signature
        p.kid = bytes(kid)
        p.txid = tx_id(tx)
        try:
            body = cbor.loads(payload)
        except LedgerlinkError:
            raise Refusal(Reason.MALFORMED, "tx-body is not deterministic CBOR") from None
        if not isinstance(body, dict):
            raise Refusal(Reason.MALFORMED, "tx-body must be a map with unsigned integer keys")
        for k in body:
            if (type(k) is not int or not 0 <= k <= cbor.UINT_MAX) and not is_uint(k):
                raise Refusal(Reason.MALFORMED, "tx-body must be a map with unsigned integer keys")
        kind, when, nonce = body.get(1), body.get(2), body.get(3)
        if not is_uint(kind) or not is_uint(when) or not isinstance(nonce, (bytes, bytearray)) \
                or len(nonce) != NONCE_LEN:
            raise Refusal(Reason.MALFORMED, "tx-body needs 1: tx-kind, 2: time-ms, 3: 16-byte nonce")
        contract = CONTRACTS.get(kind)
        if contract is None:
            raise Refusal(Reason.UNKNOWN_TX_KIND, "tx-kind %d is not defined" % kind)
        p.body = body
        p.when = when
        p.nonce = bytes(nonce)
        p.contract = contract
        p.nonce_key = state_key(_NONCE, [p.kid, p.nonce])

    def _submitter(self, view: Journal, kid: bytes) -> dict | None:
        key = self._device_keys.get(kid)
        if key is None:
            if len(self._device_keys) >= RECORD_CACHE_SIZE:
                self._device_keys.clear()
            key = self._device_keys[kid] = state_key(_DEVICE, kid)
        raw = view.get_raw(key)
        if raw is None:
            return None
        rec = self._submitters.get(raw)
        if rec is None:
            if len(self._submitters) >= RECORD_CACHE_SIZE:
                self._submitters.clear()
            rec = self._submitters[raw] = cbor.loads(raw)
        return rec

    def _run(self, tx: Any, view: Journal, height: int, block_time: int) -> bytes:
        """Run ``tx`` in ``view``; return its id (Refusal when it is refused)."""
        p, submitter = self._check_submitter(tx, view, block_time)
        nonce_key = p.nonce_key
        if view.get_raw(nonce_key) is not None:
            raise Refusal(Reason.REPLAY, "nonce already used by this submitter")
        ctx = TxContext(view, self._chain, height, block_time, p.kid, submitter, p.body,
                        p.txid, self._backend)
        p.contract(ctx)
        if self._nonce_record[0] != height:
            self._nonce_record = (height, cbor.dumps({1: height}))
        view.put_raw(nonce_key, self._nonce_record[1])
        return p.txid

    def _check_submitter(self, tx: Any, view: Journal, block_time: int) -> tuple[_Parsed, dict]:
        """Stateless checks, submitter registered and not banned, signature, clock skew."""
        if not isinstance(tx, (bytes, bytearray, memoryview)):
            raise Refusal(Reason.MALFORMED, "a transaction must be bytes")
        p = self._parse(bytes(tx))
        if p.early is not None:
            raise Refusal(*p.early)
        kid = p.kid
        submitter = self._submitter(view, kid)
        if submitter is None:
            raise Refusal(Reason.UNKNOWN_DEVICE, "submitter %s is not registered" % kid.hex())
        if submitter[5] == DeviceStatus.BANNED:
            raise Refusal(Reason.BANNED_DEVICE, "submitter %s is banned" % kid.hex())
        pub = submitter[2]
        if pub not in p.verified:
            try:
                ok = self._backend.verify(pub, p.tbs, p.sig)
            except LedgerlinkError:
                raise Refusal(Reason.MALFORMED, "malformed COSE_Sign1") from None
            if not ok:
                raise Refusal(Reason.BAD_SIGNATURE, "signature does not verify with the submitter's key")
            p.verified.add(pub)
        if p.late is not None:
            raise Refusal(*p.late)
        if abs(p.when - block_time) > self._chain[2]:
            raise Refusal(Reason.CLOCK_SKEW, "tx time %d is more than %d ms from the block time %d"
                          % (p.when, self._chain[2], block_time))
        return p, submitter

    def _apply(self, tx: Any, journal: Journal, height: int, block_time: int,
               block: Journal | None = None) -> TxResult:
        """Run ``tx`` in ``journal``; merge its writes into ``block`` (if given) when it succeeds."""
        try:
            txid = self._run(tx, journal, height, block_time)
        except Refusal as refusal:
            txid = tx_id(tx) if isinstance(tx, (bytes, bytearray, memoryview)) else b""
            return TxResult(False, refusal.code, refusal.text, txid)
        if block is not None:
            block.writes.update(journal.writes)
        return TxResult(True, Reason.OK, _OK_TEXT, txid)

    def check_tx_detail(self, tx: Any, now_ms: int | None = None) -> TxResult:
        """Dry-run ``tx`` against the committed state with block time ``now_ms`` (default: wall clock)."""
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        height = 0 if self.height is None else self.height + 1
        return self._apply(tx, Journal(self._records.get, lazy=True), height, now_ms)

    def precheck_tx(self, tx: Any, now_ms: int | None = None) -> int | None:
        """Reason code that refuses ``tx`` without running its contract (for a transaction another
        validator has already checked in full): form, submitter registered and not banned,
        signature, clock skew. A tx that passes may still fail its contract when its block runs."""
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        try:
            self._check_submitter(tx, self._committed_view, now_ms)
        except Refusal as refusal:
            return refusal.code
        return None

    def check_tx(self, tx: Any, now_ms: int | None = None) -> int | None:
        """Reason code that would refuse ``tx`` now, or None when it would be applied."""
        result = self.check_tx_detail(tx, now_ms)
        return None if result.ok else result.code

    # -- blocks ----------------------------------------------------------------------------------------

    def _smt_undo(self, undo: list[tuple[bytes, bytes | None]]) -> None:
        for key, old in reversed(undo):
            if old is None:
                self._smt.delete(key)
            else:
                self._smt.set(key, old)

    def execute(self, height: int, time_ms: int, txs: Sequence[Any]) -> bytes:
        """Run a block on a working copy; return the state root it gives. Committed state is unchanged.

        A block already pending at the same height is rolled back first. The block's writes go into
        the Merkle tree at once (so ``commit`` costs nothing) and are undone by ``rollback``.
        """
        if self._pending is not None:
            if self._pending.height != height:
                raise StateError("block %d is pending; commit or roll it back first" % self._pending.height)
            self.rollback()
        if not is_uint(height) or (self.height is not None and height != self.height + 1):
            raise StateError("next block height is %s, got %r"
                             % ("any" if self.height is None else self.height + 1, height))
        if not is_uint(time_ms) or time_ms < self.last_time:
            raise StateError("block time %r is before the last block time %d" % (time_ms, self.last_time))
        block = Journal(self._records.get)
        results = [self._apply(tx, Journal(block.get_raw), height, time_ms, block) for tx in txs]
        undo: list[tuple[bytes, bytes | None]] = []
        root = self._root
        if block.writes:
            get = self._records.get
            undo = [(key, get(key)) for key in block.writes]
            try:
                self._smt.update(block.writes.items())
                root = self._smt.root()
            except BaseException:
                self._smt_undo(undo)
                raise
        kept = [bytes(tx) for tx in txs if isinstance(tx, (bytes, bytearray, memoryview))]
        self._pending = _Pending(height, time_ms, block.writes, results, root, undo, kept)
        return root

    def commit(self, height: int) -> bytes:
        """Make the pending block at ``height`` the committed state; return the new state root."""
        pending = self._pending
        if pending is None or pending.height != height:
            raise StateError("no executed block at height %r to commit" % (height,))
        self._records.update(pending.writes)
        self._root = pending.root
        self._results[height] = pending.results
        self.height = height
        self.last_time = pending.time_ms
        self._pending = None
        for tx in pending.txs:
            self._parsed.pop(tx, None)
        return self._root

    def rollback(self) -> None:
        """Drop the pending block (if any); the committed state is what it was."""
        pending = self._pending
        self._pending = None
        if pending is not None and pending.undo:
            self._smt_undo(pending.undo)


__all__ = ["LedgerState", "StateError", "TxResult", "Refusal"]
