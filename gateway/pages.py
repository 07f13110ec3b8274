"""Server-rendered pages of the dashboard: the overview, a device's page and the proof explorer.

The pages carry their data as HTML at first paint (tables, device facts, the checked proof chain); the
scripts in ``static/`` then keep the overview live and draw the plots. Every value is escaped with
``html.escape`` (device-provided text is shown as text, never markup); no page has an inline script or
style, so the Content-Security-Policy of the dashboard holds.
"""

from __future__ import annotations

import datetime
from html import escape
from typing import Any, Iterable

from ledgerlink.protocol import codes

STATE_ROWS = 50            # readings listed on a device page
NO_VALUE = "\u2013"
ROLE_NAMES = {value: name[5:].lower() for name, value in vars(codes).items() if name.startswith("ROLE_")}


def esc(value: Any) -> str:
    return escape(NO_VALUE if value is None else str(value), quote=True)


def clock(time_ms: int | None) -> str:
    if not time_ms:
        return NO_VALUE
    return datetime.datetime.fromtimestamp(time_ms / 1000, datetime.timezone.utc).strftime("%H:%M:%S UTC")


def date_time(time_ms: int | None) -> str:
    if not time_ms:
        return NO_VALUE
    return datetime.datetime.fromtimestamp(time_ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(now_ms: int, time_ms: int | None) -> str:
    if time_ms is None:
        return "never"
    return "%d s ago" % max(0, round((now_ms - time_ms) / 1000))


def short_id(hex_id: str) -> str:
    return hex_id[:12] + "\u2026" if hex_id else NO_VALUE


def device_cell(hex_id: str) -> str:
    """A device id linked to its page (as ``app.js`` builds it)."""
    return '<a href="/device?id=%s"><code title="%s">%s</code></a>' % (esc(hex_id), esc(hex_id), esc(short_id(hex_id)))


def proof_link(hex_id: str, seq: Any) -> str:
    return '<a class="proof" href="/proof?device=%s&amp;seq=%s">proof</a>' % (esc(hex_id), esc(seq))


def role_name(role: Any) -> str:
    try:
        return ROLE_NAMES.get(role) or str(role)
    except TypeError:
        return str(role)


def rows(body_id: str, cells: Iterable[list[str]], empty: str, columns: int) -> str:
    """A ``tbody`` of already escaped cells (the empty row as ``app.js`` writes it)."""
    out = ["<tr>" + "".join("<td>%s</td>" % c for c in row) + "</tr>" for row in cells]
    if not out:
        out = ['<tr><td class="empty" colspan="%d">%s</td></tr>' % (columns, esc(empty))]
    return '<tbody id="%s">%s</tbody>' % (body_id, "".join(out))


def page(title: str, page_name: str, site: str, gateway_id: str, content: str, status: str = "") -> bytes:
    return ("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%(title)s</title>
<link rel="stylesheet" href="/static/style.css">
<script src="/static/plot.js" defer></script>
<script src="/static/app.js" defer></script>
</head>
<body data-page="%(page)s">
<header>
  <h1>ledgerlink gateway <span id="site">%(site)s</span></h1>
  <p class="sub">gateway <code id="gateway-id">%(gw)s</code>%(status)s</p>
  <nav><a href="/">overview</a> <a href="/proof">proof explorer</a> <a href="/trace">material trace</a> <a href="/versions">versions</a> <a href="/metrics">metrics</a></nav>
</header>
<main>
%(content)s
</main>
</body>
</html>
""" % {"title": esc(title), "page": esc(page_name), "site": esc(site), "gw": esc(gateway_id),
       "status": " &middot; " + status if status else "", "content": content}).encode()


# --- overview ---------------------------------------------------------------------------------------------

CHARTS = (("accepted_per_s", "accepted / s"), ("refused_per_s", "refused / s"), ("receipts_per_s", "receipts / s"),
          ("ledger_height", "ledger height"), ("commit_latency_ms", "commit latency (ms, accept \u2192 receipt)"))


def tile(label: str, value_id: str, value: Any) -> str:
    return '<div class="tile"><div class="label">%s</div><div class="value" id="%s">%s</div></div>' % (
        esc(label), value_id, esc(value))


def state_badge(d: dict) -> str:
    badge = '<span class="state state-%s">%s</span>' % (esc(d["state"]), esc(d["state"]))
    if d.get("ban_reason"):
        return '<span>%s<span class="ban-reason"> %s</span></span>' % (badge, esc(d["ban_reason"]))
    return badge


def overview(s: dict) -> bytes:
    """The overview as ``app.js`` renders it from ``/api/state`` ``s``."""
    now = s["now_ms"]
    online = sum(1 for d in s["devices"] if d["state"] == "online")
    tiles = "".join((tile("ledger height (verified)", "ledger-height", s["ledger"]["height"]),
                     tile("receipts / s", "rps", s["rates"]["receipts_per_s"]),
                     tile("accepted", "accepted", s["totals"]["accepted"]),
                     tile("refused", "refused", s["totals"]["refused"]),
                     tile("devices online", "online", online)))
    charts = "".join('<figure class="chart" data-series="%s"><figcaption>%s</figcaption></figure>' % (name, esc(title))
                     for name, title in CHARTS)
    devices = rows("devices", ([device_cell(d["id"]), esc(d["name"] or ""), state_badge(d), esc(ago(now, d["last_ms"])),
                                esc(d["accepted"]), esc(d["refused"]),
                                "" if d["last_code"] is None else esc("%s %s" % (d["last_code"], d["last_reason"])),
                                '<span class="spark" data-device="%s"></span>' % esc(d["id"])]
                               for d in s["devices"]), "no device seen yet", 8)
    warnings = rows("warnings", ([esc(clock(w["time_ms"])), device_cell(w["device"]), esc(w["code"]), esc(w["reason"]),
                                  esc(w["text"])] for w in s["warnings"]), "no refusals", 5)
    recent = rows("recent", ([esc(clock(m["received_ms"])), device_cell(m["device"]), esc(m["seq"]), esc(m["mode"]),
                              esc(_json_text(m["measurements"])), proof_link(m["device"], m["seq"])]
                             for m in s["recent"]), "no verified message yet", 6)
    ledger = s["ledger"]
    validators = "".join("<li>%s</li>" % esc(k) for k in ledger["validators"])
    content = """  <section class="tiles">%(tiles)s</section>
  <section>
    <h2>Last hour</h2>
    <div class="charts" id="site-charts">%(charts)s</div>
  </section>
  <section>
    <h2>Devices</h2>
    <table>
      <thead><tr><th>device</th><th>name</th><th>state</th><th>last frame</th><th>accepted</th><th>refused</th><th>last refusal</th><th>readings</th></tr></thead>
      %(devices)s
    </table>
  </section>
  <section>
    <h2>Warnings</h2>
    <table>
      <thead><tr><th>time</th><th>device</th><th>code</th><th>reason</th><th>detail</th></tr></thead>
      %(warnings)s
    </table>
  </section>
  <section>
    <h2>Recent verified messages</h2>
    <table>
      <thead><tr><th>received</th><th>device</th><th>seq</th><th>mode</th><th>measurements</th><th></th></tr></thead>
      %(recent)s
    </table>
  </section>
  <section>
    <h2>Ledger</h2>
    <p>chain <code id="chain-id">%(chain)s</code> &middot; header time <span id="header-time">%(htime)s</span> &middot;
      quorum <span id="quorum">%(quorum)s</span> of <span id="validator-count">%(nval)s</span>
      <span id="ledger-error" class="error">%(error)s</span></p>
    <ol id="validators" class="mono">%(validators)s</ol>
  </section>""" % {"tiles": tiles, "charts": charts, "devices": devices, "warnings": warnings, "recent": recent,
                   "chain": esc(ledger["chain_id"]), "htime": esc(clock(ledger["time_ms"])),
                   "quorum": esc(ledger["quorum"]), "nval": esc(len(ledger["validators"])),
                   "error": esc("ledger: " + ledger["error"]) if ledger.get("error") else "", "validators": validators}
    status = 'up <span id="uptime">%s</span> s &middot; <span id="status" class="status">as of %s</span>' % (
        esc(s["gateway"]["uptime_s"]), esc(clock(now)))
    return page("ledgerlink gateway", "overview", s["gateway"]["site"], s["gateway"]["id"], content, status)


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- device ---------------------------------------------------------------------------------------------


def facts(pairs: Iterable[tuple[str, str]], css: str = "facts") -> str:
    """A ``dl`` of (label, already escaped value) pairs."""
    return '<dl class="%s">%s</dl>' % (css, "".join("<dt>%s</dt><dd>%s</dd>" % (esc(k), v) for k, v in pairs))


def device_page(site: str, gateway_id: str, dev_hex: str, info: dict | None, record: dict | None,
                registry_height: int | None, sessions: list[dict], history: dict) -> bytes:
    """A device's page: ``info`` its row of ``/api/state`` (None: not seen), ``record`` its proven ledger
    record (None: none known), ``sessions`` its session ids and expiry, ``history`` its readings and refusals."""
    pairs: list[tuple[str, str]] = [("device id", "<code>%s</code>" % esc(dev_hex))]
    if info is not None:
        pairs += [("state", state_badge(info)), ("name", esc(info["name"] or "")),
                  ("accepted / refused", "%s / %s" % (esc(info["accepted"]), esc(info["refused"]))),
                  ("last frame", esc(date_time(info["last_ms"])))]
    else:
        pairs.append(("state", "not seen by this gateway"))
    if record is not None:
        attrs = record.get(4)
        pairs += [("public key", '<code class="key">%s</code>' % esc(_hex(record.get(2)))),
                  ("key version", esc(record.get(8))), ("role", esc(role_name(record.get(3)))),
                  ("attributes", esc(_json_text(attrs if isinstance(attrs, dict) else {}))),
                  ("registered", esc(date_time(record.get(6)))),
                  ("last key rotation", esc(date_time(record.get(11)))),
                  ("record proven at height", esc(registry_height))]
    else:
        pairs.append(("ledger record", "none proven yet"))
    pairs.append(("sessions", "<br>".join("<code>%s</code> until %s" % (esc(x["id"]), esc(date_time(x["valid_until_s"] * 1000)))
                                          for x in sessions) or "none"))
    series = history["series"]
    readings = list(zip(history["t"], history["seq"], *series.values()))[::-1][:STATE_ROWS]
    names = list(series)
    reading_rows = rows("readings", ([esc(clock(r[0])), esc(r[1])] + [esc(v) for v in r[2:]]
                                     + [proof_link(dev_hex, r[1])] for r in readings), "no reading kept", len(names) + 3)
    refusal_rows = rows("refusals", ([esc(clock(w["time_ms"])), esc(w["code"]), esc(w["reason"]), esc(w["text"])]
                                     for w in history["refusals"]), "no refusal", 4)
    charts = "".join('<figure class="chart" data-key="%s"><figcaption>%s</figcaption></figure>' % (esc(k), esc(k))
                     for k in names)
    head = "".join("<th>%s</th>" % esc(k) for k in names)
    content = """  <h2>Device %(name)s</h2>
  %(facts)s
  <section>
    <h2>Readings</h2>
    <div class="charts" id="device-charts" data-device="%(dev)s">%(charts)s</div>
    <table>
      <thead><tr><th>time</th><th>seq</th>%(head)s<th></th></tr></thead>
      %(readings)s
    </table>
  </section>
  <section>
    <h2>Last refusals</h2>
    <table>
      <thead><tr><th>time</th><th>code</th><th>reason</th><th>detail</th></tr></thead>
      %(refusals)s
    </table>
  </section>""" % {"name": esc((info or {}).get("name") or short_id(dev_hex)), "facts": facts(pairs), "dev": esc(dev_hex),
                   "charts": charts, "head": head, "readings": reading_rows, "refusals": refusal_rows}
    return page("device %s" % short_id(dev_hex), "device", site, gateway_id, content)


def _hex(value: Any) -> str:
    return value.hex() if isinstance(value, (bytes, bytearray)) else str(value)


# --- proof explorer -------------------------------------------------------------------------------------


STEP_STATES = {True: ("ok", "true", "verified"), False: ("failed", "false", "FAILED"),
               None: ("pending", "pending", "pending")}


def chain_html(result: dict, list_id: str) -> str:
    """The checked steps of ``explorer.explain`` as an ordered list."""
    items = []
    for s in result["steps"]:
        fact_pairs = [(label, "<code>%s</code>" % esc(value)) for label, value in s["facts"]]
        css, ok, verdict = STEP_STATES[s["ok"]]
        items.append('<li class="step %s" data-step="%s" data-ok="%s"><span class="verdict">%s</span> '
                     '<strong>%s</strong><p>%s</p>%s</li>' % (
                         css, esc(s["name"]), ok, verdict, esc(s["title"]), esc(s["detail"]), facts(fact_pairs)))
    pending = [s["title"] for s in result["steps"] if s["ok"] is None]
    verdict = ('<p class="verdict-line ok" data-ok="true">every step verified against the trusted validator set%s</p>'
               % esc("; pending: " + ", ".join(pending) if pending else "") if result["ok"] else
               '<p class="verdict-line failed" data-ok="false">does NOT verify: %s</p>' % esc(result["error"]))
    return '<div class="proof-result" id="%s">%s<ol class="chain">%s</ol></div>' % (list_id, verdict, "".join(items))


def proof_page(site: str, gateway_id: str, device: str, seq: str, found: dict | None, stored: dict | None,
               given: dict | None, given_text: str, message: str) -> bytes:
    """The explorer: a form to pick a reading, ``stored`` the chain of its stored receipt, ``given`` the chain
    of a receipt the user gave (``given_text``, hex)."""
    parts = ["""  <h2>Proof explorer</h2>
  <form class="pick" method="get" action="/proof">
    <label>device <input name="device" size="34" value="%s" placeholder="32 hex digits"></label>
    <label>seq <input name="seq" size="8" value="%s"></label>
    <button type="submit">show its proof</button>
  </form>""" % (esc(device), esc(seq))]
    if message:
        parts.append('<p class="note" id="proof-message">%s</p>' % esc(message))
    if found is not None:
        q = "device=%s&amp;seq=%s" % (esc(device), esc(seq))
        parts.append(facts([("reading", "seq %s of %s" % (esc(seq), device_cell(device))),
                            ("device time", esc(date_time(found.get("time_ms")))),
                            ("received", esc(date_time(found.get("received_ms")))),
                            ("frame hash", "<code>%s</code>" % esc(_hex(found.get("frame_hash"))))]))
        if stored is not None:
            parts.append('<p class="downloads"><a id="download-receipt" download="receipt-%s-%s.cbor" '
                         'href="/api/receipt?%s">download receipt</a> <a id="download-frame" download="frame-%s-%s.cbor" '
                         'href="/api/frame?%s">download frame</a> &middot; check offline: '
                         '<code>ledgerlink admin --up-config UP.json verify-receipt receipt-%s-%s.cbor --frame '
                         'frame-%s-%s.cbor</code></p>' % ((esc(device[:12]), esc(seq), q) * 2 + (esc(device[:12]), esc(seq)) * 2))
            parts.append("<h3>Stored receipt</h3>" + chain_html(stored, "stored-chain"))
    if given is not None:
        parts.append("<h3>Receipt you gave</h3>" + chain_html(given, "given-chain"))
    parts.append("""  <form class="check" method="get" action="/proof">
    <h3>Check a receipt</h3>
    <p>A receipt file (CBOR) or its hex; its frame is found in this gateway's store by the frame hash it names.</p>
    <input type="hidden" name="device" value="%s"><input type="hidden" name="seq" value="%s">
    <input type="file" id="receipt-file" accept=".cbor,.hex,application/cbor">
    <textarea name="receipt" id="receipt-hex" rows="4" cols="80" spellcheck="false">%s</textarea>
    <button type="submit">check it</button>
  </form>""" % (esc(device), esc(seq), esc(given_text)))
    return page("proof explorer", "proof", site, gateway_id, "\n".join(parts))
