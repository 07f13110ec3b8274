"""Sans-I/O device state machine for CPython: a typed wrapper over ``ledgerlink.protocol.device_protocol``.

The protocol itself (readings signed with the identity key or encrypted under a session key, the
registration request, ECQV session requests and responses, receipts, refusals, commands) is
``DeviceProtocol`` in the portable core, the same code a MicroPython board runs; this module adds
type hints, the CPython crypto backend and the ``SequenceCounter`` over a counter storage
(``load() -> int | None``, ``store(int)``). It does no network or file I/O: the caller moves the bytes.

Protects against (by the portable protocol; see its docstring): nonce reuse and replays of the
device's own frames (sequence numbers are stored before they are handed out, in blocks of
``reserve``, so they never repeat across restarts; a lost counter restarts only under a new session),
forged receipts, forged session responses and forged or replayed commands (seqs kept in a command store).
Tested in tests/device/test_core.py against the gateway's own checks (``GatewayCore``), ``cose``
verification, ledger state from ``DevNet`` and certified headers signed by real validator keys.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping

from ledgerlink.core import cbor
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.core.backend import get_backend
from ledgerlink.protocol.device_protocol import (DEVICE_ID_LEN, KIND_RECEIPT, KIND_REFUSAL, KIND_SESSION, MAX_SEQ,
                                             MODE_SESSION, MODE_SIGNED, NONCE_LEN, RECORD_DEVICE, ROLE_CONTROLLER,
                                             ROLE_GATEWAY, ROLE_SENSOR, STATUS_ACTIVE, TX_ANCHOR, TX_DOMAIN,
                                             CommandResult, DeviceError, Ignored, MemoryRecord, OutFrame, ReceiptResult,
                                             Refused, RegistrationHeld, Session, SessionOpened, device_id_of,
                                             partial_iv)


# --- sequence numbers -------------------------------------------------------------------------------


class MemoryCounter:
    """Counter storage in memory (tests, or devices that re-register after every power cycle);
    ``value`` None reads as a lost store."""

    def __init__(self, value: int | None = 0) -> None:
        self.value = value
        self.stores = 0

    def load(self) -> int | None:
        return self.value

    def store(self, value: int) -> None:
        self.value = value
        self.stores += 1


class SequenceCounter:
    """Strictly increasing sequence numbers 1..2^32-1 that survive restarts.

    The storage holds a high-water mark: every number handed out is at most the stored value, and a
    restart continues above it. With ``reserve`` > 1 the mark is written once per ``reserve`` numbers
    (fewer flash writes); a restart then skips the unused rest of the block. A storage that loads None
    (missing or damaged) makes the counter ``lost``: it restarts at 1, and the protocol refuses to use a
    stored session with it (``DeviceProtocol.restore_session``), so the restart happens under a new session.
    """

    def __init__(self, storage: Any, reserve: int = 16) -> None:
        if reserve < 1:
            raise ValueError("reserve must be at least 1")
        self.storage = storage
        self.reserve = reserve
        mark = storage.load()
        self.lost = mark is None
        if self.lost:
            mark = 0
        elif not cbor.is_uint(mark) or mark > MAX_SEQ:
            raise DeviceError("stored sequence mark %r is out of range" % (mark,))
        self.last = mark
        self.mark = mark

    def advance(self, seq: int) -> None:
        """Make every later number higher than ``seq`` (stored with the next number handed out)."""
        self.last = max(self.last, min(seq, MAX_SEQ))

    def hold(self) -> None:
        """Store the mark now (at least ``last``): a session opened at ``last`` is then kept across a restart
        even when no number was handed out since the store was lost or made."""
        self.mark = max(self.mark, self.last)
        self.storage.store(self.mark)

    def next(self) -> int:
        seq = self.last + 1
        if seq > MAX_SEQ:
            raise DeviceError("sequence numbers exhausted; the device needs a new identity")
        if seq > self.mark:
            self.mark = min(MAX_SEQ, self.last + self.reserve)
            self.storage.store(self.mark)
        self.last = seq
        return seq


# --- the device -------------------------------------------------------------------------------------


class DeviceCore(dp.DeviceProtocol):
    """Protocol state of one device of ``site`` (``DeviceProtocol`` with the CPython backend by default).

    ``private_key``: 32-byte identity key. ``counter``: a ``SequenceCounter``. ``chain_id`` and
    ``validator_keys``: the validator set the device trusts for receipts and record proofs.
    ``ca_public``: the fog CA key that issues session certificates. ``gateway_keys``: optional
    {gateway device-id: identity public key}; when given, receipts need an anchor signed by one of them.
    ``group_key``: the set's FROST group key when the chain has one (threshold-certified headers).
    """

    session: Session | None
    sent: dict[int, bytes]
    controllers: dict[bytes, tuple[bytes, int]]
    command_seqs: dict[bytes, int]

    def __init__(self, private_key: bytes, site: str, counter: SequenceCounter, chain_id: str,
                 validator_keys: Iterable[bytes], ca_public: bytes | None = None,
                 gateway_keys: Mapping[bytes, bytes] | None = None, backend: Any = None,
                 rng: Callable[[int], bytes] | None = None, max_tracked: int = 4096,
                 group_key: bytes | None = None) -> None:
        super().__init__(private_key, site, counter, chain_id, list(validator_keys), ca_public, gateway_keys,
                         get_backend(backend), rng or os.urandom, max_tracked, group_key=group_key)

    def __repr__(self) -> str:
        return "DeviceCore(%s, site=%s)" % (self.device_id.hex(), self.site)

    def registration_request(self, time_ms: int, role: int = ROLE_SENSOR,
                             attributes: Mapping[str, Any] | None = None) -> OutFrame:
        """The registration request (proof of possession, external_aad empty) for the ``reg`` topic."""
        return super().registration_request(time_ms, role, attributes)

    def reading(self, measurements: Mapping[Any, Any], time_ms: int, mode: str = MODE_SIGNED) -> OutFrame:
        """Build the next reading as a signed or session-encrypted frame bound to the ``up`` topic."""
        return super().reading(measurements, time_ms, mode)

    def session_request(self, time_ms: int) -> OutFrame:
        """Start an ECQV session request; a newer request replaces a pending one."""
        return super().session_request(time_ms)

    def handle_down(self, payload: bytes, now_ms: int) -> SessionOpened | ReceiptResult | Refused | Ignored:
        """A ``gateway-reply`` from the ``down`` topic: SessionOpened, ReceiptResult, Refused or Ignored."""
        return super().handle_down(payload, now_ms)

    def handle_session_response(self, resp: Any, now_ms: int) -> SessionOpened | Ignored:
        """Reconstruct the session key from a ``session-response`` and derive the session keys."""
        return super().handle_session_response(resp, now_ms)

    def session_valid(self, now_ms: int, margin_s: int = 0) -> bool:
        return super().session_valid(now_ms, margin_s)

    def session_record(self) -> bytes:
        """Bytes that keep the current session across restarts, with the counter mark it was opened at."""
        return super().session_record()

    def restore_session(self, record: bytes, now_ms: int) -> Session:
        """Take a kept session; a LedgerlinkError when it may not be used (counter lost or below its mark,
        damaged, expired): then delete the record and open a new session."""
        return super().restore_session(record, now_ms)

    def open_commands(self, store: Any, now_ms: int, new_identity: bool = False) -> None:
        """Take the command store (``FileRecord``); commands are refused without one. See the portable docstring
        for the rule after a lost store."""
        super().open_commands(store, now_ms, new_identity)

    def verify_receipt(self, receipt: Any, frame: bytes | None = None) -> ReceiptResult:
        """Check a ``receipt`` map (or its CBOR bytes) against the trusted validator set.

        Without ``frame`` the receipt must be for a frame this device sent and has not had a receipt for.
        """
        return super().verify_receipt(receipt, frame)

    def update_controller(self, record_proof: Any) -> bytes:
        """Take a controller from a proved device record; a banned or absent record removes it."""
        return super().update_controller(record_proof)

    def update_gateway(self, record_proof: Any) -> bytes:
        """Trust a gateway's identity key for anchor signatures from a proved, active gateway record."""
        return super().update_gateway(record_proof)

    def handle_command(self, topic: str, payload: bytes, now_ms: int) -> CommandResult:
        """Check a command (COSE_Sign1 by a controller, external_aad = the ``cmd`` topic); never raises."""
        return super().handle_command(topic, payload, now_ms)


__all__ = [
    "DEVICE_ID_LEN", "KIND_RECEIPT", "KIND_REFUSAL", "KIND_SESSION", "MAX_SEQ", "MODE_SESSION", "MODE_SIGNED",
    "NONCE_LEN", "RECORD_DEVICE", "ROLE_CONTROLLER", "ROLE_GATEWAY", "ROLE_SENSOR", "STATUS_ACTIVE", "TX_ANCHOR",
    "TX_DOMAIN", "CommandResult", "DeviceCore", "DeviceError", "Ignored", "MemoryCounter", "MemoryRecord", "OutFrame",
    "ReceiptResult", "Refused", "RegistrationHeld", "SequenceCounter", "Session", "SessionOpened", "device_id_of", "partial_iv",
]
