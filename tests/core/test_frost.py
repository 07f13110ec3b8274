"""FROST(P-256, SHA-256): RFC 9591 vectors byte-exact on both backends, threshold properties, share
checks, refusals of malformed input, and the dealerless key generation with cheating dealers."""

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ledgerlink  # noqa: F401  (registers the CPython backend)
from ledgerlink.core import backend, frost, p256
from ledgerlink.core.errors import InvalidMessage, InvalidPoint, InvalidScalar, InvalidSignature

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "frost-p256-sha256.json"
MSG = b"header to certify"


def replay(values):
    """An rng that returns ``values`` (bytes) in order."""
    it = iter(values)
    return lambda size: next(it)


def seeded_rng(seed):
    gen = random.Random(seed)
    return lambda size: gen.randbytes(size)


@pytest.fixture(params=["default", "portable"])
def which_backend(request, monkeypatch):
    if request.param == "portable":
        portable = backend.get_backend("portable")
        monkeypatch.setattr(backend, "get_backend", lambda name=None: portable)
    return request.param


def test_rfc9591_p256_vectors_byte_exact(which_backend):
    v = json.loads(VECTORS.read_text())
    inputs = v["inputs"]
    coefficients = [bytes.fromhex(c) for c in inputs["share_polynomial_coefficients"]]
    n, t = int(v["config"]["MAX_PARTICIPANTS"]), int(v["config"]["MIN_PARTICIPANTS"])
    shares, verifying, group_key = frost.trusted_dealer_keygen(int(inputs["group_secret_key"], 16), n, t,
                                                               replay(coefficients))
    assert group_key.hex() == inputs["group_public_key"]
    assert {p["identifier"]: "%064x" % shares[p["identifier"]] for p in inputs["participant_shares"]} == \
        {p["identifier"]: p["participant_share"] for p in inputs["participant_shares"]}
    msg = bytes.fromhex(inputs["message"])
    nonces, commitments = {}, []
    for out in v["round_one_outputs"]["outputs"]:
        index = out["identifier"]
        rng = replay([bytes.fromhex(out["hiding_nonce_randomness"]), bytes.fromhex(out["binding_nonce_randomness"])])
        nonces[index], commitment = frost.commit(shares[index], rng, index=index)
        assert "%064x" % nonces[index].hiding == out["hiding_nonce"]
        assert "%064x" % nonces[index].binding == out["binding_nonce"]
        assert commitment[1].hex() == out["hiding_nonce_commitment"]
        assert commitment[2].hex() == out["binding_nonce_commitment"]
        commitments.append(commitment)
    decoded = frost.decode_commitments(commitments)
    factors = frost._binding_factors(group_key, decoded, msg)
    prefix = group_key + frost.h4(msg) + frost.h5(frost._encode_commitment_list(decoded))
    for out in v["round_one_outputs"]["outputs"]:
        assert (prefix + frost.scalar_bytes(out["identifier"])).hex() == out["binding_factor_input"]
        assert "%064x" % factors[out["identifier"]] == out["binding_factor"]
    z = {}
    for out in v["round_two_outputs"]["outputs"]:
        index = out["identifier"]
        z[index] = frost.sign(index, shares[index], group_key, nonces[index], msg, commitments)
        assert "%064x" % z[index] == out["sig_share"]
        assert frost.verify_share(index, verifying[index], group_key, commitments, msg, z[index])
    signature = frost.aggregate(group_key, commitments, msg, z, verifying)
    assert signature.hex() == v["final_output"]["sig"]
    assert frost.verify(group_key, msg, signature)


def run_signing(shares, group_key, signers, msg, seed=0):
    rng = seeded_rng(seed)
    nonces, commitments = {}, []
    for index in signers:
        nonces[index], commitment = frost.commit(shares[index], rng, index=index)
        commitments.append(commitment)
    z = {i: frost.sign(i, shares[i], group_key, nonces[i], msg, commitments) for i in signers}
    return commitments, z


@pytest.fixture(scope="module")
def keys_5_of_7():
    return frost.trusted_dealer_keygen(None, 7, 5, seeded_rng(57))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_t_subset_signs_and_verifies(keys_5_of_7, data):
    shares, verifying, group_key = keys_5_of_7
    signers = sorted(data.draw(st.sets(st.integers(1, 7), min_size=5, max_size=7)))
    msg = data.draw(st.binary(max_size=64))
    commitments, z = run_signing(shares, group_key, data.draw(st.permutations(signers)), msg,
                                 data.draw(st.integers(0, 2 ** 32)))
    signature = frost.aggregate(group_key, commitments, msg, z, verifying)
    assert frost.verify(group_key, msg, signature)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(signers=st.sets(st.integers(1, 7), min_size=1, max_size=4), seed=st.integers(0, 2 ** 32))
def test_fewer_than_t_shares_do_not_make_a_signature(keys_5_of_7, signers, seed):
    shares, verifying, group_key = keys_5_of_7
    commitments, z = run_signing(shares, group_key, sorted(signers), MSG, seed)
    with pytest.raises(InvalidSignature):
        frost.aggregate(group_key, commitments, MSG, z)
    forged = frost.decode_commitments(commitments)
    r = frost.point_bytes(frost._group_commitment(forged, frost._binding_factors(group_key, forged, MSG)))
    assert not frost.verify(group_key, MSG, r + frost.scalar_bytes(sum(z.values())))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.integers(1, 5), delta=st.integers(1, p256.N - 1), seed=st.integers(0, 2 ** 32))
def test_verify_share_names_the_tampered_share(keys_5_of_7, bad, delta, seed):
    shares, verifying, group_key = keys_5_of_7
    signers = [1, 2, 3, 4, 5]
    commitments, z = run_signing(shares, group_key, signers, MSG, seed)
    z[bad] = (z[bad] + delta) % p256.N
    for index in signers:
        assert frost.verify_share(index, verifying[index], group_key, commitments, MSG, z[index]) == (index != bad)
    with pytest.raises(InvalidSignature, match="participants %d$" % bad):
        frost.aggregate(group_key, commitments, MSG, z, verifying)


@pytest.fixture(scope="module")
def good_signature(keys_5_of_7):
    shares, verifying, group_key = keys_5_of_7
    commitments, z = run_signing(shares, group_key, [2, 3, 4, 6, 7], MSG, 1)
    return group_key, frost.aggregate(group_key, commitments, MSG, z)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 64), flip=st.integers(1, 255))
def test_tampered_signature_fails(good_signature, position, flip):
    group_key, signature = good_signature
    tampered = bytearray(signature)
    tampered[position] ^= flip
    assert not frost.verify(group_key, MSG, bytes(tampered))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msg=st.binary(max_size=40))
def test_other_message_fails(good_signature, msg):
    group_key, signature = good_signature
    if msg != MSG:
        assert not frost.verify(group_key, msg, signature)


def test_signature_edge_encodings_fail(good_signature, keys_5_of_7):
    group_key, signature = good_signature
    r, z = signature[:33], int.from_bytes(signature[33:], "big")
    assert frost.verify(group_key, MSG, signature)
    if z + p256.N < 2 ** 256:                                   # z + n: the same point, not a canonical z
        assert not frost.verify(group_key, MSG, r + (z + p256.N).to_bytes(32, "big"))
    assert not frost.verify(group_key, MSG, r + (2 ** 256 - 1).to_bytes(32, "big"))
    assert not frost.verify(group_key, MSG, bytes([r[0] ^ 1]) + r[1:] + signature[33:])  # -R
    assert not frost.verify(group_key, MSG, b"\x04" + r[1:] + signature[33:])
    assert not frost.verify(group_key, MSG, signature[:-1])
    assert not frost.verify(group_key, MSG, signature + b"\x00")
    assert not frost.verify(group_key, MSG, "not bytes")
    other_key = keys_5_of_7[1][1]
    assert not frost.verify(other_key, MSG, signature)
    with pytest.raises(InvalidPoint):
        frost.verify(b"\x02" + b"\xff" * 32, MSG, signature)
    with pytest.raises(InvalidPoint):
        frost.verify(p256.encode_point(frost.decode_point(group_key)), MSG, signature)  # 65-byte form
    with pytest.raises(InvalidSignature):
        frost.decode_signature(signature[:64])
    with pytest.raises(InvalidSignature):
        frost.decode_signature(r + (p256.N).to_bytes(32, "big"))
    assert frost.decode_signature(signature)[1] == z


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=80))
def test_random_bytes_never_verify_and_decoders_raise_cleanly(data):
    key = frost.verifying_share(12345)
    assert not frost.verify(key, b"m", data)
    try:
        frost.decode_signature(data)
    except InvalidSignature:
        pass


def test_malformed_commitment_lists_are_refused(keys_5_of_7):
    shares, verifying, group_key = keys_5_of_7
    nonces, commitment = frost.commit(shares[1], seeded_rng(3), index=1)
    _, other = frost.commit(shares[2], seeded_rng(4), index=2)
    good = [commitment, other]
    assert [entry[0] for entry in frost.decode_commitments([other, commitment])] == [1, 2]
    bad_lists = [
        [], None, [commitment[:2]], [[0, commitment[1], commitment[2]]], [[True, commitment[1], commitment[2]]],
        [[256, commitment[1], commitment[2]]], [commitment, [1, other[1], other[2]]],
        [[1, commitment[1][:32], commitment[2]]], [[1, b"\x02" + b"\xff" * 32, commitment[2]]],
    ]
    for bad in bad_lists:
        with pytest.raises((InvalidMessage, InvalidPoint)):
            frost.decode_commitments(bad)
    with pytest.raises(InvalidMessage, match="not the one its nonces made"):
        frost.sign(1, shares[1], group_key, nonces, MSG, [[1, other[1], other[2]], [2, commitment[1], commitment[2]]])
    with pytest.raises(InvalidMessage, match="not the one its nonces made"):
        frost.sign(3, shares[3], group_key, nonces, MSG, good)
    with pytest.raises(InvalidScalar):
        frost.sign(1, 0, group_key, nonces, MSG, good)
    with pytest.raises(InvalidMessage):
        frost.aggregate(group_key, good, MSG, {1: 5})
    with pytest.raises(InvalidScalar):
        frost.verify_share(1, verifying[1], group_key, good, MSG, p256.N)


def test_nonces_are_used_once(keys_5_of_7):
    shares, _, group_key = keys_5_of_7
    nonces, commitment = frost.commit(shares[1], seeded_rng(5), index=1)
    _, other = frost.commit(shares[2], seeded_rng(6), index=2)
    frost.sign(1, shares[1], group_key, nonces, MSG, [commitment, other])
    with pytest.raises(InvalidMessage, match="already used"):
        frost.sign(1, shares[1], group_key, nonces, b"other", [commitment, other])


def test_hedged_nonces_differ_with_the_same_randomness():
    """A repeated RNG output alone does not repeat nonces across shares (RFC 9591 section 4.1)."""
    same = bytes(range(32))
    a, _ = frost.commit(11, replay([same, same]))
    b, _ = frost.commit(12, replay([same, same]))
    assert a.hiding != b.hiding and a.binding != b.binding


def test_keygen_refuses_bad_sizes():
    for n, t in ((3, 1), (3, 4), (256, 2), (1, 1)):
        with pytest.raises(InvalidMessage):
            frost.trusted_dealer_keygen(None, n, t, seeded_rng(1))
        with pytest.raises(InvalidMessage):
            frost.dkg_round1(1, n, t, seeded_rng(1))
    with pytest.raises(InvalidMessage):
        frost.dkg_round1(5, 4, 3, seeded_rng(1))


# --- dealerless key generation -----------------------------------------------------------------

def run_dkg(n, t, seed, context=b"chain-a/epoch-1", tamper_share=None, tamper_broadcast=None):
    rng = seeded_rng(seed)
    states, broadcasts = {}, []
    for i in range(1, n + 1):
        states[i], broadcast = frost.dkg_round1(i, n, t, rng, context=context)
        broadcasts.append(broadcast)
    if tamper_broadcast:
        tamper_broadcast(broadcasts)
    outgoing = {i: frost.dkg_round2(states[i], broadcasts) for i in states}
    if tamper_share:
        tamper_share(outgoing)
    results = {}
    for i in states:
        incoming = {j: outgoing[j][i] for j in states if j != i}
        results[i] = frost.dkg_finish(states[i], broadcasts, incoming)
    return results


def test_dkg_end_to_end_signs():
    results = run_dkg(5, 4, 9)
    group_keys = {r[2] for r in results.values()}
    verifying = {tuple(sorted(r[1].items())) for r in results.values()}
    assert len(group_keys) == 1 and len(verifying) == 1
    group_key = group_keys.pop()
    shares = {i: r[0] for i, r in results.items()}
    for i, r in results.items():
        assert r[1][i] == frost.verifying_share(shares[i])
    # any 4 of the 5 make the same group key's signature; the secret is never assembled
    for signers in ([1, 2, 3, 4], [2, 3, 4, 5], [1, 3, 4, 5]):
        commitments, z = run_signing(shares, group_key, signers, MSG, sum(signers))
        assert frost.verify(group_key, MSG, frost.aggregate(group_key, commitments, MSG, z, results[1][1]))
    commitments, z = run_signing(shares, group_key, [1, 2, 3], MSG, 7)
    with pytest.raises(InvalidSignature):
        frost.aggregate(group_key, commitments, MSG, z)


def test_dkg_refuses_a_bad_proof_of_knowledge_naming_the_dealer():
    def forge_proof(broadcasts):
        broadcasts[2][3] = frost.scalar_bytes(int.from_bytes(broadcasts[2][3], "big") + 1)
    with pytest.raises(frost.DealerError, match="^dealer 3: proof of knowledge") as caught:
        run_dkg(4, 3, 10, tamper_broadcast=forge_proof)
    assert caught.value.dealer == 3


def test_dkg_refuses_a_rogue_key_without_its_proof():
    """A dealer that copies another's constant term (or cancels it out) cannot reuse that proof under
    its own index, nor a proof from another run's context."""
    def copy_other(broadcasts):
        victim, rogue = broadcasts[0], broadcasts[1]
        rogue[1][0], rogue[2], rogue[3] = victim[1][0], victim[2], victim[3]
    with pytest.raises(frost.DealerError, match="^dealer 2: proof of knowledge"):
        run_dkg(4, 3, 11, tamper_broadcast=copy_other)
    rng = seeded_rng(12)
    state, _ = frost.dkg_round1(1, 3, 2, rng, context=b"run-1")
    _, replayed = frost.dkg_round1(2, 3, 2, seeded_rng(13), context=b"run-0")
    others = [frost.dkg_round1(i, 3, 2, rng, context=b"run-1")[1] for i in (1, 3)]
    with pytest.raises(frost.DealerError, match="^dealer 2: proof of knowledge"):
        frost.dkg_round2(state, [others[0], replayed, others[1]])


def test_dkg_refuses_a_share_that_does_not_match_its_commitments_naming_the_dealer():
    def bad_share(outgoing):
        outgoing[4][2] = (outgoing[4][2] + 1) % p256.N
    with pytest.raises(frost.DealerError, match="^dealer 4: share does not match") as caught:
        run_dkg(5, 3, 14, tamper_share=bad_share)
    assert caught.value.dealer == 4


def test_dkg_refuses_malformed_broadcasts():
    rng = seeded_rng(15)
    states, broadcasts = {}, []
    for i in range(1, 4):
        states[i], b = frost.dkg_round1(i, 3, 2, rng)
        broadcasts.append(b)
    cases = [
        broadcasts[:2],                                                          # one missing
        broadcasts + [broadcasts[0]],                                            # one twice
        [broadcasts[0], broadcasts[1], [3, broadcasts[2][1][:1]] + broadcasts[2][2:]],   # too few coefficients
        [broadcasts[0], broadcasts[1], broadcasts[2][:3]],                       # short
        [broadcasts[0], broadcasts[1], [3, broadcasts[2][1], b"\x05" * 33, broadcasts[2][3]]],
        [broadcasts[0], broadcasts[1], [3, broadcasts[2][1], broadcasts[2][2], bytes(31)]],
    ]
    for bad in cases:
        with pytest.raises(InvalidMessage):
            frost.dkg_round2(states[1], bad)
    with pytest.raises(InvalidMessage, match="dkg_round2"):
        frost.dkg_finish(states[1], broadcasts, {})
    outgoing = {i: frost.dkg_round2(states[i], broadcasts) for i in states}
    with pytest.raises(InvalidMessage, match="missing 3"):
        frost.dkg_finish(states[1], broadcasts, {2: outgoing[2][1]})
    with pytest.raises(frost.DealerError, match="differs"):
        swapped = [broadcasts[0], broadcasts[1], frost.dkg_round1(3, 3, 2, rng)[1]]
        frost.dkg_finish(states[1], swapped, {2: outgoing[2][1], 3: outgoing[3][1]})


@settings(max_examples=15, deadline=None)
@given(count=st.integers(1, 9), seed=st.integers(0, 2 ** 32))
def test_group_commitment_equals_the_plain_sum(count, seed):
    """The interleaved multi-scalar group commitment against one multiplication per signer."""
    rng = seeded_rng(seed)
    commitments = [[i, frost.verifying_share(frost._random_scalar(rng)),
                    frost.verifying_share(frost._random_scalar(rng))] for i in range(1, count + 1)]
    decoded = frost.decode_commitments(commitments)
    factors = {i: int.from_bytes(rng(32), "big") % p256.N for i in range(1, count + 1)}
    factors[1] = 0 if seed % 3 == 0 else factors[1]
    plain = None
    for index, hiding, binding, _ in decoded:
        plain = p256.add(plain, p256.add(hiding, p256.mul_vartime(factors[index], binding)))
    assert frost._group_commitment(decoded, factors) == plain


CPYTHON = backend.get_backend("cpython")


@settings(max_examples=40, deadline=None)
@given(u1=st.integers(0, p256.N - 1), u2=st.integers(1, p256.N - 1), q=st.integers(1, p256.N - 1),
       which=st.sampled_from(["sum", "negated", "other"]))
def test_openssl_mul_add_equals_matches_the_portable_check(u1, u2, q, which):
    """The CPython backend's x-only OpenSSL check decides u1*G + u2*Q == R exactly as the portable
    arithmetic, including for -R (same x, other sign)."""
    point_q = p256.base_mult(q)
    total = p256.mul_add_vartime(u1, u2, point_q)
    if total is None:
        return
    r = {"sum": total, "negated": p256.negate(total), "other": p256.add(total, p256.G)}[which]
    if r is None:
        return
    verdict = CPYTHON.mul_add_equals(u1, u2, p256.encode_point(point_q, True), p256.encode_point(r, True))
    assert verdict in (None, which == "sum")
    if verdict is None:
        r_plus_g = p256.add(r, p256.G)
        in_range = [p256.P - p256.N <= x < p256.N for x in (r[0], r_plus_g[0])]
        assert r[0] == p256.GX or not all(in_range)


def test_openssl_mul_add_equals_leaves_edge_cases_to_the_caller():
    q = p256.encode_point(p256.base_mult(7), True)
    small_x = next(x for x in range(1, 100) if p256._sqrt((x ** 3 - 3 * x + p256.B) % p256.P) is not None)
    y = p256._sqrt((small_x ** 3 - 3 * small_x + p256.B) % p256.P)
    assert CPYTHON.mul_add_equals(3, 5, q, p256.encode_point((small_x, y), True)) is None    # x(R) < p - n
    assert CPYTHON.mul_add_equals(3, 0, q, p256.encode_point(p256.base_mult(3), True)) is None
    assert CPYTHON.mul_add_equals(3, 5, q, p256.encode_point(p256.G, True)) is None
    with pytest.raises(InvalidPoint):
        CPYTHON.mul_add_equals(3, 5, q, b"\x02" + b"\xff" * 32)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(-1, 64), flip=st.integers(1, 255))
def test_verify_same_verdict_on_both_backends(good_signature, position, flip):
    group_key, signature = good_signature
    tampered = bytearray(signature)
    if position >= 0:
        tampered[position] ^= flip
    tampered = bytes(tampered)
    assert frost.verify(group_key, MSG, tampered, "cpython") == frost.verify(group_key, MSG, tampered, "portable") \
        == (tampered == signature)


def test_nonces_are_not_kept_in_a_backend_key_cache():
    """The CPython backend caches the private keys it is given; a nonce kept there would outlive its
    signature (a nonce and its signature share give the signing share away)."""
    cache = CPYTHON._priv_cache
    nonces, _ = frost.commit(77, seeded_rng(21), index=1)
    secrets = {frost.scalar_bytes(nonces.hiding), frost.scalar_bytes(nonces.binding)}
    assert not secrets & set(cache)
    state, _ = frost.dkg_round1(1, 3, 2, seeded_rng(22))
    assert not {frost.scalar_bytes(a) for a in state.coefficients} & set(cache)


def test_dkg_shares_never_meet_variable_time_multiplication(monkeypatch):
    """Received shares are secret: only p256.base_mult (fixed operation sequence) multiplies them."""
    rng = seeded_rng(31)
    states, broadcasts = {}, []
    for i in range(1, 5):
        states[i], b = frost.dkg_round1(i, 4, 3, rng, context=b"vt")
        broadcasts.append(b)
    outgoing = {i: frost.dkg_round2(states[i], broadcasts) for i in states}
    secrets = {outgoing[j][i] for i in states for j in states if j != i}
    scalars = []
    real_mul, real_mul_add = p256.mul_vartime, p256.mul_add_vartime
    monkeypatch.setattr(p256, "mul_vartime", lambda k, q: scalars.append(k) or real_mul(k, q))
    monkeypatch.setattr(p256, "mul_add_vartime", lambda a, b, q: scalars.extend((a, b)) or real_mul_add(a, b, q))
    for i in states:
        frost.dkg_finish(states[i], broadcasts, {j: outgoing[j][i] for j in states if j != i})
    assert not secrets & set(scalars)



@settings(max_examples=20, deadline=None)
@given(dealer=st.integers(1, 4), field=st.integers(0, 4), position=st.integers(0, 32), flip=st.integers(1, 255))
def test_any_altered_broadcast_byte_is_refused_naming_its_dealer(dealer, field, position, flip):
    """A changed constant-term commitment or proof fails the proof of knowledge in round 2; a changed
    higher commitment makes the dealer's shares fail in dkg_finish. Either way the dealer is named."""
    rng = seeded_rng(41)
    pairs = [frost.dkg_round1(i, 4, 3, rng, context=b"prop") for i in range(1, 5)]
    states = {i: pairs[i - 1][0] for i in range(1, 5)}
    altered = [[b[0], list(b[1]), b[2], b[3]] for _, b in pairs]
    target = altered[dealer - 1]
    where = (target[1], field) if field < 3 else (target, field - 1)
    data = bytearray(where[0][where[1]])
    data[position % len(data)] ^= flip
    where[0][where[1]] = bytes(data)
    receiver = dealer % 4 + 1
    with pytest.raises(frost.DealerError) as caught:
        outgoing = {i: frost.dkg_round2(states[i], altered) for i in states}
        frost.dkg_finish(states[receiver], altered, {j: outgoing[j][receiver] for j in states if j != receiver})
    assert caught.value.dealer == dealer
