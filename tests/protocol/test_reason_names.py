"""One table of refusal-reason names, made from the codes: every gateway and ledger reason has its own name."""

from ledgerlink.ledger.state.codes import Reason
from ledgerlink.protocol import codes, ledger_tx
from ledgerlink.protocol.ledger_tx import reason_name


def test_every_reason_code_has_one_name_made_from_its_constant():
    reasons = {v: k for m in (codes, ledger_tx) for k, v in vars(m).items() if k.startswith("REASON_") and v}
    names = {code: reason_name(code) for code in reasons}
    assert len(set(names.values())) == len(names)
    assert names[codes.REASON_BAD_SIGNATURE] == "bad-signature"
    assert names[ledger_tx.REASON_NOT_AUTHORIZED] == "not-authorized"
    for code in names:                                     # the ledger's enum names the same reasons
        assert Reason(code).name.lower().replace("_", "-") == names[code]


def test_unknown_codes_are_named_by_number():
    assert reason_name(99) == "code-99" and reason_name("x") == "unknown"
