"""The ledger state machine: registry, anchors, certificate, firmware and provenance records.

``LedgerState`` is the state machine the consensus core drives; ``state_key`` derives the sparse
Merkle key of a record; ``encoding`` has the transaction builders; tx formats are in docs/protocol.md ("Ledger transactions").
"""

from ledgerlink.ledger.state.codes import (DeviceStatus, ImageType, Reason, RecordKind, Role, TxKind,
                                           reason_text)
from ledgerlink.ledger.state.encoding import device_id, state_key, tx_aad, tx_id
from ledgerlink.ledger.state.machine import LedgerState, StateError, TxResult

__all__ = [
    "LedgerState", "StateError", "TxResult", "state_key", "device_id", "tx_aad", "tx_id",
    "DeviceStatus", "ImageType", "Reason", "RecordKind", "Role", "TxKind", "reason_text",
]
