// playproof operators' dashboard: plain JavaScript over the operator API, charts by uPlot.
// The token stays in this tab's sessionStorage and travels as a Bearer header; nothing
// the API returns is ever inserted as HTML.
"use strict";

const DAY_MS = 86400000;
const state = { token: sessionStorage.getItem("playproof-token"), timers: [], charts: {},
  campaign: null, shots: new Map() };

const $ = (id) => document.getElementById(id);

async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) url.searchParams.set(k, v);
  const res = await fetch(url, { headers: { Authorization: `Bearer ${state.token}` } });
  if (res.status === 401 || res.status === 403) {
    const body = await res.json().catch(() => ({}));
    throw Object.assign(new Error(body.error || `HTTP ${res.status}`), { auth: true });
  }
  if (!res.ok) throw new Error(`HTTP ${res.status} on ${path}`);
  return res;
}

const json = async (path, params) => (await api(path, params)).json();
const fmt = (n) => (n === null || n === undefined ? "" : Number(n).toLocaleString("en-US"));

function cell(row, text, cls) {
  const td = document.createElement("td");
  if (text instanceof Node) td.append(text); else td.textContent = text ?? "";
  if (cls) td.className = cls;
  row.append(td);
  return td;
}

function fill(tableId, rows, build) {
  const body = $(tableId).querySelector("tbody");
  const fresh = document.createElement("tbody");
  for (const item of rows) {
    const tr = document.createElement("tr");
    build(tr, item);
    fresh.append(tr);
  }
  body.replaceWith(fresh);
}

function chart(id, series, data, scales) {
  const el = $(id);
  const opts = { width: Math.max(320, el.clientWidth || 800), height: 220,
    series: [{}, ...series], axes: [{}, { size: 60 }], scales: scales || {} };
  if (!state.charts[id]) state.charts[id] = new uPlot(opts, data, el);
  else state.charts[id].setData(data);
}

// --- live ingest -----------------------------------------------------------------

async function refreshLive() {
  const live = await json("/v1/live", { seconds: 300, step: 5 });
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  $("live-accepted").textContent = fmt(sum(live.accepted));
  $("live-duplicate").textContent = fmt(sum(live.duplicate));
  $("live-rejected").textContent = fmt(sum(live.rejected));
  $("live-connections").textContent = fmt(live.connections);
  $("live-queued").textContent = fmt(live.queued);
  const n = live.t.length;
  const last = n > 1 ? n - 2 : n - 1;  // the current step is still filling
  const rate = (xs) => xs.map((x) => x / live.step_s);
  $("live-rate").textContent = n ? fmt(Math.round(
    (live.accepted[last] + live.duplicate[last] + live.rejected[last]) / live.step_s)) : "0";
  chart("live-chart", [
    { label: "accepted/s", stroke: "#2f855a", width: 2 },
    { label: "duplicate/s", stroke: "#2b6cb0", width: 2 },
    { label: "rejected/s", stroke: "#c0392b", width: 2 },
  ], [live.t, rate(live.accepted), rate(live.duplicate), rate(live.rejected)]);
}

// --- campaign delivery -----------------------------------------------------------

function period() {
  const days = Number($("delivery-period").value);
  const now = new Date();
  const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  return { from: new Date(today - (days - 1) * DAY_MS).toISOString(),
    to: new Date(today + DAY_MS).toISOString(), tz: $("delivery-tz").value };
}

async function refreshDelivery() {
  const report = await json("/v1/reports/delivery", { ...period(), group_by: "campaign_id" });
  const t = report.totals;
  $("total-plays").textContent = fmt(t.plays);
  $("total-valid").textContent = fmt(t.valid);
  $("total-partial").textContent = fmt(t.partial);
  $("total-played").textContent = fmt(t.played_s);
  fill("delivery", report.rows, (tr, r) => {
    tr.className = "clickable";
    tr.dataset.campaign = r.campaign_id;
    tr.onclick = () => { state.campaign = r.campaign_id; refreshCampaign(); };
    cell(tr, r.campaign_id);
    for (const k of ["plays", "valid", "partial", "played_s", "mean_quality"]) {
      cell(tr, fmt(r[k]), "num");
    }
  });
  if (!state.campaign && report.rows.length) state.campaign = report.rows[0].campaign_id;
  if (state.campaign) await refreshCampaign();
}

async function refreshCampaign() {
  const range = period();
  const report = await json("/v1/reports/delivery",
    { ...range, group_by: "day", campaign_id: state.campaign });
  $("campaign-title").textContent = `${state.campaign}: valid and partial plays by day`;
  const byDay = new Map(report.rows.map((r) => [r.day, r]));
  const xs = [], valid = [], partial = [];
  for (let t = Date.parse(range.from); t < Date.parse(range.to); t += DAY_MS) {
    const row = byDay.get(new Date(t).toISOString().slice(0, 10));
    xs.push(t / 1000);
    valid.push(row ? row.valid : 0);
    partial.push(row ? row.partial : 0);
  }
  const bars = uPlot.paths.bars({ size: [0.4, 40] });
  chart("campaign-chart", [
    { label: "valid", stroke: "#2f855a", fill: "#2f855a88", paths: bars },
    { label: "partial", stroke: "#b7791f", fill: "#b7791f88", paths: bars },
  ], [xs, valid, partial], { x: { time: true, range: (u, lo, hi) => [lo - 43200, hi + 43200] } });
}

async function exportCsv() {
  const res = await api("/v1/reports/delivery",
    { ...period(), group_by: "campaign_id,day", format: "csv" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await res.blob());
  link.download = "delivery.csv";
  link.click();
}

// --- verification -------------------------------------------------------------------

async function refreshVerification() {
  const range = period();
  const [queue, byCampaign, byReason] = await Promise.all([
    json("/v1/verification"),
    json("/v1/reports/verification", { ...range, group_by: "campaign_id" }),
    json("/v1/reports/verification", { ...range, group_by: "reason" }),
  ]);
  const sum = (k) => byCampaign.rows.reduce((a, r) => a + (r[k] || 0), 0);
  $("verify-pending").textContent = fmt(queue.pending);
  $("verify-lag").textContent = queue.lag_s === null ? "0" : fmt(Math.round(queue.lag_s));
  $("verify-rate").textContent = queue.decided_per_s === null ? "(apart)"
    : queue.decided_per_s.toFixed(1);
  $("verify-verified").textContent = fmt(sum("verified"));
  $("verify-failed").textContent = fmt(sum("failed"));
  const most = Math.max(1, ...byReason.rows.map((r) => r.failed));
  fill("verify-reasons", byReason.rows, (tr, r) => {
    tr.dataset.reason = r.reason;
    cell(tr, r.reason);
    cell(tr, fmt(r.failed), "num");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * r.failed) / most}%`;
    cell(tr, bar);
  });
  await refreshFailedPlays(range);
}

async function referenceOf(contentId) {
  const key = `ref:${contentId}`;
  if (!state.shots.has(key)) {
    const found = await json(`/v1/contents/${encodeURIComponent(contentId)}/reference`)
      .catch(() => ({ references: [] }));
    state.shots.set(key, found.references.length ? found.references[0].url : null);
  }
  const url = state.shots.get(key);
  return url ? thumbnail(url) : document.createTextNode("no reference");
}

async function refreshFailedPlays(range) {
  const page = await json("/v1/impressions",
    { from: range.from, to: range.to, verification: "failed", limit: 1000 });
  const latest = page.impressions.slice(-15).reverse();
  const shots = await Promise.all(latest.map((i) => (i.screenshot_url
    ? thumbnail(i.screenshot_url) : Promise.resolve(document.createTextNode("none")))));
  const refs = await Promise.all(latest.map((i) => referenceOf(i.content_id)));
  fill("verify-failed-plays", latest, (tr, i) => {
    const at = latest.indexOf(i);
    tr.dataset.device = i.device_id;
    cell(tr, new Date(i.start_ts).toLocaleString());
    cell(tr, i.device_id);
    cell(tr, i.campaign_id);
    cell(tr, i.content_id);
    cell(tr, (i.verification_reasons || []).join(", "));
    cell(tr, shots[at]);
    cell(tr, refs[at]);
  });
}

// --- devices, rejects, impressions ------------------------------------------------

function badges(problems) {
  const span = document.createElement("span");
  for (const p of problems) {
    const b = document.createElement("span");
    b.className = `badge ${p}`;
    b.textContent = p;
    span.append(b);
  }
  return span;
}

async function refreshDevices() {
  // GET /v1/devices answers a page at a time: follow next_cursor to the last one.
  const devices = [];
  let cursor = null;
  do {
    const page = await json("/v1/devices", cursor ? { limit: 1000, cursor } : { limit: 1000 });
    devices.push(...page.devices);
    cursor = page.next_cursor;
  } while (cursor);
  fill("devices", devices, (tr, d) => {
    tr.dataset.device = d.device_id;
    if (d.problems.length) tr.className = "problem";
    cell(tr, d.device_id);
    cell(tr, d.store_id);
    cell(tr, d.last_seen ? new Date(d.last_seen).toLocaleString() : "never");
    cell(tr, d.last_skew_ms, "num");
    cell(tr, d.clock_state);
    cell(tr, d.drift_ppm, "num");
    for (const k of ["queue_depth", "evicted_total", "high_water", "open_gaps", "lost",
      "resets", "restarts"]) cell(tr, fmt(d[k]), "num");
    // Protocol version 2: the key the device signs with (and its state), the panel's last state.
    const key = d.key_id ? `${d.key_id} (${d.key_state || "?"})` : "unsigned";
    cell(tr, d.key_alarm ? `${key}: ${d.key_alarm}` : key);
    cell(tr, d.panel_state ? `${d.panel_state} (${d.panel_source})` : "—");
    cell(tr, badges(d.problems));
  });
}

async function refreshRejects() {
  const report = await json("/v1/reports/rejects", { group_by: "reason" });
  const most = Math.max(1, ...report.rows.map((r) => r.records));
  fill("rejects", report.rows, (tr, r) => {
    tr.dataset.reason = r.reason;
    cell(tr, r.reason);
    cell(tr, fmt(r.records), "num");
    cell(tr, fmt(r.times), "num");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * r.records) / most}%`;
    cell(tr, bar);
  });
}

async function thumbnail(url) {
  if (!state.shots.has(url)) {
    const res = await api(url).catch(() => null);
    state.shots.set(url, res ? URL.createObjectURL(await res.blob()) : null);
  }
  const src = state.shots.get(url);
  if (!src) return document.createTextNode("not uploaded yet");
  const img = document.createElement("img");
  img.className = "thumb";
  img.src = src;
  img.alt = "proof screenshot";
  img.onclick = () => { $("shot-full").src = src; $("shot-dialog").showModal(); };
  return img;
}

async function refreshImpressions() {
  const from = new Date(Date.now() - 10 * 60000).toISOString();
  const page = await json("/v1/impressions", { from, limit: 1000 });
  const latest = page.impressions.slice(-25).reverse();
  const shots = await Promise.all(latest.map((i) => (i.screenshot_url
    ? thumbnail(i.screenshot_url) : Promise.resolve(document.createTextNode("")))));
  fill("impressions", latest, (tr, i) => {
    cell(tr, new Date(i.start_ts).toLocaleTimeString());
    cell(tr, i.device_id);
    cell(tr, i.seq, "num");
    cell(tr, i.campaign_id);
    cell(tr, i.content_id);
    cell(tr, i.status);
    cell(tr, i.quality, "num");
    cell(tr, i.duration_s, "num");
    cell(tr, shots[latest.indexOf(i)]);
  });
}

// --- session -----------------------------------------------------------------------

function every(ms, fn) {
  const run = () => fn().then(() => {
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }).catch((err) => { if (err.auth) logout(err.message); else console.error(err); });
  run();
  state.timers.push(setInterval(run, ms));
}

function start(name) {
  $("login").hidden = true;
  $("app").hidden = false;
  $("operator").textContent = `operator ${name}`;
  every(2000, refreshLive);
  every(5000, refreshDelivery);
  every(5000, refreshVerification);
  every(5000, refreshDevices);
  every(10000, refreshRejects);
  every(5000, refreshImpressions);
}

function logout(message) {
  state.timers.forEach(clearInterval);
  state.timers = [];
  sessionStorage.removeItem("playproof-token");
  state.token = null;
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
}

async function login(token) {
  state.token = token;
  try {
    const me = await json("/v1/operator");
    sessionStorage.setItem("playproof-token", token);
    $("login-error").hidden = true;
    start(me.name);
  } catch (err) {
    logout(`Sign-in refused: ${err.message}`);
  }
}

$("login-form").addEventListener("submit", (e) => { e.preventDefault(); login($("token").value.trim()); });
$("logout").addEventListener("click", () => logout(""));
$("delivery-csv").addEventListener("click", () => exportCsv().catch(console.error));
$("delivery-period").addEventListener("change", () => {
  refreshDelivery().catch(console.error);
  refreshVerification().catch(console.error);
});
$("delivery-tz").addEventListener("change", () => refreshDelivery().catch(console.error));
const localZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
if (localZone && localZone !== "UTC") $("delivery-tz").add(new Option(localZone));
if (state.token) login(state.token);
