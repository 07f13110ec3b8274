"""The dashboard's trace page: ``/trace?lot=LOT`` shows a lot's provenance back to its raw material, each
step's record proof checked against the gateway's trusted validators (``ledgerlink.tools.admin_trace``).

Every value is escaped on the server (lot ids, origins and forms are text a device chose); the lot is
given as text or ``hex:...`` and bounded in length. A step whose proof does not check ends the page
with the reason instead of a trace.
"""

from __future__ import annotations

from typing import Any

from ledgerlink.gateway import pages
from ledgerlink.gateway.pages import esc
from ledgerlink.protocol.ledger_tx import MAX_ID
from ledgerlink.tools.admin_trace import TraceError, parse_lot, trace

FORM = ('<form method="get" action="/trace"><label>lot <input name="lot" value="%s" maxlength="140"></label> '
        '<button type="submit">trace</button></form>')


def trace_page(dashboard: Any, q: dict[str, str]) -> bytes:
    """The page for query ``q`` (``lot``) from ``dashboard`` (its ledger client and trusted validators)."""
    core = dashboard.metrics.core
    text = q.get("lot", "")
    body, message = "", "give a lot id (text, or hex:... for bytes)"
    if text:
        try:
            lot = parse_lot(text)
            if not 1 <= len(lot) <= MAX_ID:
                raise ValueError("a lot id has 1 to %d bytes" % MAX_ID)
            if dashboard.ledger is None:
                raise TraceError("this gateway has no ledger client")
            steps = trace(lambda kind, rid: dashboard.ledger.record(kind, rid)["proof"], core.chain_id,
                          core.validator_keys, lot, core.group_key)
            body = _table([s.as_json() for s in steps])
            message = "every step's record proof verified against a certified header (2f+1 validator signatures)"
        except (ValueError, TraceError, KeyError) as exc:
            message = "trace failed: %s" % exc
    content = (FORM % esc(text)) + '<p class="sub" id="trace-status">%s</p>' % esc(message) + body
    return pages.page("trace " + text, "trace", core.site, core.gateway_name, "<section><h2>material trace</h2>"
                      + content + "</section>")


def _table(steps: list[dict]) -> str:
    cells = []
    for s in steps:
        lot = "&nbsp;" * 4 * s["depth"] + esc(s["lot"])
        if not s["recorded"]:
            cells.append([lot, "not recorded (absence proven)", "", "", "", "", esc(s["proof_height"])])
            continue
        cells.append([lot, esc(s["form"]), esc(s["origin"]), esc(s["batch"]), esc(", ".join(s["inputs"])),
                      '<code>%s</code>' % esc((s["by"] or "")[:16]), "verified (header %s)" % esc(s["proof_height"])])
    head = "".join("<th>%s</th>" % h for h in ("lot", "form", "origin", "batch", "made from", "recorded by", "proof"))
    return '<table id="trace"><thead><tr>%s</tr></thead>%s</table>' % (head, pages.rows("trace-rows", cells,
                                                                                      "no steps", 7))
