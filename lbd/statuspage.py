"""The status page served at `/` of the HTTP endpoint: every VIP and backend
with state, health and its reason, weight, flows and rates, redrawn from
`/status` every few seconds without reloading.

One self-contained document (inline style and script, nothing fetched but
/status from the same origin; the Content-Security-Policy the handler sends
holds it to that), read-only like the endpoint it sits on. Built for a phone
as for a desk (the tables scroll sideways inside their own region) and for
the keyboard: semantic tables with captions and header cells, each table's
scroll region focusable, a pause button, and changes announced politely in
the summary line. Data goes into the page as text nodes, never as markup.
"""
from __future__ import annotations

REFRESH_S = 2

# Holds the page to itself: no file from elsewhere, and /status from its own origin.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                           "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'")

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lbd status</title>
<style>
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #c62828; --warn: #9a6700; --line: #8884; }
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 0.75rem; max-width: 80rem; }
h1 { font-size: 1.3rem; margin: 0 0 0.25rem; }
h2 { font-size: 1.05rem; margin: 1.25rem 0 0.25rem; }
p { margin: 0.25rem 0; }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 4px; }
.scroll:focus { outline: 3px solid Highlight; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
caption { text-align: left; padding: 0.3rem 0.5rem; font-size: 0.9rem; }
th, td { padding: 0.3rem 0.5rem; border-top: 1px solid var(--line); text-align: left; white-space: nowrap; }
td.n, th.n { text-align: right; }
.up, .active { color: var(--ok); }
.down, .held, .failed { color: var(--bad); font-weight: 600; }
.checking, .draining, .rising, .falling { color: var(--warn); }
button { font: inherit; padding: 0.3rem 0.8rem; }
button:focus-visible { outline: 3px solid Highlight; }
#error { color: var(--bad); font-weight: 600; }
</style>
</head>
<body>
<header>
<h1>lbd status</h1>
<p id="summary" role="status" aria-live="polite">loading /status</p>
<p id="error" role="alert"></p>
<p><button id="pause" type="button" aria-pressed="false">Pause updates</button>
<span id="updated"></span></p>
</header>
<main id="vips"></main>
<footer><p id="sample"></p></footer>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
let paused = false, timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : c === null || c === undefined ? "" : String(c));
  return node;
}
function num(n) { return n === null || n === undefined ? "-" : Number(n).toLocaleString("en"); }
function rate(r, field) {
  if (!r) return "-";
  const v = r[field + "_per_s"];
  return v < 100 ? v.toFixed(1) : Math.round(v).toLocaleString("en");
}
function clock(unix) { return new Date(unix * 1000).toLocaleTimeString("en-GB"); }
function endpoint(v) { return (v.address.includes(":") ? "[" + v.address + "]" : v.address) + ":" + v.port; }
// the words lbctl status uses: INIT has no verdict yet, "none" has no check
function healthWord(h) { return {INIT: "checking", none: "unchecked"}[h] || h; }

const COLUMNS = [["Backend"], ["State"], ["Health"], ["Health reason"], ["Weight", "n"], ["Flows", "n"],
  ["Idle", "n"], ["New flows/s", "n"], ["Packets/s", "n"], ["Bytes/s", "n"], ["Packets", "n"],
  ["Bytes", "n"], ["Note"]];

function backendRow(b, vipName) {
  const health = healthWord(b.health);
  const notes = [];
  if (b.note) notes.push(b.note);
  if (b.drain) notes.push("drain");
  if (b.hold_until) notes.push("second choice until " + clock(b.hold_until));
  const row = el("tr", {"data-vip": vipName, "data-backend": b.address});
  const cells = [
    [el("th", {scope: "row"}, b.address)],
    [el("td", {class: b.state, "data-field": "state"}, b.state)],
    [el("td", {class: health.toLowerCase(), "data-field": "health"}, health)],
    [el("td", {"data-field": "health_reason"}, b.health_detail || "")],
    [el("td", {class: "n"}, b.weight === undefined ? "-" : b.weight)],
    [el("td", {class: "n", "data-field": "flows"}, num(b.flows))],
    [el("td", {class: "n"}, num(b.idle_flows))],
    [el("td", {class: "n"}, rate(b.rate, "new_flows"))],
    [el("td", {class: "n"}, rate(b.rate, "packets"))],
    [el("td", {class: "n"}, rate(b.rate, "bytes"))],
    [el("td", {class: "n"}, num(b.packets))],
    [el("td", {class: "n"}, num(b.bytes))],
    [el("td", {}, notes.join("; "))],
  ];
  for (const [cell] of cells) row.append(cell);
  return row;
}

function vipSection(v, index) {
  const id = "vip-" + index;
  const section = el("section", {"aria-labelledby": id, "data-vip": v.name});
  section.append(el("h2", {id: id}, v.name + " \\u2014 " + endpoint(v) + "/" + v.protocol));
  const facts = [v.mode + (v.mode === "ipip" ? " (IP-in-IP)" : " (L2 direct server return)"),
    "hashing by " + (v.affinity === "client" ? "client address" : "flow"),
    "table " + (v.fingerprint || "-")];
  if (v.second_chance) facts.push("second chance: on, second table " + (v.second_fingerprint || "-") +
                                  (v.second_pending ? " (being built)" : ""));
  if (v.quic) facts.push("QUIC: " + (typeof v.quic === "object" ? JSON.stringify(v.quic) : v.quic));
  if (v.fail_open) facts.push("FAIL-OPEN: every backend failed its checks, all kept in the table");
  section.append(el("p", {}, facts.join(" \\u00b7 ")));
  const r = v.rate, c = v.counters || {};
  section.append(el("p", {}, "new flows/s " + rate(r, "new_flows") + " \\u00b7 packets/s " + rate(r, "packets") +
    " \\u00b7 bytes/s " + rate(r, "bytes") + " \\u00b7 packets " + num(c.packets) + " \\u00b7 bytes " + num(c.bytes)));
  const table = el("table", {});
  table.append(el("caption", {}, "Backends of " + v.name));
  const head = el("tr", {});
  for (const [name, cls] of COLUMNS) head.append(el("th", cls ? {scope: "col", class: cls} : {scope: "col"}, name));
  table.append(el("thead", {}, head));
  const body = el("tbody", {});
  for (const b of v.backends) body.append(backendRow(b, v.name));
  for (const b of v.held || []) body.append(backendRow({...b, health: "none", note: "removed from the config"}, v.name));
  table.append(body);
  const scroll = el("div", {class: "scroll", tabindex: "0", role: "region", "aria-label": "Backends of " + v.name});
  scroll.append(table);
  section.append(scroll);
  return section;
}

function render(s) {
  const attached = Object.entries(s.attached || {}).map(([k, v]) => k + " (" + v + ")").join(", ");
  const down = s.vips.flatMap(v => v.backends).filter(b => b.state !== "active" && b.state !== "draining").length;
  document.getElementById("summary").textContent = (s.ready ? "ready" : "NOT READY") +
    " \\u00b7 attached " + (attached || "nowhere") + " \\u00b7 " + s.vips.length + " VIPs \\u00b7 " +
    (down ? down + (down === 1 ? " backend" : " backends") + " out of the tables" : "every backend in its table");
  const main = document.getElementById("vips");
  main.replaceChildren(...s.vips.map(vipSection));
  const f = s.flows_sample;
  document.getElementById("sample").textContent = f && f.at ?
    "Flows and Idle counted at " + clock(f.at) + " (the tables are walked every " + f.every_s + " s): Flows are live, " +
    "Idle had no packet for " + f.idle_after_s + " s or " + f.closed_after_s + " s after the client's FIN or RST. " +
    "Rates over the last " + (s.rate_window_s || "-") + " s." : "";
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB");
}

async function refresh() {
  try {
    const response = await fetch("status", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    document.getElementById("error").textContent = "";
  } catch (err) {
    document.getElementById("error").textContent = "lbd is not answering /status: " + err.message;
  }
  if (!paused) timer = setTimeout(refresh, REFRESH_MS);
}

document.getElementById("pause").addEventListener("click", event => {
  paused = !paused;
  event.currentTarget.setAttribute("aria-pressed", String(paused));
  event.currentTarget.textContent = paused ? "Resume updates" : "Pause updates";
  clearTimeout(timer);
  if (!paused) refresh();
});
refresh();
</script>
</body>
</html>
""".replace("__REFRESH_MS__", str(REFRESH_S * 1000))
