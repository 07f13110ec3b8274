// Line plots as inline SVG, built with DOM calls only (no markup from data).
// Each line is a <path class="line"> whose data-t and data-v attributes hold exactly the points drawn
// (null values break the line); the <svg> carries its scale (data-t0, data-t1, data-y0, data-y1 and the
// plot area data-x, data-y, data-w, data-h), so a test can map every vertex back to the value it shows.
"use strict";

const LLPlot = (() => {
  const NS = "http://www.w3.org/2000/svg";

  function node(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function range(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) {
      if (v === null || v === undefined) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (lo === Infinity) return [0, 1];
    if (lo === hi) return lo === 0 ? [0, 1] : [Math.min(0, lo), Math.max(0, hi)];
    return [lo, hi];
  }

  function number(v) {
    if (v === null || v === undefined) return "\u2013";
    const a = Math.abs(v);
    if (a >= 1e4 || (a > 0 && a < 0.01)) return v.toExponential(2);
    return String(Math.round(v * 100) / 100);
  }

  function clock(t) {
    return new Date(t).toLocaleTimeString();
  }

  // Draws the series (t: ms times, v: values or null) into `holder` (its old plot is replaced).
  function draw(holder, t, v, opts) {
    const fit = Math.floor(holder.clientWidth || 0) - 4;      // a plot as wide as its holder, at least 240 px
    const o = Object.assign({ width: Math.max(240, fit), height: 150, left: 52, right: 10, top: 10, bottom: 22,
                              labels: true }, opts);
    const w = o.width - o.left - o.right, h = o.height - o.top - o.bottom;
    const [y0, y1] = range(v);
    const t0 = t.length ? t[0] : 0, t1 = t.length > 1 ? t[t.length - 1] : t0 + 1;
    const svg = node("svg", {
      viewBox: "0 0 " + o.width + " " + o.height, width: o.width, height: o.height, class: "plot",
      role: "img", "data-t0": t0, "data-t1": t1, "data-y0": y0, "data-y1": y1,
      "data-x": o.left, "data-y": o.top, "data-w": w, "data-h": h, "data-points": t.length,
    });
    const x = (ti) => o.left + (t1 === t0 ? 0 : ((ti - t0) / (t1 - t0)) * w);
    const y = (vi) => o.top + h - ((vi - y0) / (y1 - y0)) * h;
    svg.appendChild(node("rect", { x: o.left, y: o.top, width: w, height: h, class: "area" }));
    if (o.labels) {
      svg.appendChild(node("text", { x: o.left - 4, y: o.top + 9, class: "axis end" }, number(y1)));
      svg.appendChild(node("text", { x: o.left - 4, y: o.top + h, class: "axis end" }, number(y0)));
      if (t.length) {
        svg.appendChild(node("text", { x: o.left, y: o.height - 6, class: "axis" }, clock(t0)));
        svg.appendChild(node("text", { x: o.left + w, y: o.height - 6, class: "axis end" }, clock(t1)));
      }
    }
    let d = "", pen = false;
    for (let i = 0; i < t.length; i++) {
      if (v[i] === null || v[i] === undefined) { pen = false; continue; }
      d += (pen ? "L" : "M") + x(t[i]).toFixed(2) + " " + y(v[i]).toFixed(2);
      pen = true;
    }
    const line = node("path", {
      d: d || "M0 0", class: "line", "data-t": t.join(","),
      "data-v": v.map((vi) => (vi === null || vi === undefined ? "" : vi)).join(","),
    });
    svg.appendChild(line);
    if (!t.length && o.labels) {
      svg.appendChild(node("text", { x: o.left + w / 2, y: o.top + h / 2, class: "axis middle" }, "no data yet"));
    }
    const old = holder.querySelector("svg.plot");
    if (old) old.replaceWith(svg); else holder.appendChild(svg);
    let last = null;
    for (let i = v.length - 1; i >= 0; i--) if (v[i] !== null && v[i] !== undefined) { last = v[i]; break; }
    holder.dataset.last = last === null ? "" : String(last);
    return svg;
  }

  return { draw, number };
})();
