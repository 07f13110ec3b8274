"""DeviceProtocol with the set's FROST group key: a receipt whose header carries one threshold signature checks,
and the group key is part of the trust anchor (CPython; the same code on board32 in
tests/boards/test_board_threshold.py).

The receipts come from ``GatewayCore`` over the fake ledger (tests/device/helpers.py); their header is re-certified
here by a 3-of-4 FROST key (trusted dealer, seeded), naming ``validators_hash(keys, group_key)`` as a ledger with
threshold headers does. The tx root is the header's own, so the inclusion proofs are the receipt's.
"""

import random

import pytest

from ledgerlink.core import cbor, frost
from ledgerlink.core.errors import InvalidMessage, InvalidProof
from ledgerlink.device.core import MemoryCounter, SequenceCounter
from ledgerlink.protocol import device_protocol as dp
from ledgerlink.protocol import spv
from tests.device.helpers import CRYPTO, NOW, Env


def threshold_site():
    env = Env()
    rng = random.Random(7).randbytes
    shares, _, group_key = frost.trusted_dealer_keygen(None, 4, 3, rng)
    return env, shares, group_key, rng


def device(env, group_key):
    return dp.DeviceProtocol(env.net["sensor"].priv, env.gw.site, SequenceCounter(MemoryCounter()), env.net.chain_id,
                             env.ledger.keys, env.ca_public, backend=CRYPTO, group_key=group_key)


def threshold_certified(env, certified, shares, group_key, rng, view=0):
    """``certified``'s header naming the set with ``group_key``, with a threshold certificate of signers 1..3."""
    header = list(certified[0][:6]) + [spv.validators_hash(env.ledger.keys, group_key)]
    h = spv.Header(header)
    msg = spv.commit_sign_bytes(env.net.chain_id, h.height, view, h.hash)
    nonces, commitments = {}, []
    for i in (1, 2, 3):
        nonces[i], commitment = frost.commit(shares[i], rng, index=i)
        commitments.append(commitment)
    z = {i: frost.sign(i, shares[i], group_key, nonces[i], msg, commitments) for i in (1, 2, 3)}
    return [header, [view, frost.aggregate(group_key, commitments, msg, z)]]


def receipts(env, dev, n, shares, group_key, rng):
    outs = [dev.reading({"i": i}, NOW) for i in range(n)]
    rs = env.receipts([o.frame_hash for o in outs], [o.seq for o in outs])
    cert = threshold_certified(env, rs[0][7], shares, group_key, rng)
    for r in rs:
        r[7] = cert
    return outs, rs


def test_a_threshold_certified_receipt_checks_with_the_group_key_and_only_with_it():
    env, shares, group_key, rng = threshold_site()
    dev = device(env, group_key)
    outs, rs = receipts(env, dev, 2, shares, group_key, rng)
    result = dev.check_receipt(rs[0])
    assert result.valid and result.seq == outs[0].seq
    without = device(env, None)
    with pytest.raises(InvalidMessage, match="commit certificate must be"):
        without.check_receipt(rs[1], outs[1].payload)
    other_shares, _, other_key = frost.trusted_dealer_keygen(None, 4, 3, rng)
    with pytest.raises(InvalidProof, match="different validator set"):
        device(env, other_key).check_receipt(rs[1], outs[1].payload)
    dev.group_key = other_key                                   # the header cache is bound to the group key too
    with pytest.raises(InvalidProof, match="different validator set"):
        dev.check_receipt(rs[1], outs[1].payload)


def _flip(b):
    return b[:-1] + bytes([b[-1] ^ 1])


@pytest.mark.parametrize("name, mutate, error", [
    ("signature z", lambda c: c[1].__setitem__(1, _flip(c[1][1])), InvalidProof),
    ("signature R", lambda c: c[1].__setitem__(1, c[1][1][:1] + _flip(c[1][1][1:33]) + c[1][1][33:]), InvalidProof),
    ("view", lambda c: c[1].__setitem__(0, c[1][0] + 1), InvalidProof),
    ("header time", lambda c: c[0].__setitem__(3, c[0][3] + 1), InvalidProof),
    ("short signature", lambda c: c[1].__setitem__(1, c[1][1][:64]), InvalidMessage),
    ("z out of range", lambda c: c[1].__setitem__(1, c[1][1][:33] + b"\xff" * 32), InvalidMessage),
])
def test_an_altered_threshold_certificate_is_refused(name, mutate, error):
    env, shares, group_key, rng = threshold_site()
    dev = device(env, group_key)
    outs, rs = receipts(env, dev, 1, shares, group_key, rng)
    bad = cbor.loads(cbor.dumps(rs[0]))
    mutate(bad[7])
    with pytest.raises(error):
        dev.check_receipt(bad)
    assert dev.check_receipt(rs[0]).valid                       # the honest one still checks after the refusal
