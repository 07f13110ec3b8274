"""The ledger's names for the transaction and record encodings of ``ledgerlink.protocol.ledger_tx``.

State keys, device ids, tx frames and the transaction builders are defined once there (gateways and
devices use them too); ledger code and admin tools import them from here or from there alike.
"""

from ledgerlink.protocol.codes import DEVICE_ID_LEN, NONCE_LEN, TX_DOMAIN
from ledgerlink.protocol.ledger_tx import (ROTATE_DOMAIN, anchor_tx, ban_tx, bstr_head, build_tx, cert_record_tx,
                                           cert_record_tx_for, communication_tx, compress_pubkey, device_id,
                                           firmware_tx, provenance_tx, register_tx, registration_request,
                                           rotate_key_tx, rotation_message, split_sign1, state_key, tx_aad, tx_id,
                                           tx_tbs_prefix, unban_tx, warning_entry, warnings_tx)

__all__ = [
    "DEVICE_ID_LEN", "NONCE_LEN", "TX_DOMAIN", "ROTATE_DOMAIN",
    "state_key", "compress_pubkey", "device_id", "tx_aad", "tx_id", "rotation_message", "bstr_head", "split_sign1",
    "tx_tbs_prefix", "build_tx", "registration_request", "register_tx", "rotate_key_tx", "ban_tx", "unban_tx",
    "anchor_tx", "cert_record_tx", "cert_record_tx_for", "firmware_tx", "provenance_tx", "communication_tx",
    "warning_entry", "warnings_tx",
]
