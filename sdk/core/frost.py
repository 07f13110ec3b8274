"""FROST(P-256, SHA-256) threshold Schnorr signatures (RFC 9591) and a dealerless key generation.

t of n participants, each holding a Shamir share of one group key, make one Schnorr signature
``R (33 B compressed) || z (32 B)`` that anyone checks against the group key alone: the check costs one
double-scalar multiplication whatever n and t are.

- Signing (RFC 9591 section 5): ``commit`` (round one, hedged nonces of section 4.1: 32 random bytes
  and the share), ``sign`` (round two), ``verify_share`` (the coordinator's check of one share),
  ``aggregate``; ``verify`` is the check a device makes.
- Keys: ``trusted_dealer_keygen`` (RFC 9591 appendix C, for vectors and tests) and the FROST paper's
  KeyGen (Komlo and Goldberg 2020, figure 1): a Pedersen DKG in which each participant deals a random
  polynomial with Feldman commitments and a Schnorr proof of knowledge of its constant term
  (``dkg_round1``, ``dkg_round2``, ``dkg_finish``).

Wire shapes (docs/protocol.md, "Threshold header certificates"): a commitment is
``[index, hiding-point, binding-point]`` (points 33-byte compressed SEC 1), a DKG broadcast is
``[index, [+ coefficient-commitment], proof-R, proof-z]`` (proof-z 32 bytes), shares are ints.

Protects against:
- forgery by fewer than t participants (a signature needs t shares; t-1 shares are independent of the key);
- a participant sending a bad share (``verify_share`` names it; ``aggregate`` refuses a signature that
  does not verify and names the bad shares);
- nonce reuse: nonces are drawn from fresh randomness and the share (a bad RNG alone does not repeat them)
  and ``sign`` erases them, refusing a second use;
- rogue-key attacks in the DKG (the proof of knowledge binds each dealer's constant term to its index and
  the session context) and dealers sending shares that do not match their commitments (refused, named);
- leaking a share or nonce through timing: secret scalars are multiplied only by ``p256.base_mult``
  (fixed operation sequence, masked table scans); the rest of the secret arithmetic is big-integer
  arithmetic mod n without branches or table indexes on secret values; nonces are kept nowhere else
  (not in a backend's key cache).
Malformed input raises InvalidMessage (structure), InvalidPoint or InvalidScalar (encodings) or
InvalidSignature (a signature or share that does not verify).
"""

import hashlib

from ledgerlink.core import p256
from ledgerlink.core.errors import InvalidMessage, InvalidPoint, InvalidScalar, InvalidSignature
from ledgerlink.core.frost_verify import (
    CONTEXT, MAX_PARTICIPANTS, N, POINT_LEN, SCALAR_LEN, SIGNATURE_LEN, challenge as _challenge, h2,
    hash_to_scalar as _hash_to_scalar, sha256 as _sha256, verify as _verify,
)

_DST_RHO = CONTEXT + b"rho"
_DST_NONCE = CONTEXT + b"nonce"
_DST_DKG = CONTEXT + b"dkg"


# --- hashes (RFC 9591 section 6.4) -------------------------------------------------------------

def h1(msg):
    return _hash_to_scalar(msg, _DST_RHO)


def h3(msg):
    return _hash_to_scalar(msg, _DST_NONCE)


def h4(msg):
    return _sha256(CONTEXT + b"msg" + msg)


def h5(msg):
    return _sha256(CONTEXT + b"com" + msg)


# --- encodings ---------------------------------------------------------------------------------

def scalar_bytes(k):
    """SerializeScalar: 32 bytes big-endian of k mod n."""
    return (k % N).to_bytes(SCALAR_LEN, "big")


def decode_scalar(data, what="scalar"):
    """DeserializeScalar: 32 bytes big-endian below n (zero allowed); InvalidScalar otherwise."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != SCALAR_LEN:
        raise InvalidScalar("%s must be %d bytes" % (what, SCALAR_LEN))
    k = int.from_bytes(data, "big")
    if k >= N:
        raise InvalidScalar("%s is not below the group order" % what)
    return k


def point_bytes(pt):
    """SerializeElement: 33-byte compressed SEC 1; InvalidPoint for the identity."""
    if pt is None:
        raise InvalidPoint("the identity element has no encoding")
    return p256.encode_point(pt, True)


_decoded_points = {}
_DECODED_POINTS_MAX = 256  # public points decoded lately (a square root each): the group key, a round's commitments


def decode_point(data, what="point"):
    """DeserializeElement: a 33-byte compressed point on P-256 (never the identity)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != POINT_LEN:
        raise InvalidPoint("%s must be a %d-byte compressed point" % (what, POINT_LEN))
    data = bytes(data)
    point = _decoded_points.get(data)
    if point is None:
        point = p256.decode_point(data)
        if len(_decoded_points) >= _DECODED_POINTS_MAX:
            _decoded_points.clear()
        _decoded_points[data] = point
    return point


def _check_index(index, what="participant index"):
    if not isinstance(index, int) or isinstance(index, bool) or not 0 < index <= MAX_PARTICIPANTS:
        raise InvalidMessage("%s must be an integer in 1..%d" % (what, MAX_PARTICIPANTS))
    return index


def _check_share(value, what):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < N:
        raise InvalidScalar("%s must be an integer in [0, n-1]" % what)
    return value


def _check_secret(value, what):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < N:
        raise InvalidScalar("%s must be an integer in [1, n-1]" % what)
    return value


def _base_mult_bytes(k):
    """Compressed k*G for a secret scalar 1 <= k < n, by ``p256.base_mult`` (fixed operation sequence).
    Not through the CPython backend: it keeps the private keys it is given in a cache, and nonces must
    not outlive their signature (about 1 ms here against 7 us there; two per signature)."""
    return p256.encode_point(p256.base_mult(k), True)


def _random_scalar(rng):
    """A uniform scalar in [1, n-1] from ``rng(32) -> bytes`` (rejection sampling)."""
    while True:
        data = rng(SCALAR_LEN)
        if not isinstance(data, (bytes, bytearray)) or len(data) != SCALAR_LEN:
            raise InvalidScalar("random source returned the wrong length")
        k = int.from_bytes(data, "big")
        if 0 < k < N:
            return k


def _default_rng(size):
    from os import urandom
    return urandom(size)


# --- commitments -------------------------------------------------------------------------------

def decode_commitments(commitments):
    """Check a commitment list (any order) and return it decoded and sorted by index:
    ``[(index, hiding-point, binding-point, [index, hiding-bytes, binding-bytes]), ...]``.

    Refuses (InvalidMessage or InvalidPoint) anything but ``[index, 33 B point, 33 B point]`` items, an
    empty list and a repeated index.
    """
    if not isinstance(commitments, (list, tuple)) or not commitments:
        raise InvalidMessage("commitments must be a non-empty list")
    out = []
    for item in commitments:
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise InvalidMessage("a commitment must be [index, hiding-point, binding-point]")
        index = _check_index(item[0], "commitment index")
        hiding = decode_point(item[1], "hiding commitment of participant %d" % index)
        binding = decode_point(item[2], "binding commitment of participant %d" % index)
        out.append((index, hiding, binding, [index, bytes(item[1]), bytes(item[2])]))
    out.sort(key=lambda entry: entry[0])
    i = 1
    while i < len(out):
        if out[i][0] == out[i - 1][0]:
            raise InvalidMessage("participant %d has two commitments" % out[i][0])
        i += 1
    return out


def _encode_commitment_list(decoded):
    parts = []
    for entry in decoded:
        parts.append(scalar_bytes(entry[0]) + entry[3][1] + entry[3][2])
    return b"".join(parts)


def _binding_factors(group_key_bytes, decoded, msg):
    """RFC 9591 compute_binding_factors: {index: rho}."""
    prefix = group_key_bytes + h4(msg) + h5(_encode_commitment_list(decoded))
    return {entry[0]: h1(prefix + scalar_bytes(entry[0])) for entry in decoded}


# ((group key, message, encoded commitments), factors, R bytes) of the last signing round, so that signers
# and the coordinator in one process share them; one tuple, replaced whole (threads see one round's values)
_last_round = [None]


def _round_values(group_key_bytes, decoded, msg):
    """(binding factors, encoded group commitment R) of one signing round."""
    key = (group_key_bytes, msg, _encode_commitment_list(decoded))
    last = _last_round[0]
    if last is not None and last[0] == key:
        return last[1], last[2]
    factors = _binding_factors(group_key_bytes, decoded, msg)
    r_bytes = point_bytes(_group_commitment(decoded, factors))
    _last_round[0] = (key, factors, r_bytes)
    return factors, r_bytes


_GC_WINDOW = 5


def _group_commitment(decoded, factors):
    """sum of D_i + [rho_i] E_i (public data, variable time): one interleaved width-5 wNAF pass, so the
    doublings are shared by all signers (at 67 signers about 5x fewer field operations than one
    multiplication each)."""
    hidden = (1, 1, 0)
    tables = []
    digits = []
    lengths = []
    for index, hiding, binding, _ in decoded:
        hidden = p256._jadd_affine(hidden, hiding[0], hiding[1])
        base = (binding[0], binding[1], 1)
        twice = p256._jdouble(base)
        table = [base]
        for _ in range((1 << (_GC_WINDOW - 2)) - 1):
            table.append(p256._jadd(table[-1], twice))
        tables.append(table)
        out = bytearray(p256._NAF_LEN)
        lengths.append(p256._wnaf(factors[index] % N, _GC_WINDOW, out))
        digits.append(out)
    acc = (1, 1, 0)
    i = max(lengths) - 1 if lengths else -1
    count = len(tables)
    while i >= 0:
        acc = p256._jdouble(acc)
        j = 0
        while j < count:
            if i < lengths[j]:
                d = digits[j][i]
                if 0 < d < 128:
                    acc = p256._jadd(acc, tables[j][d >> 1])
                elif d:
                    x, y, z = tables[j][(256 - d) >> 1]
                    acc = p256._jadd(acc, (x, p256.P - y, z))
            j += 1
        i -= 1
    return p256._jaffine(p256._jadd(acc, hidden))


def interpolating_value(indices, index):
    """Lagrange coefficient of ``index`` at 0 over the (distinct) ``indices`` (RFC 9591 section 4.2)."""
    if index not in indices:
        raise InvalidMessage("participant %d is not among the signers" % index)
    numerator = 1
    denominator = 1
    for other in indices:
        if other == index:
            continue
        numerator = numerator * other % N
        denominator = denominator * (other - index) % N
    return numerator * pow(denominator, N - 2, N) % N


# --- round one and two -------------------------------------------------------------------------

class SigningNonces:
    """A participant's secret nonces for one signature and the commitment they make; ``sign`` erases
    them, so a second use is refused. Never send or store them."""

    def __init__(self, index, hiding, binding, commitment):
        self.index = index
        self.hiding = hiding
        self.binding = binding
        self.commitment = commitment

    def take(self):
        if self.hiding is None:
            raise InvalidMessage("these nonces were already used; make a new commitment")
        hiding, binding = self.hiding, self.binding
        self.hiding = None
        self.binding = None
        return hiding, binding

    def __repr__(self):
        return "SigningNonces(index=%d, used=%s)" % (self.index, self.hiding is None)


def nonce_generate(signing_share, rng=None):
    """RFC 9591 section 4.1: H3(32 random bytes || SerializeScalar(share)), redrawn if zero."""
    draw = rng or _default_rng
    while True:
        random_bytes = draw(32)
        if not isinstance(random_bytes, (bytes, bytearray)) or len(random_bytes) != 32:
            raise InvalidScalar("random source returned the wrong length")
        k = h3(bytes(random_bytes) + scalar_bytes(signing_share))
        if k:
            return k


def commit(signing_share, rng=None, index=None):
    """Round one: ``(nonces, commitment)``; the commitment ``[index, hiding-point, binding-point]`` is
    sent to the coordinator, the nonces are kept for ``sign``. ``index`` defaults to 0, a placeholder the
    caller sets before sending (``commitment[0] = index``); ``rng(n) -> bytes`` defaults to os.urandom."""
    share = _check_secret(signing_share, "signing share")
    hiding = nonce_generate(share, rng)
    binding = nonce_generate(share, rng)
    commitment = [0 if index is None else _check_index(index), _base_mult_bytes(hiding), _base_mult_bytes(binding)]
    return SigningNonces(commitment[0], hiding, binding, commitment), commitment


def sign(index, signing_share, group_key, nonces, msg, commitments):
    """Round two: participant ``index``'s signature share (an int below n) over ``msg``.

    ``commitments`` holds every signer's commitment, its own among them with the points of ``nonces``
    (refused otherwise, as are a malformed list and used nonces).
    """
    index = _check_index(index)
    share = _check_secret(signing_share, "signing share")
    decode_point(group_key, "group key")
    if not isinstance(nonces, SigningNonces):
        raise InvalidMessage("nonces must be the SigningNonces that commit returned")
    decoded = decode_commitments(commitments)
    own = None
    for entry in decoded:
        if entry[0] == index:
            own = entry[3]
    if own is None or own[1] != nonces.commitment[1] or own[2] != nonces.commitment[2]:
        raise InvalidMessage("participant %d's commitment in the list is not the one its nonces made" % index)
    hiding, binding = nonces.take()
    msg = bytes(msg)
    group_key = bytes(group_key)
    factors, r_bytes = _round_values(group_key, decoded, msg)
    lam = interpolating_value([entry[0] for entry in decoded], index)
    c = _challenge(r_bytes, group_key, msg)
    return (hiding + binding * factors[index] + lam * share * c) % N


def verify_share(index, verifying_share, group_key, commitments, msg, z):
    """True when ``z`` is participant ``index``'s valid share for ``msg`` under these commitments:
    [z]G == D + [rho]E + [lambda * c]Y (RFC 9591 section 5.4)."""
    index = _check_index(index)
    y = decode_point(verifying_share, "verifying share of participant %d" % index)
    decode_point(group_key, "group key")
    z = _check_share(z, "signature share of participant %d" % index)
    decoded = decode_commitments(commitments)
    msg = bytes(msg)
    group_key = bytes(group_key)
    factors, r_bytes = _round_values(group_key, decoded, msg)
    return _verify_share_decoded(index, y, group_key, decoded, factors, r_bytes, msg, z)


def _verify_share_decoded(index, y, group_key, decoded, factors, r_bytes, msg, z):
    own = None
    for entry in decoded:
        if entry[0] == index:
            own = entry
    if own is None:
        raise InvalidMessage("participant %d is not among the signers" % index)
    lam = interpolating_value([entry[0] for entry in decoded], index)
    c = _challenge(r_bytes, group_key, msg)
    expected = p256.add_vartime(own[1], p256.mul_vartime(factors[index], own[2]))
    return p256.mul_add_vartime(z, (N - lam * c % N) % N, y) == expected


def aggregate(group_key, commitments, msg, shares, verifying_shares=None):
    """The signature ``R || z`` (65 bytes) from every signer's share (``{index: z}``, one per commitment).

    Refuses (InvalidSignature) a result that does not verify; with ``verifying_shares`` ({index:
    bytes33}) the error names the participants whose shares are bad.
    """
    decode_point(group_key, "group key")
    decoded = decode_commitments(commitments)
    if not isinstance(shares, dict) or sorted(shares) != [entry[0] for entry in decoded]:
        raise InvalidMessage("shares must hold exactly one share per commitment")
    msg = bytes(msg)
    group_key = bytes(group_key)
    factors, r_bytes = _round_values(group_key, decoded, msg)
    z = 0
    for index in shares:
        z += _check_share(shares[index], "signature share of participant %d" % index)
    signature = r_bytes + scalar_bytes(z)
    if verify(group_key, msg, signature):
        return signature
    if verifying_shares is None:
        raise InvalidSignature("the shares do not make a valid signature")
    bad = []
    for entry in decoded:
        index = entry[0]
        if index not in verifying_shares:
            raise InvalidMessage("no verifying share for participant %d" % index)
        y = decode_point(verifying_shares[index], "verifying share of participant %d" % index)
        if not _verify_share_decoded(index, y, group_key, decoded, factors, r_bytes, msg, shares[index]):
            bad.append(index)
    raise InvalidSignature("the shares do not make a valid signature; bad shares from participants %s"
                           % ", ".join(str(i) for i in bad))


def decode_signature(signature):
    """``(R-point, z)`` from 65 bytes ``R || z``; InvalidSignature for any other shape."""
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_LEN:
        raise InvalidSignature("signature must be %d bytes R || z" % SIGNATURE_LEN)
    try:
        return decode_point(signature[:POINT_LEN], "signature R"), decode_scalar(signature[POINT_LEN:], "signature z")
    except (InvalidPoint, InvalidScalar) as exc:
        raise InvalidSignature("malformed signature: %s" % exc)


def verify(group_key, msg, signature, backend=None):
    """``frost_verify.verify`` (the check a device makes), with the group key decoded through this
    module's cache of public points. A malformed signature is False; a malformed key raises InvalidPoint."""
    return _verify(group_key, msg, signature, backend, decode_point(group_key, "group key"))


# --- keys --------------------------------------------------------------------------------------

def _poly_eval(coefficients, x):
    """f(x) mod n, Horner's rule (coefficients from the constant term up)."""
    value = 0
    i = len(coefficients) - 1
    while i >= 0:
        value = (value * x + coefficients[i]) % N
        i -= 1
    return value


def _commitment_eval(points, x):
    """sum_k x^k * points[k] for a small public x (Horner's rule in the group)."""
    acc = None
    i = len(points) - 1
    while i >= 0:
        if acc is not None:
            acc = p256.mul_vartime(x, acc)
        acc = p256.add_vartime(acc, points[i])
        i -= 1
    return acc


def _check_sizes(n, t):
    if not isinstance(n, int) or not isinstance(t, int) or not 2 <= t <= n <= MAX_PARTICIPANTS:
        raise InvalidMessage("need 2 <= t <= n <= %d" % MAX_PARTICIPANTS)


def verifying_share(signing_share):
    """The 33-byte public verifying share of a signing share."""
    return _base_mult_bytes(_check_secret(signing_share, "signing share"))


def trusted_dealer_keygen(secret, n, t, rng=None):
    """RFC 9591 appendix C: ``(shares {index: int}, verifying_shares {index: bytes33}, group_key)`` for
    participants 1..n, t of them needed to sign. ``secret`` None draws one; the t-1 further polynomial
    coefficients come from ``rng(32)`` in order (rejection-sampled)."""
    _check_sizes(n, t)
    draw = rng or _default_rng
    secret = _random_scalar(draw) if secret is None else _check_secret(secret, "group secret")
    coefficients = [secret] + [_random_scalar(draw) for _ in range(t - 1)]
    shares = {}
    verifying = {}
    for index in range(1, n + 1):
        shares[index] = _poly_eval(coefficients, index)
        verifying[index] = verifying_share(shares[index])
    return shares, verifying, _base_mult_bytes(secret)


class DealerError(InvalidMessage):
    """A DKG dealer whose broadcast or share is refused; ``dealer`` is its index."""

    def __init__(self, dealer, reason):
        super().__init__("dealer %d: %s" % (dealer, reason))
        self.dealer = dealer


class DkgState:
    """A participant's secret DKG state (its polynomial); never send or store it."""

    def __init__(self, index, n, t, coefficients, context):
        self.index = index
        self.n = n
        self.t = t
        self.coefficients = coefficients
        self.context = context
        self.broadcasts = None

    def __repr__(self):
        return "DkgState(index=%d, n=%d, t=%d)" % (self.index, self.n, self.t)


def _dkg_challenge(index, context, constant_bytes, r_bytes):
    return _hash_to_scalar(scalar_bytes(index) + _sha256(context) + constant_bytes + r_bytes, _DST_DKG)


def dkg_round1(index, n, t, rng=None, context=b""):
    """KeyGen round 1 for participant ``index`` of 1..n with threshold t: ``(state, broadcast)``.

    broadcast = ``[index, [C_0 .. C_{t-1}], R, z]`` (C_k = a_k*G, 33 B each; R 33 B; z 32 B): the
    Feldman commitments of a random polynomial and a Schnorr proof of knowledge of a_0 bound to
    ``index`` and ``context`` (bytes every participant agrees on for this run, e.g. chain id and epoch).
    Send the broadcast to every participant over an authenticated channel.
    """
    _check_sizes(n, t)
    index = _check_index(index)
    if index > n:
        raise InvalidMessage("participant index %d is above n = %d" % (index, n))
    if not isinstance(context, (bytes, bytearray)):
        raise InvalidMessage("context must be bytes")
    draw = rng or _default_rng
    coefficients = [_random_scalar(draw) for _ in range(t)]
    points = [_base_mult_bytes(a) for a in coefficients]
    k = _random_scalar(draw)
    r_bytes = _base_mult_bytes(k)
    c = _dkg_challenge(index, bytes(context), points[0], r_bytes)
    proof_z = (k + coefficients[0] * c) % N
    state = DkgState(index, n, t, coefficients, bytes(context))
    return state, [index, points, r_bytes, scalar_bytes(proof_z)]


def _decode_broadcast(item, t, context):
    """``(index, [points])`` of a broadcast whose proof of knowledge verifies; DealerError otherwise."""
    if not isinstance(item, (list, tuple)) or len(item) != 4:
        raise InvalidMessage("a DKG broadcast must be [index, commitments, proof-R, proof-z]")
    dealer = _check_index(item[0], "dealer index")
    try:
        if not isinstance(item[1], (list, tuple)) or len(item[1]) != t:
            raise InvalidMessage("must commit to %d coefficients" % t)
        points = [decode_point(p, "coefficient commitment") for p in item[1]]
        r = decode_point(item[2], "proof R")
        proof_z = decode_scalar(item[3], "proof z")
    except (InvalidMessage, InvalidPoint, InvalidScalar) as exc:
        raise DealerError(dealer, "malformed broadcast: %s" % exc)
    c = _dkg_challenge(dealer, context, bytes(item[1][0]), bytes(item[2]))
    if p256.mul_add_vartime(proof_z, (N - c) % N, points[0]) != r:
        raise DealerError(dealer, "proof of knowledge of its secret does not verify")
    return dealer, points


# (key of a broadcast set, {dealer: points}, (verifying shares, group key) or None): the last set checked,
# so the participants of a DKG run in one process check the proofs and derive the public keys once
_last_dkg = [None]


def _broadcasts_key(state, broadcasts):
    """A digest that names a well-shaped broadcast set one to one (fields length-checked and prefixed),
    or None (the full check then says what is wrong)."""
    if not isinstance(broadcasts, (list, tuple)):
        return None
    digest = hashlib.sha256(bytes((state.n, state.t)) + _sha256(state.context))
    for item in broadcasts:
        if not isinstance(item, (list, tuple)) or len(item) != 4 or not isinstance(item[1], (list, tuple)):
            return None
        index = item[0]
        if not isinstance(index, int) or isinstance(index, bool) or not 0 < index <= MAX_PARTICIPANTS:
            return None
        fields = list(item[1]) + [item[2], item[3]]
        lengths = [POINT_LEN] * len(item[1]) + [POINT_LEN, SCALAR_LEN]
        if any(not isinstance(f, (bytes, bytearray)) or len(f) != size for f, size in zip(fields, lengths)):
            return None
        digest.update(bytes((index, len(item[1]))))
        for f in fields:
            digest.update(f)
    return digest.digest()


def _decode_broadcasts(state, broadcasts):
    key = _broadcasts_key(state, broadcasts)
    last = _last_dkg[0]
    if key is not None and last is not None and last[0] == key:
        return last[1]
    out = _check_broadcasts(state, broadcasts)
    if key is not None:
        _last_dkg[0] = (key, out, None)
    return out


def _check_broadcasts(state, broadcasts):
    if not isinstance(broadcasts, (list, tuple)):
        raise InvalidMessage("broadcasts must be a list")
    out = {}
    for item in broadcasts:
        dealer, points = _decode_broadcast(item, state.t, state.context)
        if dealer > state.n:
            raise DealerError(dealer, "index above n = %d" % state.n)
        if dealer in out:
            raise DealerError(dealer, "sent two broadcasts")
        out[dealer] = points
    if sorted(out) != list(range(1, state.n + 1)):
        missing = [i for i in range(1, state.n + 1) if i not in out]
        raise InvalidMessage("no broadcast from participants %s" % ", ".join(str(i) for i in missing))
    return out


def dkg_round2(state, broadcasts):
    """KeyGen round 2: check every participant's broadcast (all n, this one's included) and return the
    secret shares ``{j: f_i(j)}`` to send, each to participant j alone over a confidential, authenticated
    channel. Raises DealerError naming the first dealer whose broadcast or proof is bad."""
    if not isinstance(state, DkgState):
        raise InvalidMessage("state must be the DkgState that dkg_round1 returned")
    decoded = _decode_broadcasts(state, broadcasts)
    if point_bytes(decoded[state.index][0]) != _base_mult_bytes(state.coefficients[0]):
        raise DealerError(state.index, "the broadcast under this participant's index is not its own")
    state.broadcasts = decoded
    return {j: _poly_eval(state.coefficients, j) for j in range(1, state.n + 1) if j != state.index}


def dkg_finish(state, broadcasts, shares_for_me):
    """KeyGen end: ``(signing_share, verifying_shares {index: bytes33}, group_key bytes33)``.

    ``shares_for_me`` holds ``{dealer: f_dealer(index)}`` from every other participant; a share that
    does not match its dealer's commitments (f(i)*G != sum i^k C_k) raises DealerError naming it.
    ``broadcasts`` must be those ``dkg_round2`` checked.
    """
    if not isinstance(state, DkgState) or state.broadcasts is None:
        raise InvalidMessage("run dkg_round2 with this state first")
    decoded = _decode_broadcasts(state, broadcasts)
    for dealer in decoded:
        if decoded[dealer] != state.broadcasts[dealer]:
            raise DealerError(dealer, "broadcast differs from the one checked in round 2")
    if not isinstance(shares_for_me, dict):
        raise InvalidMessage("shares_for_me must be a dict {dealer: share}")
    expected = [j for j in range(1, state.n + 1) if j != state.index]
    if sorted(shares_for_me) != expected:
        missing = [j for j in expected if j not in shares_for_me]
        raise InvalidMessage("need exactly one share from each other participant; missing %s"
                             % ", ".join(str(i) for i in missing))
    total = _poly_eval(state.coefficients, state.index)
    for dealer in expected:
        share = shares_for_me[dealer]
        if not isinstance(share, int) or isinstance(share, bool) or not 0 <= share < N:
            raise DealerError(dealer, "share is not an integer below n")
        total = (total + share) % N
    verifying, group_key = _public_keys(state, broadcasts, decoded)
    # One check for all shares: sum_j f_j(i) * G == sum_j sum_k i^k C_jk, the verifying share of i;
    # only when it fails is each share checked, to name its dealer. Shares are secret: multiplied by
    # p256.base_mult alone.
    if total == 0 or verifying_share(total) != verifying[state.index]:
        for dealer in expected:
            if _share_point(shares_for_me[dealer]) != _commitment_eval(decoded[dealer], state.index):
                raise DealerError(dealer, "share does not match its commitments")
        raise InvalidMessage("the signing share is zero or does not match the verifying shares; run the DKG again")
    state.coefficients = None
    return total, verifying, group_key


def _share_point(share):
    return None if share == 0 else p256.base_mult(share)


def _public_keys(state, broadcasts, decoded):
    """(verifying shares {j: bytes33}, group key) of a checked broadcast set, derived once per set."""
    key = _broadcasts_key(state, broadcasts)
    last = _last_dkg[0]
    if key is not None and last is not None and last[0] == key and last[2] is not None:
        return last[2]
    summed = []
    for k in range(state.t):
        acc = None
        for dealer in decoded:
            acc = p256.add_vartime(acc, decoded[dealer][k])
        summed.append(acc)
    keys = ({j: point_bytes(_commitment_eval(summed, j)) for j in range(1, state.n + 1)}, point_bytes(summed[0]))
    if key is not None:
        _last_dkg[0] = (key, decoded, keys)
    return keys
