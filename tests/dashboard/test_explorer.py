"""The proof explorer and the server-rendered pages, in process: a GatewayService fed real frames over a
ledger whose headers carry real validator signatures. Every byte of a receipt that its check binds is
changed in turn and the explorer must show the chain as failed."""

from __future__ import annotations

import json

import pytest

from ledgerlink.core import cbor
from ledgerlink.gateway.batcher import verify_receipt
from ledgerlink.gateway.dashboard import Dashboard
from ledgerlink.gateway.explorer import explain

from tests.gateway.test_dashboard import EVIL_NAME, feed_scenario, site  # noqa: F401 - pytest fixture

STEPS = ["frame", "batch", "anchor", "header", "receipt"]


@pytest.fixture
def anchored(site):  # noqa: F811 - the imported fixture
    dash = Dashboard(site.metrics, site.ledger, store=site.svc.store)       # its history sees the frames
    feed_scenario(site)
    site.clock.advance(0.5)
    site.batcher.step(site.clock.wall, force=True)
    return site, dash


def get(dash: Dashboard, path: str, query: str = "") -> tuple[int, str, bytes]:
    res = dash.handle(path, query)
    assert res is not None, path
    return res


def test_stored_reading_chain_verifies_step_by_step(anchored):
    site, dash = anchored
    dev = site.net["sensor"].id.hex()
    status, ctype, body = get(dash, "/api/proof", "device=%s&seq=2" % dev)
    assert status == 200 and ctype.startswith("application/json")
    proof = json.loads(body)
    assert proof["found"] and proof["anchored"] and proof["stored"]["ok"] and proof["stored"]["error"] is None
    assert [s["name"] for s in proof["stored"]["steps"]] == STEPS and all(s["ok"] for s in proof["stored"]["steps"])
    header = dict(proof["stored"]["steps"][3]["facts"])
    signers = [k for k in header if k.startswith("signer ")]
    assert len(signers) >= 3 and all(header[k] in [v.hex() for v in site.ledger.keys] for k in signers)
    receipt = get(dash, "/api/receipt", "device=%s&seq=2" % dev)[2]
    frame = get(dash, "/api/frame", "device=%s&seq=2" % dev)[2]
    assert verify_receipt(receipt, frame, site.net.chain_id, site.ledger.keys).height >= 1
    page = get(dash, "/proof", "device=%s&seq=2" % dev)[2].decode()
    assert page.count('data-ok="true"') == 6 and 'data-ok="false"' not in page      # 5 steps and the verdict
    assert 'href="/api/receipt?device=%s&amp;seq=2"' % dev in page and "verify-receipt" in page


def _bound_positions(receipt: bytes) -> list[int]:
    """Every byte position except the seq item's (the receipt's seq is a hint: the frame hash binds it)."""
    r = cbor.loads(receipt)
    seq_item = cbor.dumps(r[2])
    start = receipt.index(b"\x02" + seq_item, 38) + 1
    return [i for i in range(len(receipt)) if not start <= i < start + len(seq_item)]


def test_every_bound_byte_of_a_receipt_is_checked(anchored):
    site, dash = anchored
    dev = site.net["sensor"].id.hex()
    receipt = get(dash, "/api/receipt", "device=%s&seq=1" % dev)[2]
    frame = get(dash, "/api/frame", "device=%s&seq=1" % dev)[2]
    assert explain(receipt, frame, site.net.chain_id, site.ledger.keys)["ok"]
    failed_steps = set()
    for i in _bound_positions(receipt):
        tampered = bytearray(receipt)
        tampered[i] ^= 0x01
        result = explain(bytes(tampered), frame, site.net.chain_id, site.ledger.keys)
        assert not result["ok"] and result["error"], i
        assert not result["steps"][-1]["ok"], i                    # the device's own check refuses it too
        failed_steps.update(s["name"] for s in result["steps"] if not s["ok"] and s["detail"] != "not checked")
    assert failed_steps == set(STEPS)                              # each step caught some change


def test_given_receipt_is_checked_against_the_stored_frame(anchored):
    site, dash = anchored
    dev = site.net["evil"].id.hex()
    receipt = bytearray(get(dash, "/api/receipt", "device=%s&seq=3" % dev)[2])
    page = get(dash, "/proof", "receipt=%s" % receipt.hex())[2].decode()
    assert 'id="given-chain"><p class="verdict-line ok" data-ok="true">' in page
    receipt[-10] ^= 0x40                                           # inside the last commit signature
    page = get(dash, "/proof", "device=%s&seq=3&receipt=%s" % (dev, receipt.hex()))[2].decode()
    assert 'id="given-chain"><p class="verdict-line failed" data-ok="false">does NOT verify' in page
    assert '<li class="step failed" data-step="header" data-ok="false">' in page
    assert 'id="stored-chain"><p class="verdict-line ok"' in page  # the stored one still verifies
    given = json.loads(get(dash, "/api/proof", "receipt=%s" % receipt.hex())[2])["given"]
    assert not given["ok"] and [s["ok"] for s in given["steps"]] == [True, True, True, False, False]


def test_bad_queries_answer_400_and_missing_readings_say_why(anchored):
    site, dash = anchored
    dev = site.net["sensor"].id.hex()
    for path, query in (("/api/proof", "device=xyz&seq=1"), ("/api/proof", "device=%s&seq=-1" % dev),
                        ("/api/receipt", "device=%s" % dev), ("/api/proof", "receipt=zz"),
                        ("/api/proof", "receipt=" + "00" * 20000), ("/device", "id=12"), ("/api/readings", "last=x")):
        status, ctype, body = get(dash, path, query)
        assert status == 400 and ctype.startswith("text/plain") and body.strip(), (path, query)
    assert get(dash, "/api/receipt", "device=%s&seq=77" % dev)[0] == 404
    assert json.loads(get(dash, "/api/proof", "device=%s&seq=77" % dev)[2]) == {"found": False, "anchored": False}
    page = get(dash, "/proof", "device=%s&seq=77" % dev)[2].decode()
    assert "this gateway stores no reading 77 of device" in page
    bad = get(dash, "/proof", "receipt=a10102")[2].decode()        # a map that is not a receipt
    assert "receipt does not decode: not a receipt" in bad and 'data-ok="false"' in bad
    bad = get(dash, "/proof", "receipt=a1")[2].decode()            # not one CBOR item
    assert "receipt does not decode: not one deterministic CBOR data item" in bad
    assert json.loads(get(dash, "/api/proof", "device=%s&seq=77" % site.net["stranger"].id.hex())[2])["found"] is False


def test_pages_render_their_data_before_scripts(anchored):
    site, dash = anchored
    page = get(dash, "/")[2].decode()
    sensor, evil = site.net["sensor"].id.hex(), site.net["evil"].id.hex()
    assert '<a href="/device?id=%s"><code title="%s">' % (sensor, sensor) in page
    assert '<span class="state state-online">online</span>' in page and "<td>bad-signature</td>" in page
    assert '<a class="proof" href="/proof?device=%s&amp;seq=3">proof</a>' % evil in page
    assert all('data-series="%s"' % s in page for s in ("accepted_per_s", "refused_per_s", "receipts_per_s",
                                                          "ledger_height", "commit_latency_ms"))
    assert EVIL_NAME not in page and "&lt;img src=x onerror=" in page and "<script>" not in page
    device = get(dash, "/device", "id=%s" % sensor)[2].decode()
    record = site.core.registry[site.net["sensor"].id].record
    assert '<code class="key">%s</code>' % record[2].hex() in device
    assert "<dt>key version</dt><dd>%s</dd>" % record[8] in device and "<dt>role</dt><dd>sensor</dd>" in device
    assert "<td>replay</td>" in device and "<td>bad-signature</td>" in device     # its last refusals
    assert '<a class="proof" href="/proof?device=%s&amp;seq=2">proof</a>' % sensor in device
    assert 'data-key="t"' in device
    evil_page = get(dash, "/device", "id=%s" % evil)[2].decode()
    assert EVIL_NAME not in evil_page and "&lt;img src=x" in evil_page
    info = json.loads(get(dash, "/api/device", "id=%s" % sensor)[2])
    assert info["record"]["2"] == "h'%s'" % record[2].hex() and info["history"]["seq"] == [1, 2]


def test_session_frames_show_the_device_signed_chain_statement(tmp_path):
    """A session frame is proved the device's by the chain statement its receipt names: checked, it shows
    verified; a frame the gateway sealed itself shows the statement pending; field 8 changed fails."""
    from ledgerlink.protocol import session_chain as sc
    from ledgerlink.protocol import device_protocol as dp
    from ledgerlink.gateway.batcher import Batcher
    from ledgerlink.gateway.metrics import GatewayMetrics
    from tests.gateway.test_checks import NOW, SITE
    from tests.gateway.test_session_chain import forged_reading, send, setup

    ledger, svc, dev = setup(tmp_path)
    dash = Dashboard(GatewayMetrics(svc.core), store=svc.store)
    outs = [dev.reading({"i": i}, NOW, dp.MODE_SESSION) for i in range(sc.EVERY_FRAMES)]
    statement = dev.chain_statement(NOW)
    assert send(svc, outs + [statement]) == []
    forged = forged_reading(svc, dev, statement.seq + 1)
    assert len(svc.handle_frame(dev.up_topic, forged, NOW).decided) == 1
    Batcher(svc.store, ledger, SITE, ledger.chain_id, ledger.keys, ledger.net["gateway"].priv).step(NOW + 1000,
                                                                                                    force=True)
    device = dev.device_id.hex()
    stored = json.loads(get(dash, "/api/proof", "device=%s&seq=%d" % (device, outs[5].seq))[2])["stored"]
    assert stored["ok"] and [s["name"] for s in stored["steps"]] == STEPS + ["statement"]
    assert stored["steps"][-1]["ok"] is True and dict(stored["steps"][-1]["facts"])["signed by"] == dev.public_key.hex()
    sealed = json.loads(get(dash, "/api/proof", "device=%s&seq=%d" % (device, statement.seq + 1))[2])["stored"]
    assert sealed["ok"] and sealed["steps"][-1]["ok"] is None and "pending" in sealed["steps"][-1]["detail"]
    page = get(dash, "/proof", "device=%s&seq=%d" % (device, statement.seq + 1))[2].decode()
    assert '<li class="step pending" data-step="statement" data-ok="pending">' in page
    receipt = bytearray(get(dash, "/api/receipt", "device=%s&seq=%d" % (device, outs[5].seq))[2])
    assert receipt[-35:-32] == b"\x08\x58\x20"                     # field 8 ends the receipt
    receipt[-1] ^= 0x01
    given = json.loads(get(dash, "/api/proof", "receipt=%s" % receipt.hex())[2])["given"]
    assert not given["ok"] and [s["ok"] for s in given["steps"]] == [True] * 5 + [False]
    assert "not stored by this gateway" in given["steps"][-1]["detail"]
