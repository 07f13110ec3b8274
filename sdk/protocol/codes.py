"""The numbers and strings of docs/protocol.md that a device sends, reads or checks, and the device-id rule.

Codes only gateways and ledger nodes use (the other tx and record kinds, the ledger-only reasons) are in
``ledger_tx``, which a board never imports: every name here costs a board heap. A group's
names share a prefix that no other integer uses, in either module: ``KIND_`` (gateway-reply kinds),
``REASON_`` (refusal reasons), ``TX_`` (tx kinds), ``RECORD_`` (state record kinds), ``ROLE_``, ``STATUS_``
(device status), ``IMAGE_`` (firmware image types); the ledger's IntEnum views are built from them.
"""

import hashlib

KIND_RECEIPT = 1
KIND_REFUSAL = 2
KIND_SESSION = 3
KIND_REGISTRATION = 4
KIND_STORED = 5
KIND_NOT_STORED = 6

# reason-code: why a gateway refused a frame (the ledger gives 1-5, 7, 8 and 13 too, with the same meaning)
REASON_MALFORMED = 1
REASON_OVERSIZED = 2
REASON_UNKNOWN_DEVICE = 3
REASON_BANNED_DEVICE = 4
REASON_BAD_SIGNATURE = 5
REASON_BAD_TAG = 6
REASON_REPLAY = 7
REASON_CLOCK_SKEW = 8
REASON_RATE_LIMITED = 9
REASON_UNKNOWN_SESSION = 10
REASON_EXPIRED_SESSION = 11
REASON_WRONG_TOPIC = 12
REASON_CERTIFICATE_REUSE = 13
REASON_LEDGER_UNAVAILABLE = 14
REASON_CHAIN_MISMATCH = 15

ROLE_SENSOR = 1
ROLE_ACTUATOR = 2
ROLE_GATEWAY = 3
ROLE_VALIDATOR = 4
ROLE_ADMIN = 5
ROLE_CONTROLLER = 6
ROLE_MAINTENANCE = 7

STATUS_ACTIVE = 1
STATUS_BANNED = 2

TX_ANCHOR = 5                   # the tx a receipt proves
RECORD_DEVICE = 1               # the record a record proof shows; id device-id
RECORD_FIRMWARE = 5             # image or update-manifest digest: the record an update offer proves
RECORD_VALIDATOR_SET = 16       # id epoch: a validator set change, the record a light client follows

# image types, also the update-manifest components (docs/protocol.md, "Updates")
IMAGE_FIRMWARE = 1
IMAGE_CONFIGURATION = 2
IMAGE_APP_LIBRARY = 3

DEVICE_ID_LEN = 16
NONCE_LEN = 16                  # tx nonces and session-request nonces
MAX_SEQ = 0xFFFFFFFF            # reading sequence numbers are 1..MAX_SEQ

TX_DOMAIN = "ledgerlink-tx-v1"              # tx-aad = cbor([TX_DOMAIN, chain-id])
COMMIT_DOMAIN = "ledgerlink-commit-v1"      # validator signatures over a header hash


def device_id(public_key):
    """Device id: the first 16 bytes of SHA-256 of the compressed identity public key (33 or 65 bytes
    given; a 33-byte key is taken as it is, the ledger checks keys before it derives their ids)."""
    public_key = bytes(public_key)
    if len(public_key) != 33:
        from ledgerlink.core import p256

        public_key = p256.encode_point(p256.decode_point(public_key), True)
    return hashlib.sha256(public_key).digest()[:DEVICE_ID_LEN]
