"""Validator sets that change through the ledger, and light clients that follow them with proofs.

A ``validator-set-change`` transaction (``ledger_tx.validator_set_change_tx``) names a new set
``[+ [index, key]]`` (indices 0..n-1 in order), the height H from which it signs headers, and the
approvals of 2f+1 members of the current set, each an ES256 signature over
``cbor(["ledgerlink-reconfig-v1", chain-id, epoch, set-hash, H])``. The ledger records the accepted
change as the record ``[RECORD_VALIDATOR_SET, epoch]``:

    {1: epoch, 2: [+ [index, key]], 3: H, 4: set-hash, ? 5: group-key, ? 6: verifying-shares,
     7: height of the block that recorded it}

A light client trusts one epoch's set (``TrustedSet``). ``follow_set_change`` moves it to the next
epoch given a header certified by the trusted set (any height below H that holds the record, e.g.
H-1 or the recording block) and the record's sparse-Merkle proof under that header's state root: so
each change is certified by the previous set, as a light client follows validator updates.

Protects against a gateway, broker or node that hands a device a set of its own: a set is taken only
from a record under a state root 2f+1 keys of the previous set certified. Tested in
tests/ledger/test_reconfig.py (honest change, forged, short-quorum and other-set headers, wrong
epoch, tampered record, proof for another key), tests/ledger/test_reconfig_cluster.py (a device
checking receipts before and after a change on real processes) and
tests/micropython/test_validator_set_in_vm.py. Portable like the rest of ``ledgerlink.protocol``.
"""

from ledgerlink.core import cbor
from ledgerlink.core.errors import InvalidMessage, InvalidProof
from ledgerlink.protocol import spv
from ledgerlink.protocol.codes import RECORD_VALIDATOR_SET

RECONFIG_DOMAIN = "ledgerlink-reconfig-v1"
MAX_VALIDATORS = spv.MAX_VALIDATORS


def set_entries(keys):
    """The ``validator-set`` array ``[[0, key0], [1, key1], ...]`` of a list of keys."""
    return [[i, bytes(k)] for i, k in enumerate(keys)]


def set_hash(keys, group_key=None):
    """The header's ``validators-hash`` of a set (``spv.validators_hash``: of the keys, and of the FROST
    group key when the set has one)."""
    return spv.validators_hash(keys, group_key)


def approval_message(chain_id, epoch, new_set_hash, height):
    """The bytes each approving validator signs."""
    return cbor.dumps([RECONFIG_DOMAIN, chain_id, epoch, bytes(new_set_hash), height])


def keys_of(entries):
    """The keys of a ``validator-set`` array, checked: 1..MAX_VALIDATORS entries ``[index, key]`` with
    indices 0..n-1 in order and distinct 33- or 65-byte keys. Raises InvalidMessage."""
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_VALIDATORS:
        raise InvalidMessage("validator set must hold 1..%d entries" % MAX_VALIDATORS)
    keys = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] != i or type(entry[0]) is not int:
            raise InvalidMessage("validator set entry %d must be [%d, key]" % (i, i))
        key = entry[1]
        if not isinstance(key, bytes) or len(key) not in (33, 65):
            raise InvalidMessage("validator %d key must be a 33- or 65-byte P-256 key" % i)
        if key in keys:
            raise InvalidMessage("validator key %d appears twice" % i)
        keys.append(key)
    return keys


class TrustedSet:
    """The validator set a light client trusts: ``keys`` of ``epoch``, signing headers from
    ``from_height`` on (0 for the genesis set); ``group_key`` and ``verifying_shares`` as recorded."""

    def __init__(self, chain_id, keys, epoch=0, from_height=0, group_key=None, verifying_shares=None):
        self.chain_id = chain_id
        self.keys = [bytes(k) for k in keys]
        self.epoch = epoch
        self.from_height = from_height
        self.group_key = group_key
        self.verifying_shares = verifying_shares

    def __repr__(self):
        return "TrustedSet(epoch=%d, n=%d, from=%d)" % (self.epoch, len(self.keys), self.from_height)


def decode_set_record(record):
    """(epoch, keys, effective height, set-hash, group-key, verifying-shares, recorded-at) of a record."""
    if isinstance(record, (bytes, bytearray)):
        record = cbor.loads(bytes(record), max_depth=6)
    if not isinstance(record, dict):
        raise InvalidMessage("validator set record must be a map")
    for label in (1, 2, 3, 4, 7):
        if label not in record:
            raise InvalidMessage("validator set record lacks field %d" % label)
    keys = keys_of(record[2])
    epoch, height, recorded = record[1], record[3], record[7]
    for value in (epoch, height, recorded):
        if not cbor.is_uint(value):
            raise InvalidMessage("validator set record epoch and heights must be unsigned integers")
    if record[4] != set_hash(keys, record.get(5)):
        raise InvalidMessage("validator set record hash does not match its set")
    return epoch, keys, height, record[4], record.get(5), record.get(6), recorded


def follow_set_change(trusted, certified, record, proof, backend=None):
    """The next epoch's TrustedSet, from a header ``certified`` by ``trusted`` (object or CBOR)
    whose state holds ``record`` (bytes) for epoch ``trusted.epoch + 1``, with its smt ``proof``.

    Raises InvalidProof when the header, the proof or the record's epoch or heights do not check.
    """
    header = spv.verify_certified_header(certified, trusted.chain_id, trusted.keys, backend, trusted.group_key)
    if header.height < trusted.from_height:
        raise InvalidProof("header %d is below the trusted set's first height %d"
                           % (header.height, trusted.from_height))
    if not isinstance(record, (bytes, bytearray)):
        raise InvalidMessage("validator set record must be bytes")
    key = spv.state_key(RECORD_VALIDATOR_SET, trusted.epoch + 1)
    spv.verify_record(header, key, bytes(record), proof)
    epoch, keys, height, _, group_key, shares, recorded = decode_set_record(record)
    if epoch != trusted.epoch + 1:
        raise InvalidProof("record is for epoch %d, not %d" % (epoch, trusted.epoch + 1))
    if not recorded < height or header.height >= height or height <= trusted.from_height:
        raise InvalidProof("set change effective at %d does not follow header %d" % (height, header.height))
    return TrustedSet(trusted.chain_id, keys, epoch, height, group_key, shares)


def encode_set_change_proof(certified, record, proof):
    """The ``set-change-proof`` a node hands a light client: cbor([certified-header, record, smt-proof])."""
    return cbor.dumps([certified, bytes(record), proof])


def follow_set_change_proof(trusted, data, backend=None):
    """``follow_set_change`` over an encoded ``set-change-proof``."""
    obj = cbor.loads(bytes(data), max_depth=12) if isinstance(data, (bytes, bytearray)) else data
    if not isinstance(obj, list) or len(obj) != 3:
        raise InvalidMessage("set-change proof must be [certified-header, record, smt-proof]")
    return follow_set_change(trusted, obj[0], obj[1], obj[2], backend)



def follow_changes(trusted, ask, backend=None):
    """``trusted`` moved along every change the ledger proves, in epoch order: ``ask(epoch)`` gives the
    ``set-change-proof`` of that epoch (encoded or decoded), or None when there is none (yet). Raises
    InvalidProof (or InvalidMessage) on a proof that does not check; returns ``trusted`` itself when no
    change is proved."""
    while True:
        proof = ask(trusted.epoch + 1)
        if proof is None:
            return trusted
        trusted = follow_set_change_proof(trusted, proof, backend)


def follow_into(holder, proof, backend=None):
    """Move a holder of a trusted set (a device: ``chain_id``, ``validator_keys``, ``validator_epoch``
    (0 when absent), ``group_key`` if any) to the next epoch with a ``set-change-proof``; the holder is
    unchanged when the proof does not check (InvalidProof or InvalidMessage). Returns the new TrustedSet."""
    trusted = TrustedSet(holder.chain_id, holder.validator_keys, getattr(holder, "validator_epoch", 0),
                         group_key=getattr(holder, "group_key", None))
    new = follow_set_change_proof(trusted, proof, backend)
    holder.validator_keys = list(new.keys)
    holder.validator_epoch = new.epoch
    if hasattr(holder, "group_key"):
        holder.group_key = new.group_key
    return new
