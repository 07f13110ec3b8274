"""One reading parser (``ledgerlink.protocol.reading``): the gateway's checks and the session chain statement
decoder take and refuse the same readings with the same reasons."""

import pytest
from hypothesis import given, settings, strategies as st

from ledgerlink.core import cbor
from ledgerlink.core.errors import InvalidMessage
from ledgerlink.gateway import checks as c
from ledgerlink.protocol import reading, session_chain as sc

STATEMENT = {sc.STATEMENT_KEY: [b"s" * 8, 1, 4, bytes(32)]}


def outcome(parse, payload):
    try:
        return "ok", parse(payload)
    except InvalidMessage as exc:
        return "refused", str(exc)
    except c._Refusal as exc:
        assert exc.code == c.MALFORMED
        return "refused", exc.detail


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.one_of(st.integers(0, 6), st.text(max_size=2)),
                       st.one_of(st.binary(max_size=17), st.integers(-1, 2**33), st.booleans(),
                                 st.dictionaries(st.one_of(st.text(max_size=3), st.integers(), st.booleans()),
                                                 st.integers(), max_size=2)), max_size=5))
def test_the_gateway_parses_readings_with_the_protocol_parser(obj):
    payload = cbor.dumps(obj)
    assert outcome(c.parse_reading, payload) == outcome(reading.parse, payload)


@pytest.mark.parametrize("obj,reason", [
    ({1: bytes(16), 2: 5, 3: 1, 4: STATEMENT, 5: 0}, "reading must be a map with keys 1, 2, 3, 4"),
    ({1: bytes(15), 2: 5, 3: 1, 4: STATEMENT}, "reading device id must be 16 bytes"),
    ({1: bytes(16), 2: 0, 3: 1, 4: STATEMENT}, "reading seq must be 1..2^32-1"),
    ({1: bytes(16), 2: 5, 3: -1, 4: STATEMENT}, "reading time must be an unsigned integer"),
])
def test_a_statement_that_is_no_reading_is_refused_as_the_gateway_refuses_it(obj, reason):
    payload = cbor.dumps(obj)
    with pytest.raises(InvalidMessage, match=reason.replace("^", r"\^").replace(".", r"\.")):
        sc.decode(payload)
    assert outcome(c.parse_reading, payload) == ("refused", reason)


def test_a_statement_reading_decodes():
    got = sc.decode(cbor.dumps({1: bytes(16), 2: 5, 3: 1, 4: STATEMENT}))
    assert (got.device_id, got.seq, got.first, got.last) == (bytes(16), 5, 1, 4)
