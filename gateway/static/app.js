// Dashboard of the ledgerlink gateway: polls /api/state and renders it.
// Every value from the API is put into the page with textContent (device-provided text is data, never markup).
"use strict";

const POLL_MS = 1500;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function setText(id, text) {
  const e = document.getElementById(id);
  if (e) e.textContent = text === null || text === undefined ? "\u2013" : String(text);
}

function fill(id, rows, empty, columns) {
  const body = document.getElementById(id);
  const out = [];
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", empty, "empty");
    td.colSpan = columns;
    tr.appendChild(td);
    out.push(tr);
  }
  for (const cells of rows) {
    const tr = el("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? wrap(c) : el("td", c));
    out.push(tr);
  }
  body.replaceChildren(...out);
}

function wrap(node) {
  const td = el("td");
  td.appendChild(node);
  return td;
}

function shortId(hex) {
  return hex ? hex.slice(0, 12) + "\u2026" : "\u2013";
}

function ago(nowMs, tMs) {
  if (tMs === null || tMs === undefined) return "never";
  const s = Math.max(0, Math.round((nowMs - tMs) / 1000));
  return s + " s ago";
}

function clock(tMs) {
  return tMs ? new Date(tMs).toLocaleTimeString() : "\u2013";
}

function deviceCell(hex) {
  const code = el("code", shortId(hex));
  code.title = hex || "";
  return code;
}

function render(s) {
  setText("site", s.gateway.site);
  setText("gateway-id", s.gateway.id);
  setText("uptime", s.gateway.uptime_s);
  setText("ledger-height", s.ledger.height);
  setText("rps", s.rates.receipts_per_s);
  setText("accepted", s.totals.accepted);
  setText("refused", s.totals.refused);
  setText("online", s.devices.filter((d) => d.state === "online").length);

  fill("devices", s.devices.map((d) => {
    const badge = el("span", d.state, "state state-" + d.state);
    const row = [deviceCell(d.id), d.name || "", badge, ago(s.now_ms, d.last_ms), d.accepted, d.refused,
                 d.last_code === null ? "" : d.last_code + " " + d.last_reason];
    if (d.ban_reason) row[2] = wrapBan(badge, d.ban_reason);
    return row;
  }), "no device seen yet", 7);

  fill("warnings", s.warnings.map((w) => [clock(w.time_ms), deviceCell(w.device), w.code, w.reason, w.text]),
       "no refusals", 5);

  fill("recent", s.recent.map((m) => [clock(m.received_ms), deviceCell(m.device), m.seq, m.mode,
                                      JSON.stringify(m.measurements)]),
       "no verified message yet", 5);

  setText("chain-id", s.ledger.chain_id);
  setText("header-time", s.ledger.time_ms ? clock(s.ledger.time_ms) : null);
  setText("quorum", s.ledger.quorum);
  setText("validator-count", s.ledger.validators.length);
  setText("ledger-error", s.ledger.error ? "ledger: " + s.ledger.error : "");
  document.getElementById("validators").replaceChildren(...s.ledger.validators.map((k) => el("li", k)));
}

function wrapBan(badge, reason) {
  const span = el("span");
  span.appendChild(badge);
  span.appendChild(el("span", " " + reason, "ban-reason"));
  return span;
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const r = await fetch("/api/state", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "status ok";
  } catch (e) {
    status.textContent = "no answer from the gateway (" + e.message + ")";
    status.className = "status stale";
  }
  setTimeout(poll, POLL_MS);
}

poll();
