// Dashboard of the ledgerlink gateway. The server renders every page with its data; this script keeps the
// overview live (/api/state every 1.5 s), draws the plots (/api/history, /api/readings, /api/device) and
// reads a receipt file into the explorer's form. Every value from the API is put into the page with
// textContent (device-provided text is data, never markup).
"use strict";

const POLL_MS = 1500;
const PLOT_MS = 5000;
const SPARK_POINTS = 60;

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

function link(href, child) {
  const a = el("a");
  a.href = href;
  a.appendChild(child);
  return a;
}

function deviceCell(hex) {
  const code = el("code", shortId(hex));
  code.title = hex || "";
  return link("/device?id=" + encodeURIComponent(hex || ""), code);
}

function proofLink(hex, seq) {
  const a = el("a", "proof", "proof");
  a.href = "/proof?device=" + encodeURIComponent(hex) + "&seq=" + encodeURIComponent(seq);
  return a;
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error("HTTP " + r.status);
  return r.json();
}

// --- overview --------------------------------------------------------------------------------------------

let readings = {};

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
    const spark = el("span", null, "spark");
    spark.dataset.device = d.id;
    const row = [deviceCell(d.id), d.name || "", badge, ago(s.now_ms, d.last_ms), d.accepted, d.refused,
                 d.last_code === null ? "" : d.last_code + " " + d.last_reason, spark];
    if (d.ban_reason) row[2] = wrapBan(badge, d.ban_reason);
    return row;
  }), "no device seen yet", 8);
  drawSparks();

  fill("warnings", s.warnings.map((w) => [clock(w.time_ms), deviceCell(w.device), w.code, w.reason, w.text]),
       "no refusals", 5);

  fill("recent", s.recent.map((m) => [clock(m.received_ms), deviceCell(m.device), m.seq, m.mode,
                                      JSON.stringify(m.measurements), proofLink(m.device, m.seq)]),
       "no verified message yet", 6);

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

function drawSparks() {
  for (const spark of document.querySelectorAll("span.spark")) {
    const r = readings[spark.dataset.device];
    const keys = r ? Object.keys(r.series) : [];
    if (!keys.length) continue;
    spark.title = keys[0];
    LLPlot.draw(spark, r.t, r.series[keys[0]], { width: 120, height: 26, left: 1, right: 1, top: 2, bottom: 2,
                                                labels: false });
  }
}

async function poll() {
  const status = document.getElementById("status");
  try {
    render(await getJson("/api/state"));
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "status ok";
  } catch (e) {
    status.textContent = "no answer from the gateway (" + e.message + ")";
    status.className = "status stale";
  }
  setTimeout(poll, POLL_MS);
}

async function pollPlots() {
  try {
    const h = await getJson("/api/history");
    for (const fig of document.querySelectorAll("#site-charts figure[data-series]")) {
      LLPlot.draw(fig, h.t, h.series[fig.dataset.series] || []);
    }
    readings = await getJson("/api/readings?last=" + SPARK_POINTS);
    drawSparks();
  } catch (e) {
    // the status line shows when the gateway does not answer
  }
  setTimeout(pollPlots, PLOT_MS);
}

// --- device page -----------------------------------------------------------------------------------------

async function pollDevice() {
  const holder = document.getElementById("device-charts");
  try {
    const d = await getJson("/api/device?id=" + encodeURIComponent(holder.dataset.device));
    const h = d.history;
    for (const key of Object.keys(h.series)) {
      let fig = [...holder.querySelectorAll("figure[data-key]")].find((f) => f.dataset.key === key);
      if (!fig) {
        fig = el("figure", null, "chart");
        fig.dataset.key = key;
        fig.appendChild(el("figcaption", key));
        holder.appendChild(fig);
      }
      LLPlot.draw(fig, h.t, h.series[key]);
    }
  } catch (e) {
    // drawn again at the next poll
  }
  setTimeout(pollDevice, PLOT_MS);
}

// --- proof explorer --------------------------------------------------------------------------------------

function readReceiptFile() {
  const input = document.getElementById("receipt-file");
  const text = document.getElementById("receipt-hex");
  if (!input || !text) return;
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (!file) return;
    const bytes = new Uint8Array(await file.arrayBuffer());
    const ascii = new TextDecoder().decode(bytes).replace(/\s+/g, "");
    text.value = /^([0-9a-fA-F]{2})+$/.test(ascii) ? ascii
      : Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  });
}

const PAGE = document.body.dataset.page;
if (PAGE === "overview") {
  poll();
  pollPlots();
} else if (PAGE === "device") {
  pollDevice();
} else if (PAGE === "proof") {
  readReceiptFile();
}
