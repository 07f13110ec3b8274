"""A threshold signature that is not well formed (z >= n, R not a compressed point encoding: prefix other
than 02/03 or x >= p) is refused as malformed (InvalidMessage), as docs/protocol.md says; a well-formed
one that does not verify is refused as InvalidProof."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerlink.core import frost, p256
from ledgerlink.core.errors import InvalidMessage, InvalidProof
from ledgerlink.protocol import spv
from tests.protocol.test_spv_threshold import CHAIN, Site

SCALAR_TOP = 2 ** (8 * frost.SCALAR_LEN) - 1


@pytest.fixture(scope="module")
def site():
    return Site()


def with_signature(site, r_bytes, z):
    return [site.header, [0, r_bytes + z.to_bytes(frost.SCALAR_LEN, "big")]]


def r_and_z(site):
    signature = site.threshold()[1][1]
    return signature[:frost.POINT_LEN], int.from_bytes(signature[frost.POINT_LEN:], "big")


def off_curve_x():
    """The least x with no point (x, y): x^3 - 3x + b is not a square mod p."""
    x = 0
    while pow((x ** 3 - 3 * x + p256.B) % p256.P, (p256.P - 1) // 2, p256.P) == 1:
        x += 1
    return x


def refused_as_malformed(site, certified):
    with pytest.raises(InvalidMessage, match="threshold signature"):
        spv.verify_threshold_header(certified, CHAIN, site.keys, site.group_key)
    with pytest.raises(InvalidMessage, match="threshold signature"):
        spv.verify_certified_header(certified, CHAIN, spv.validators_hash(site.keys, site.group_key),
                                    group_key=site.group_key)


def test_z_not_below_n_is_malformed(site):
    r_bytes, _ = r_and_z(site)
    for z in (frost.N, frost.N + 1, SCALAR_TOP):
        refused_as_malformed(site, with_signature(site, r_bytes, z))


def test_r_not_a_point_encoding_is_malformed(site):
    r_bytes, z = r_and_z(site)
    for prefix in (0x00, 0x01, 0x04, 0x05, 0xFF):
        refused_as_malformed(site, with_signature(site, bytes([prefix]) + r_bytes[1:], z))
    for x in (p256.P, SCALAR_TOP):
        refused_as_malformed(site, with_signature(site, b"\x02" + x.to_bytes(32, "big"), z))


def test_well_formed_but_wrong_is_invalid_proof(site):
    r_bytes, z = r_and_z(site)
    spv.verify_threshold_header(with_signature(site, r_bytes, z), CHAIN, site.keys, site.group_key)
    for certified in (with_signature(site, r_bytes, (z + 1) % frost.N),
                      with_signature(site, bytes([r_bytes[0] ^ 1]) + r_bytes[1:], z),
                      with_signature(site, b"\x02" + off_curve_x().to_bytes(32, "big"), z)):
        with pytest.raises(InvalidProof):
            spv.verify_threshold_header(certified, CHAIN, site.keys, site.group_key)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.one_of(st.sampled_from((2, 3)), st.integers(0, 255)),
       x=st.one_of(st.integers(p256.P - 2, p256.P + 2), st.integers(0, SCALAR_TOP)),
       z=st.one_of(st.integers(frost.N - 2, frost.N + 2), st.integers(0, SCALAR_TOP)))
def test_any_signature_is_malformed_exactly_when_out_of_form(site, prefix, x, z):
    certified = with_signature(site, bytes([prefix]) + x.to_bytes(32, "big"), z)
    if prefix in (2, 3) and x < p256.P and z < frost.N:
        with pytest.raises(InvalidProof):
            spv.verify_threshold_header(certified, CHAIN, site.keys, site.group_key)
    else:
        refused_as_malformed(site, certified)
