"""Material chains: provenance records name the lots they were made from (cotton bale -> sliver ->
carded yarn -> combed yarn), and a lot's trace checks every step against a certified header."""

from __future__ import annotations

import pytest

from ledgerlink.ledger.state import encoding as enc
from ledgerlink.ledger.state.codes import Reason, RecordKind as RK
from ledgerlink.protocol import ledger_tx

from tests.devnet import DevNet

SPINNING = [(b"bale-7", "cotton bale", []), (b"sliver-7", "sliver", [b"bale-7"]),
            (b"carded-7", "carded yarn", [b"sliver-7"]), (b"combed-7", "combed yarn", [b"carded-7"])]


@pytest.fixture
def net():
    return DevNet()


def lot_tx(net: DevNet, signer: str, lot: bytes, form: str, inputs: list[bytes]) -> bytes:
    return enc.provenance_tx(net.chain_id, net[signer].priv, lot, "line 1, Coimbatore", "B-7", form,
                             net.time_ms - 1000, net["sensor"].pub, net.time_ms, nonce=net.nonce(),
                             backend=net.backend, inputs=inputs or None)


def test_provenance_names_its_input_lots_which_must_exist(net):
    state = net.genesis()
    results = net.block(state, [lot_tx(net, "controller", lot, form, inputs) for lot, form, inputs in SPINNING])
    assert [r.code for r in results] == [0, 0, 0, 0]
    assert 8 not in state.get_record(RK.PROVENANCE, b"bale-7")
    assert state.get_record(RK.PROVENANCE, b"combed-7")[8] == [b"carded-7"]
    bad = [lot_tx(net, "controller", b"yarn-x", "combed yarn", [b"no-such-lot"]),
           lot_tx(net, "controller", b"yarn-y", "combed yarn", [b"bale-7"] * (ledger_tx.MAX_INPUTS + 1)),
           lot_tx(net, "controller", b"yarn-z", "combed yarn", [b""])]
    assert [r.code for r in net.block(state, bad)] == [Reason.UNKNOWN_TARGET, Reason.INVALID_FIELD,
                                                       Reason.INVALID_FIELD]
