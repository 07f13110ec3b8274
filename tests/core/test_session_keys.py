"""Session keys from an ECQV certificate: both sides agree, every input is bound into the keys."""

import pytest

from ledgerlink.core import ecdsa, ecqv, session_keys
from ledgerlink.core.errors import InvalidPoint


@pytest.fixture(scope="module")
def parties():
    ca_priv = ecdsa.generate_private_key()
    ca_pub = ecdsa.public_key(ca_priv)
    k_u, r_u = ecqv.create_request()
    cert, r = ecqv.issue(r_u, ca_priv, b"serial01", b"fog-ca", b"d" * 16, 0, 100)
    d_u, q_u = ecqv.reconstruct(k_u, cert, r, ca_pub)
    gw_priv = ecdsa.generate_private_key()
    return {"cert": cert, "d_u": d_u, "q_u": ecqv.public_key(cert, ca_pub), "gw_priv": gw_priv,
            "gw_pub": ecdsa.public_key(gw_priv)}


@pytest.mark.parametrize("backend", ["portable", "cpython"])
def test_device_and_gateway_agree(parties, backend):
    device = session_keys.derive(parties["d_u"], parties["gw_pub"], parties["cert"], b"d" * 16, b"gw", backend)
    gateway = session_keys.derive(parties["gw_priv"], parties["q_u"], parties["cert"], b"d" * 16, b"gw", backend)
    assert (device.key, device.base_iv, device.session_id) == (gateway.key, gateway.base_iv, gateway.session_id)
    assert len(device.key) == 16 and len(device.base_iv) == 13 and len(device.session_id) == 8
    assert device.session_id == session_keys.session_id(parties["cert"])


def test_backends_give_identical_keys(parties):
    args = (parties["d_u"], parties["gw_pub"], parties["cert"], b"d" * 16, b"gw")
    a = session_keys.derive(*args, backend="portable")
    b = session_keys.derive(*args, backend="cpython")
    assert (a.key, a.base_iv) == (b.key, b.base_iv)


@pytest.mark.parametrize("change", ["cert", "device", "gateway"])
def test_each_input_changes_the_keys(parties, change):
    base = dict(cert=parties["cert"], device=b"d" * 16, gateway=b"gw")
    reference = session_keys.derive(parties["d_u"], parties["gw_pub"], base["cert"], base["device"], base["gateway"])
    base[change] = base[change] + b"x"
    other = session_keys.derive(parties["d_u"], parties["gw_pub"], base["cert"], base["device"], base["gateway"])
    assert other.key != reference.key and other.base_iv != reference.base_iv


def test_invalid_peer_key_is_refused(parties):
    with pytest.raises(InvalidPoint):
        session_keys.derive(parties["d_u"], b"\x04" + bytes(64), parties["cert"], b"d" * 16, b"gw")
