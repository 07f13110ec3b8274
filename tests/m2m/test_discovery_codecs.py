"""Property tests of the directory's wire codecs (``ledgerlink.protocol.discovery``): requests and
answers round-trip, and anything else is refused with a DiscoveryError (or left out), never another
exception."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor
from ledgerlink.protocol import discovery as dsc

values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20)
                      | st.binary(max_size=40),
                      lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(st.integers(0, 8) | st.text(max_size=5), children, max_size=4),
                      max_leaves=12)
ops = st.sampled_from([dsc.DIR_BY_ID, dsc.DIR_BY_ATTRIBUTES, dsc.DIR_PAIR, dsc.DIR_RECORD, dsc.DIR_HISTORY,
                       dsc.DIR_SUBMIT])
garbage = st.binary(max_size=300) | values.map(cbor.dumps)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2**64 - 1), ops, values)
def test_request_round_trip(request_id, op, arg):
    assert dsc.decode_request(dsc.encode_request(request_id, op, arg)) == (request_id, op, arg)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 3), st.lists(st.dictionaries(st.integers(1, 4), st.binary(max_size=8),
                                                                           max_size=4), max_size=dsc.MAX_RESULTS),
       st.none() | st.text(max_size=30), st.lists(st.tuples(st.integers(0, 10), st.binary(max_size=16)).map(list),
                                                  max_size=4))
def test_answer_round_trip(request_id, status, proofs, text, ids):
    ans = dsc.decode_answer(dsc.encode_answer(request_id, status, proofs, text, ids=ids))
    assert ans[1] == request_id and ans[2] == status and ans[3] == proofs and ans.get(4) == text and ans[7] == ids


@settings(max_examples=150, deadline=None)
@given(garbage)
def test_decoders_refuse_anything_else_with_a_discovery_error(data):
    for decode in (dsc.decode_request, dsc.decode_answer):
        try:
            decode(data)
        except dsc.DiscoveryError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.lists(values | garbage, max_size=4))
def test_garbage_proofs_are_left_out_of_partners(proofs):
    for proof in proofs:
        assert dsc.proof_device_id(proof) is None or len(dsc.proof_device_id(proof)) == 16
    assert dsc.partners(proofs, "ll-test", [bytes(33)], {"line": "x"}) == []
