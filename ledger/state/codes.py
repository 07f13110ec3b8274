"""The ledger's IntEnum views of the protocol codes (``ledgerlink.protocol.codes`` and ``.ledger_tx``) and its
reason texts.

Reason codes 1-15 share their meaning with the gateway `reason-code` of docs/protocol.md; codes from
20 on are ledger-only. Code 0 means the transaction was applied.
"""

from __future__ import annotations

from enum import IntEnum

from ledgerlink.protocol import codes, ledger_tx


def _view(name: str, prefix: str) -> type[IntEnum]:
    """An IntEnum of the integers named ``prefix + member`` in ``codes`` and ``ledger_tx``."""
    members = {key[len(prefix):]: value for module in (codes, ledger_tx) for key, value in vars(module).items()
               if key.startswith(prefix) and type(value) is int}
    return IntEnum(name, sorted(members.items(), key=lambda m: m[1]), module=__name__)


TxKind = _view("TxKind", "TX_")
Role = _view("Role", "ROLE_")
RecordKind = _view("RecordKind", "RECORD_")     # first element of the state key preimage cbor([record-kind, id])
DeviceStatus = _view("DeviceStatus", "STATUS_")
ImageType = _view("ImageType", "IMAGE_")
Reason = _view("Reason", "REASON_")


REASON_TEXT = {
    Reason.OK: "applied",
    Reason.MALFORMED: "malformed transaction",
    Reason.OVERSIZED: "transaction too large",
    Reason.UNKNOWN_DEVICE: "unknown submitter",
    Reason.BANNED_DEVICE: "submitter is banned",
    Reason.BAD_SIGNATURE: "bad submitter signature",
    Reason.REPLAY: "nonce already used by this submitter",
    Reason.CLOCK_SKEW: "transaction time outside the skew window of the block time",
    Reason.CERTIFICATE_REUSE: "certificate hash already recorded",
    Reason.UNKNOWN_TX_KIND: "unknown transaction kind",
    Reason.INVALID_FIELD: "invalid transaction field",
    Reason.NOT_AUTHORIZED: "submitter role may not submit this transaction",
    Reason.BAD_PROOF_OF_POSSESSION: "proof of possession of the key does not check",
    Reason.ALREADY_EXISTS: "record already exists",
    Reason.UNKNOWN_TARGET: "target device is not registered",
    Reason.WRONG_STATUS: "target device status does not allow this",
    Reason.UNKNOWN_RELEASE: "the stated manifest digest is not a recorded release",
    Reason.WRONG_CLASS: "the stated release is of another device class, component or sequence",
    Reason.STALE_EPOCH: "validator set change is not for the next epoch",
    Reason.SHORT_QUORUM: "validator set change lacks 2f+1 approvals of the current set",
    Reason.DUPLICATE_SIGNER: "validator set change approved twice by one validator",
    Reason.FOREIGN_SIGNER: "validator set change approved by a validator outside the current set",
    Reason.HEIGHT_NOT_FUTURE: "validator set change effective height is not in the future",
    Reason.EMPTY_SET: "new validator set is empty",
    Reason.OVERSIZED_SET: "new validator set is too large",
    Reason.BAD_APPROVAL: "validator set change approval does not verify",
    Reason.CHANGE_PENDING: "a validator set change is pending",
    Reason.MEMBER_MOVED: "a validator of both sets changes index",
}


def reason_text(code: int) -> str:
    """Short text of a ledger reason code ("unknown reason" for codes the ledger does not give)."""
    return REASON_TEXT.get(code, "unknown reason")
