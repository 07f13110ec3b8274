"""The CPython CBOR decoder is strict and bounded: one pass, no second decoder, cost linear in the input.

Hostile peers and clients of a ledger node send frames of up to 4 MB; what refusing one costs is the
price of a stranger's frame. Bounds are on CPU time (``time.process_time``), with wide margins.
"""

import struct
import time
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlink import cpython_cbor
from ledgerlink.core import cbor
from ledgerlink.core.errors import DecodeError
from tests.core.test_cbor import VALUES, loose, same

FRAME = 4 << 20
P61 = (1 << 61) - 1                      # CPython hashes ints modulo this prime


def _array(n: int) -> bytes:
    head = bytearray()
    cbor._head(head, 4, n)
    return bytes(head)


def _map(n: int) -> bytes:
    head = bytearray()
    cbor._head(head, 5, n)
    return bytes(head)


def _refuse(*args, **kwargs):
    raise AssertionError("the portable decoder was called")


@pytest.fixture(scope="module")
def no_portable():
    """Fail the tests of this module if anything calls the portable decoder."""
    with mock.patch.object(cbor, "portable_loads", _refuse):
        yield


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_agrees_with_portable_on_deterministic_input(no_portable, value):
    data = cbor.portable_dumps(value)
    assert same(cpython_cbor.loads(data, max_depth=1000), value)


@settings(max_examples=300, deadline=None)
@given(VALUES, st.data())
def test_refuses_every_other_encoding_alone(no_portable, value, data):
    enc = loose(value, data.draw)
    if data.draw(st.integers(0, 7)) == 0:
        enc += bytes([data.draw(st.integers(0, 255))])
    if enc == cbor.portable_dumps(value):
        assert same(cpython_cbor.loads(enc, max_depth=1000), value)
    else:
        with pytest.raises(DecodeError):
            cpython_cbor.loads(enc, max_depth=1000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decoded_or_refused_alone(no_portable, data):
    try:
        value = cpython_cbor.loads(data)
    except DecodeError:
        return
    assert cbor.dumps(value) == data


def test_map_keys_that_hash_alike_are_capped():
    keys = [(1 << 70) + i * P61 for i in range(cpython_cbor.MAX_COLLIDING_KEYS + 1)]
    assert len({hash(k) for k in keys}) == 1
    ok = cbor.portable_dumps({k: 0 for k in keys[:-1]})
    assert len(cpython_cbor.loads(ok)) == len(keys) - 1
    with pytest.raises(DecodeError):
        cpython_cbor.loads(cbor.portable_dumps({k: 0 for k in keys}))
    assert cpython_cbor.loads(cbor.portable_dumps({i: 0 for i in range(1000)})) == {i: 0 for i in range(1000)}


def _colliding_keys_frame(size: int) -> bytes:
    """A deterministic map of bignum keys that all hash alike (quadratic to insert into a dict)."""
    n = size // 14                                         # tag 2, an 11-byte string, value 0
    return _map(n) + b"".join(b"\xc2\x4b" + ((1 << 80) + i * P61).to_bytes(11, "big") + b"\x00"
                              for i in range(n))


def _cpu(data: bytes, accept: bool = False) -> float:
    start = time.process_time()
    if accept:
        cpython_cbor.loads(data, max_size=len(data))
    else:
        with pytest.raises(DecodeError):
            cpython_cbor.loads(data, max_size=len(data))
    return time.process_time() - start


def test_refusing_4mb_hostile_frames_costs_little_cpu():
    """4 MB frames whose flaw is at their end, or that hash-flood a map: each refused in well under a second
    (measured 0.45 s, 0 s, 0.004 s; before: 1.2 s with the fallback, and minutes for the colliding keys)."""
    ints = _array(FRAME - 2) + b"\x00" * (FRAME - 3) + b"\x18\x00"        # last item not in shortest form
    assert _cpu(ints) < 1.0
    assert _cpu(_colliding_keys_frame(FRAME)) < 0.2
    text = b"\x7a" + struct.pack(">I", FRAME) + b"a" * (FRAME - 1) + b"\xff"
    assert _cpu(text) < 0.2


@pytest.mark.parametrize("unit,flaw,size", [
    (b"\x81" * 31 + b"\x00", b"\x00", 1 << 18),              # nesting to the depth limit, one trailing byte
    (b"\xa2\x00\x00\x01\x00", b"\xa2\x01\x00\x00\x00", 1 << 20),   # small maps, the last with unsorted keys
    (b"\xfb" + struct.pack(">d", 1.1), b"\xfb" + struct.pack(">d", 1.5), 1 << 20),   # floats, the last too wide
], ids=["nested", "maps", "floats"])
def test_refusal_costs_one_pass(unit, flaw, size):
    """Refusing a frame whose flaw is at its end costs about what accepting its flawless twin does
    (the fallback to the portable decoder made it 2.5-3x)."""
    n = size // len(unit)
    good = _array(n) + unit * n
    bad = _array(n) + unit * (n - 1) + flaw
    if flaw == b"\x00":
        bad = good + flaw
    accept = min(_cpu(good, accept=True) for _ in range(2))
    refuse = min(_cpu(bad) for _ in range(2))
    assert refuse < 1.6 * accept + 0.02, (refuse, accept)
