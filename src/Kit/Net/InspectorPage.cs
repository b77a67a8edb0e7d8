namespace Kit.Cli.Net;

/// <summary>
/// The inspector's page: one document with its script and style inline (no external assets, so it works with no
/// network and leaks nothing): live flows, the DNS log, and an HTTP waterfall per guest, each with a text filter.
/// It reads the JSON API and refreshes on each server-sent event (<c>/api/events</c>), at most every 250 ms.
/// </summary>
internal static class InspectorPage
{
    public const string Html = """
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kit inspector</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>
body{font:13px system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1d2b3a;color:#fff;padding:8px 12px;display:flex;gap:16px;align-items:center}
header h1{font-size:15px;margin:0}
nav button{background:none;border:0;color:#cde;cursor:pointer;font-size:13px;padding:4px 8px}
nav button.on{color:#fff;border-bottom:2px solid #6cf}
#filter{margin-left:auto;padding:4px 6px;width:260px}
#status{font-size:11px;color:#9ab}
main{padding:8px 12px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid #eee;white-space:nowrap;font-variant-numeric:tabular-nums}
th{background:#f0f3f6;position:sticky;top:0}
td.n{text-align:right}
tr.live td:first-child{border-left:3px solid #3a3}
.bar{height:10px;background:#6cf;position:relative;min-width:2px}
.bar i{position:absolute;top:0;bottom:0;background:#37a}
.wf{width:40%}
h2{font-size:13px;margin:12px 0 4px}
.bad{color:#b22}
</style></head>
<body>
<header><h1>kit inspector</h1>
<nav><button data-tab="flows" class="on">Flows</button><button data-tab="dns">DNS</button><button data-tab="http">HTTP</button></nav>
<input id="filter" placeholder="filter (address, name, path, status...)"><span id="status">connecting</span></header>
<main id="view"></main>
<script>
"use strict";
let tab = "flows", data = {flows: [], dns: [], http: []}, pending = false;
const view = document.getElementById("view"), filter = document.getElementById("filter"), status = document.getElementById("status");
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;","'":"&#39;"}[c]));
const bytes = n => n < 1024 ? n + " B" : n < 1048576 ? (n / 1024).toFixed(1) + " KiB" : (n / 1048576).toFixed(1) + " MiB";
const ms = n => n == null ? "" : n < 1000 ? n.toFixed(1) + " ms" : (n / 1000).toFixed(2) + " s";
const time = t => new Date(t).toLocaleTimeString();
const match = o => { const f = filter.value.trim().toLowerCase(); return !f || JSON.stringify(o).toLowerCase().includes(f); };
function table(head, rows) {
  return "<table><tr>" + head.map(h => "<th>" + h + "</th>").join("") + "</tr>" + rows.join("") + "</table>";
}
function flows() {
  const rows = data.flows.filter(match).reverse().map(f => "<tr class=\"" + (f.ended ? "" : "live") + "\"><td>" + f.id + "</td><td>" + f.proto +
    "</td><td>" + esc(f.guest) + ":" + f.guestPort + "</td><td>" + esc(f.remote) + ":" + f.remotePort + "</td><td>" + esc(f.name || f.sni || f.httpHost || "") +
    "</td><td>" + esc(f.app || "") + "</td><td>" + time(f.start) + "</td><td class=n>" + ms(f.durationMs) + "</td><td class=n>" + bytes(f.bytesOut) + " / " + f.packetsOut +
    "</td><td class=n>" + bytes(f.bytesIn) + " / " + f.packetsIn + "</td><td class=n>" + (f.rttMs ? f.rttMs + " ms" : "") + "</td><td>" + esc(f.ended || "open") +
    "</td><td class=bad>" + esc(f.note || "") + "</td></tr>");
  return table(["#", "proto", "guest", "remote", "name", "app", "start", "duration", "out (bytes / pkts)", "in (bytes / pkts)", "rtt", "end", "note"], rows);
}
function dns() {
  const rows = data.dns.filter(match).reverse().map(d => "<tr><td>" + time(d.time) + "</td><td>" + esc(d.client) + "</td><td>" + esc(d.name) + "</td><td>" + esc(d.type) +
    "</td><td>" + esc(d.rcode) + "</td><td>" + esc(d.answer) + "</td><td>" + esc(d.source) + "</td><td class=n>" + ms(d.latencyMs) + "</td><td>" + (d.cacheHit ? "hit" : "") + "</td></tr>");
  return table(["time", "client", "name", "type", "rcode", "answer", "source", "latency", "cache"], rows);
}
function http() {
  const byGuest = {};
  for (const x of data.http.filter(match)) (byGuest[x.guest] ??= []).push(x);
  let out = "";
  for (const [guest, xs] of Object.entries(byGuest)) {
    const t0 = Math.min(...xs.map(x => Date.parse(x.start)));
    const t1 = Math.max(...xs.map(x => Date.parse(x.start) + (x.doneMs ?? x.firstByteMs ?? x.sentMs ?? 0)), t0 + 1);
    const scale = 100 / (t1 - t0);
    const rows = xs.map(x => {
      const left = (Date.parse(x.start) - t0) * scale, width = Math.max(0.3, (x.doneMs ?? 0) * scale), wait = (x.firstByteMs ?? 0) * scale;
      return "<tr><td>" + esc(x.method) + "</td><td>" + esc(x.host || x.remote) + "</td><td>" + esc(x.path) + "</td><td class=\"" + (x.status >= 400 || x.state !== "complete" ? "bad" : "") + "\">" +
        (x.status || esc(x.state)) + "</td><td class=n>" + bytes(x.responseBodyBytes) + "</td><td class=n>" + ms(x.doneMs) + "</td><td class=wf><div class=bar style=\"margin-left:" +
        left.toFixed(2) + "%;width:" + width.toFixed(2) + "%\"><i style=\"width:" + (width ? Math.min(100, wait / width * 100) : 0).toFixed(1) + "%\"></i></div></td></tr>";
    });
    out += "<h2>guest " + esc(guest) + "</h2>" + table(["method", "host", "path", "status", "body", "time", "waterfall (dark: waiting for the first byte)"], rows);
  }
  return out || "<p>No HTTP exchanges yet.</p>";
}
function render() { view.innerHTML = tab === "flows" ? flows() : tab === "dns" ? dns() : http(); }
async function load() {
  pending = false;
  try {
    const [f, d, h] = await Promise.all(["flows", "dns", "http"].map(p => fetch("/api/" + p).then(r => r.json())));
    data = {flows: f, dns: d, http: h};
    render();
  } catch (e) { status.textContent = "offline"; }
}
function soon() { if (!pending) { pending = true; setTimeout(load, 250); } }
document.querySelectorAll("nav button").forEach(b => b.onclick = () => {
  document.querySelectorAll("nav button").forEach(x => x.classList.toggle("on", x === b)); tab = b.dataset.tab; render(); });
filter.oninput = render;
const es = new EventSource("/api/events");
es.onopen = () => status.textContent = "live";
es.onerror = () => status.textContent = "reconnecting";
for (const k of ["flow-open", "flow-end", "dns", "http"]) es.addEventListener(k, soon);
setInterval(load, 5000);
load();
</script></body></html>
""";
}
