"""ECDSA signatures are canonical (s <= n/2) on every backend, byte-identical across them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import ecdsa
from ledgerlink.core.backend import get_backend

BACKENDS = ["portable", "cpython", "pycryptodome"]
PRIVATE = st.integers(min_value=1, max_value=ecdsa.N - 1).map(lambda d: d.to_bytes(32, "big"))


def flipped(signature: bytes) -> bytes:
    """The other valid signature: (r, n - s)."""
    return signature[:32] + (ecdsa.N - int.from_bytes(signature[32:], "big")).to_bytes(32, "big")


@settings(max_examples=40, deadline=None)
@given(PRIVATE, st.binary(max_size=64))
def test_every_backend_signs_canonically_and_identically(d: bytes, message: bytes):
    sigs = {get_backend(name).sign(d, message) for name in BACKENDS}
    assert len(sigs) == 1
    sig = sigs.pop()
    assert sig == ecdsa.sign(d, message)
    assert ecdsa.is_canonical(sig)
    assert not ecdsa.is_canonical(flipped(sig))
    # the flipped copy still verifies under FIPS 186: canonical form is a rule callers must apply
    pub = ecdsa.public_key(d)
    assert ecdsa.verify(pub, message, flipped(sig))


def test_canonical_bound_is_half_the_order():
    r = (1).to_bytes(32, "big")
    assert ecdsa.is_canonical(r + (ecdsa.N // 2).to_bytes(32, "big"))
    assert not ecdsa.is_canonical(r + (ecdsa.N // 2 + 1).to_bytes(32, "big"))
    assert not ecdsa.is_canonical(r)
