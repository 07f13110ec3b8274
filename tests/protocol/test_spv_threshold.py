"""SPV threshold header certificates ``[view, frost-signature]``: accepted from t = 2f+1 shares, refused
when forged, short of shares, for another view, chain or validator set, or malformed; the 2f+1-vote
certificate keeps working beside them."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerlink.core import cbor, frost
from ledgerlink.core.backend import get_backend
from ledgerlink.core.errors import DecodeError, InvalidMessage, InvalidProof
from ledgerlink.protocol import spv

CRYPTO = get_backend()
CHAIN = "plant-7"
N_VALIDATORS = 4


def seeded_rng(seed):
    gen = random.Random(seed)
    return lambda size: gen.randbytes(size)


def threshold_sign(shares, group_key, signers, msg, seed=0, aggregate=True):
    rng = seeded_rng(seed)
    nonces, commitments = {}, []
    for index in signers:
        nonces[index], commitment = frost.commit(shares[index], rng, index=index)
        commitments.append(commitment)
    z = {i: frost.sign(i, shares[i], group_key, nonces[i], msg, commitments) for i in signers}
    if aggregate:
        return frost.aggregate(group_key, commitments, msg, z)
    decoded = frost.decode_commitments(commitments)
    r = frost._group_commitment(decoded, frost._binding_factors(group_key, decoded, msg))
    return frost.point_bytes(r) + frost.scalar_bytes(sum(z.values()))


class Site:
    """A validator set of 4 with ECDSA keys and a 3-of-4 FROST group key, and a header at height 5."""

    def __init__(self, seed=1):
        rng = seeded_rng(seed)
        self.privs = [CRYPTO.generate_private_key(rng) for _ in range(N_VALIDATORS)]
        self.keys = [CRYPTO.public_key(p) for p in self.privs]
        self.shares, self.verifying, self.group_key = frost.trusted_dealer_keygen(
            None, N_VALIDATORS, spv.quorum(N_VALIDATORS), rng)
        self.header = [CHAIN, 5, bytes(32), 1_700_000_000_000, bytes([1]) * 32, bytes([2]) * 32,
                       spv.validators_hash(self.keys, self.group_key)]
        self.header_hash = spv.Header(self.header).hash

    def message(self, view=0, height=5):
        return spv.commit_sign_bytes(CHAIN, height, view, self.header_hash)

    def threshold(self, view=0, signers=(1, 2, 4), msg=None, **kw):
        return [self.header, [view, threshold_sign(self.shares, self.group_key, list(signers),
                                                   msg or self.message(view), **kw)]]

    def votes(self, view=0, count=3):
        msg = self.message(view)
        return [self.header, [5, view, self.header_hash, [[i, CRYPTO.sign(self.privs[i], msg)] for i in range(count)]]]


@pytest.fixture(scope="module")
def site():
    return Site()


def test_threshold_certificate_accepted(site):
    certified = site.threshold(view=2)
    for form in (certified, cbor.dumps(certified)):
        header = spv.verify_threshold_header(form, CHAIN, site.keys, site.group_key)
        assert header.height == 5 and header.hash == site.header_hash
        assert spv.verify_certified_header(form, CHAIN, site.keys, group_key=site.group_key).height == 5
    anchor = spv.validators_hash(site.keys, site.group_key)
    assert spv.verify_threshold_header(certified, CHAIN, anchor, site.group_key).height == 5
    assert spv.verify_threshold_header(certified, CHAIN, site.keys, site.group_key, backend="portable").height == 5


def test_validators_hash_with_group_key():
    keys = [bytes([4]) + bytes([i]) * 64 for i in range(3)]
    group_key = b"\x02" + bytes(range(32))
    plain = [[i, k] for i, k in enumerate(keys)]
    assert spv.validators_hash(keys) == CRYPTO.sha256(cbor.dumps(plain))
    assert spv.validators_hash(keys, None) == spv.validators_hash(keys)
    assert spv.validators_hash(keys, group_key) == CRYPTO.sha256(cbor.dumps([plain, group_key]))
    assert spv.validators_hash(keys, group_key) != spv.validators_hash(keys)
    with pytest.raises(InvalidMessage):
        spv.validators_hash(keys, group_key[:32])


def test_vote_certificate_still_works_beside_a_group_key(site):
    certified = site.votes()
    assert spv.verify_certified_header(certified, CHAIN, site.keys, group_key=site.group_key).height == 5
    with pytest.raises(InvalidProof, match="validator set"):
        spv.verify_certified_header(certified, CHAIN, site.keys)      # header names the set with its group key
    with pytest.raises(InvalidProof, match="votes"):
        spv.verify_certified_header(site.votes(count=2), CHAIN, site.keys, group_key=site.group_key)


def test_short_share_signature_refused(site):
    short = site.threshold(signers=(1, 3), aggregate=False)            # t - 1 = 2 shares
    for check in (lambda c: spv.verify_threshold_header(c, CHAIN, site.keys, site.group_key),
                  lambda c: spv.verify_certified_header(c, CHAIN, site.keys, group_key=site.group_key)):
        with pytest.raises(InvalidProof, match="threshold signature does not verify"):
            check(short)


def test_forged_signatures_refused(site):
    other = Site(seed=2)                                               # another set's shares
    forged = [site.header, other.threshold()[1]]
    cases = {
        "other group key": forged,
        "other view": [site.header, [1, site.threshold(view=0)[1][1]]],
        "other height": site.threshold(msg=site.message(height=6)),
        "other chain": site.threshold(msg=spv.commit_sign_bytes("plant-8", 5, 0, site.header_hash)),
        "vote bytes": [site.header, [0, site.votes()[1][3][0][1] + b"\x00"]],
    }
    for name, certified in cases.items():
        with pytest.raises((InvalidProof, InvalidMessage)):
            spv.verify_threshold_header(certified, CHAIN, site.keys, site.group_key)
    with pytest.raises(InvalidProof, match="chain"):
        spv.verify_threshold_header(site.threshold(), "plant-8", site.keys, site.group_key)
    with pytest.raises(InvalidProof, match="validator set"):
        spv.verify_threshold_header(site.threshold(), CHAIN, site.keys[:3], site.group_key)
    with pytest.raises(InvalidProof, match="validator set"):
        spv.verify_threshold_header(site.threshold(), CHAIN, site.keys, other.group_key)
    with pytest.raises(InvalidProof, match="validator set"):
        spv.verify_threshold_header(site.threshold(), CHAIN, bytes(32), site.group_key)


def test_malformed_threshold_certificates_refused(site):
    good = site.threshold()
    signature = good[1][1]
    for cert in ([0], [0, signature, 1], [-1, signature], ["0", signature], [0, signature[:64]],
                 [0, signature + b"\x00"], [0, signature.hex()], "cert"):
        with pytest.raises(InvalidMessage):
            spv.verify_threshold_header([site.header, cert], CHAIN, site.keys, site.group_key)
    for group_key in (site.group_key[:32], site.group_key.hex(), None):
        with pytest.raises(InvalidMessage):
            spv.verify_threshold_header(good, CHAIN, site.keys, group_key)
    with pytest.raises(InvalidMessage):
        spv.verify_threshold_header(good, CHAIN, bytes(31), site.group_key)


@pytest.fixture(scope="module")
def encoded(site):
    return cbor.dumps(site.threshold())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 400), flip=st.integers(1, 255))
def test_any_altered_byte_is_refused(site, encoded, position, flip):
    altered = bytearray(encoded)
    altered[position % len(altered)] ^= flip
    with pytest.raises((InvalidProof, InvalidMessage, DecodeError)):
        spv.verify_certified_header(bytes(altered), CHAIN, site.keys, group_key=site.group_key)


def test_record_proof_under_a_threshold_certified_header():
    from ledgerlink.core import merkle, smt
    from ledgerlink.ledger.state.codes import RecordKind, Role
    from tests.devnet import DevNet

    net = DevNet()
    state = net.genesis()
    txs = [net.register("admin", "sensor-1", Role.SENSOR)]
    root = state.execute(1, net.time_ms + 1000, txs)
    state.commit(1)
    site = Site(seed=3)
    header = [net.chain_id, 1, bytes(32), net.time_ms + 1000, merkle.root_of(txs), root,
              spv.validators_hash(site.keys, site.group_key)]
    msg = spv.commit_sign_bytes(net.chain_id, 1, 0, spv.Header(header).hash)
    certified = [header, [0, threshold_sign(site.shares, site.group_key, [1, 2, 3], msg)]]
    key, value, proof = state.prove(RecordKind.DEVICE, net["sensor-1"].id)
    record_proof = cbor.dumps({1: certified, 2: key, 3: value, 4: smt.proof_to_cbor_obj(proof)})
    h, k, v = spv.verify_record_proof(record_proof, net.chain_id, site.keys, group_key=site.group_key)
    assert h.height == 1 and v == value is not None
    with pytest.raises(InvalidMessage):   # without the group key, a threshold certificate is not a vote certificate
        spv.verify_record_proof(record_proof, net.chain_id, site.keys)


def test_vote_certificate_against_an_anchor_hash_is_refused_clearly(site):
    anchor = spv.validators_hash(site.keys, site.group_key)
    with pytest.raises(InvalidMessage, match="anchor"):
        spv.verify_certified_header(site.votes(), CHAIN, anchor, group_key=site.group_key)
