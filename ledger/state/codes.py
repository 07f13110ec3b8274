"""Numeric constants of the ledger state machine: tx kinds, roles, record kinds, refusal reasons.

Reason codes 1-14 share their meaning with the gateway `reason-code` of docs/protocol.md; codes from
20 on are ledger-only. Code 0 means the transaction was applied.
"""

from __future__ import annotations

from enum import IntEnum


class TxKind(IntEnum):
    REGISTER = 1
    ROTATE_KEY = 2
    BAN = 3
    UNBAN = 4
    ANCHOR = 5
    CERT_RECORD = 6
    FIRMWARE = 7
    PROVENANCE = 8
    COMMUNICATION = 9
    WARNINGS = 10


class Role(IntEnum):
    SENSOR = 1
    ACTUATOR = 2
    GATEWAY = 3
    VALIDATOR = 4
    ADMIN = 5
    CONTROLLER = 6
    MAINTENANCE = 7


class RecordKind(IntEnum):
    """First element of the state key preimage ``cbor([record-kind, id])``."""

    CHAIN = 0               # id 0: chain configuration written at genesis
    DEVICE = 1              # id device-id
    NONCE = 2               # id [submitter device-id, nonce]
    ANCHOR = 3              # id [gateway device-id, batch-id]
    CERT = 4                # id certificate hash (SHA-256 of the ecqv-cert bytes)
    FIRMWARE = 5            # id image hash
    FIRMWARE_LATEST = 6     # id [image-type, device-class]
    PROVENANCE = 7          # id material-id
    COMMUNICATION = 8       # id [sender device-id, digest]
    WARNING = 9             # id [gateway device-id, warning-id]
    OFFENCES = 10           # id offender (bstr)


class DeviceStatus(IntEnum):
    ACTIVE = 1
    BANNED = 2


class ImageType(IntEnum):
    FIRMWARE = 1
    CONFIGURATION = 2


class Reason(IntEnum):
    OK = 0
    MALFORMED = 1
    OVERSIZED = 2
    UNKNOWN_DEVICE = 3
    BANNED_DEVICE = 4
    BAD_SIGNATURE = 5
    REPLAY = 7
    CLOCK_SKEW = 8
    CERTIFICATE_REUSE = 13
    UNKNOWN_TX_KIND = 20
    INVALID_FIELD = 21
    NOT_AUTHORIZED = 22
    BAD_PROOF_OF_POSSESSION = 23
    ALREADY_EXISTS = 24
    UNKNOWN_TARGET = 25
    WRONG_STATUS = 26


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
}


def reason_text(code: int) -> str:
    """Short text for a reason code ("unknown reason" for codes this version does not define)."""
    try:
        return REASON_TEXT[Reason(code)]
    except ValueError:
        return "unknown reason"
