"""Material lots recorded by machines through the directory, and ``ledgerlink admin trace`` on the live
ledger: every step proved against a certified header, a forged step refused."""

from __future__ import annotations

import time

import pytest

from ledgerlink.core import cbor
from ledgerlink.protocol import discovery as dsc
from ledgerlink.protocol.ledger_tx import RECORD_PROVENANCE, provenance_tx
from ledgerlink.tools import admin, admin_trace

from .conftest import CRYPTO

CHAIN = [("bale-%d", "cotton bale", None), ("sliver-%d", "sliver", "bale-%d"),
         ("carded-%d", "carded yarn", "sliver-%d"), ("combed-%d", "combed yarn", "carded-%d")]


def record_chain(site, n: int) -> None:
    """The four lots of one chain, each recorded by a machine of its step through the directory."""
    for lot, form, parent in CHAIN:
        priv, _ = site.register({"type": form + " machine", "line": "T%d" % n})
        d = site.device(priv)
        tx = provenance_tx(site.stack.chain_id, priv, (lot % n).encode(), "line T%d" % n, "B-%d" % n, form,
                           int(time.time() * 1000) - 1000, d.pub, int(time.time() * 1000),
                           inputs=None if parent is None else [(parent % n).encode()], backend=CRYPTO)
        ans = d.ask(dsc.DIR_SUBMIT, tx, timeout=20)
        assert ans[2] == dsc.DIR_OK, ans


def test_trace_proves_every_step_of_a_lot(site, capsys):
    record_chain(site, 1)
    proofs = lambda kind, rid: site.ledger.record(kind, rid)["proof"]      # noqa: E731
    steps = admin_trace.trace(proofs, site.stack.chain_id, site.stack.validators, b"combed-1")
    assert [(s.lot, s.depth, s.record[3]) for s in steps] == [
        (b"combed-1", 0, "combed yarn"), (b"carded-1", 1, "carded yarn"), (b"sliver-1", 2, "sliver"),
        (b"bale-1", 3, "cotton bale")]
    cluster = str(site.stack.data_dir / "ledger" / "cluster.json")
    assert admin.main(["--cluster", cluster, "trace", "combed-1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[3].startswith("      bale-1: cotton bale") and "proof verified" in out[0]
    assert admin.main(["--cluster", cluster, "trace", "no-such-lot"]) == 1
    assert "not recorded (absence proven" in capsys.readouterr().out


def test_trace_refuses_a_forged_step(site):
    record_chain(site, 2)

    def lying(kind, rid):
        proof = site.ledger.record(kind, rid)["proof"]
        if rid == b"sliver-2":                       # a node that says the sliver came from another bale
            rec = cbor.loads(proof[3])
            rec[8] = [b"bale-1"]
            proof[3] = cbor.dumps(rec)
        return proof

    with pytest.raises(admin_trace.TraceError):
        admin_trace.trace(lying, site.stack.chain_id, site.stack.validators, b"combed-2")


def test_directory_relays_only_the_requesters_own_records(site):
    pa, _ = site.register({"type": "lap-former"})
    pb, _ = site.register({"type": "lap-former"})
    a = site.device(pa)
    now = int(time.time() * 1000)
    foreign = provenance_tx(site.stack.chain_id, pb, b"lot-b", "x", "y", "sliver", now - 10, a.pub, now,
                            backend=CRYPTO)
    ans = a.ask(dsc.DIR_SUBMIT, foreign)
    assert ans[2] == dsc.DIR_REFUSED
    assert site.ledger.record(RECORD_PROVENANCE, b"lot-b")["proof"][3] is None


def test_dashboard_trace_page_shows_the_proved_chain_with_device_text_escaped(site):
    from types import SimpleNamespace

    from ledgerlink.gateway.dashboard import Dashboard

    record_chain(site, 3)
    priv, _ = site.register({"type": "combing machine"})
    d = site.device(priv)
    now = int(time.time() * 1000)
    tx = provenance_tx(site.stack.chain_id, priv, b"<b>lap-3</b>", "<script>alert(1)</script>", "B-3", "lap",
                       now - 10, d.pub, now, inputs=[b"combed-3"], backend=CRYPTO)
    assert d.ask(dsc.DIR_SUBMIT, tx, timeout=20)[2] == dsc.DIR_OK
    core = SimpleNamespace(chain_id=site.stack.chain_id, validator_keys=site.stack.validators,
                           group_key=site.stack.group_key, site="m2m",
                           gateway_name="gw")
    fake = SimpleNamespace(metrics=SimpleNamespace(core=core), ledger=site.ledger)
    status, ctype, body = Dashboard._answer(fake, "/trace", {"lot": "<b>lap-3</b>"})
    html = body.decode()
    assert status == 200 and "<script>alert" not in html and "&lt;script&gt;alert(1)" in html
    for lot in ("combed-3", "carded-3", "sliver-3", "bale-3"):
        assert lot in html
    assert html.count("verified (header") == 5
    _, _, body = Dashboard._answer(fake, "/trace", {"lot": "hex:zz"})
    assert "trace failed" in body.decode()
    import urllib.request                                  # the same page from the site's running gateway

    with urllib.request.urlopen(site.stack.dashboard_url.rstrip("/") + "/trace?lot=combed-3", timeout=20) as resp:
        live = resp.read().decode()
    assert live.count("verified (header") == 4 and "cotton bale" in live
