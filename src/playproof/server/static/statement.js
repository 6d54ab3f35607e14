// playproof's printable billing statement: plain JavaScript over the operator API.
// One section per supplier, each printed on a page of its own (statement.css). The
// token is the dashboard's, from this tab's sessionStorage, sent as a Bearer header;
// nothing the API returns is ever inserted as HTML.
"use strict";

const KEYS = ["from", "to", "tz", "supplier_id", "campaign_id"];
const EXAMPLES = 3; // failed plays shown beside their content's reference, per supplier
const state = { token: sessionStorage.getItem("playproof-token"), catalog: null };
const $ = (id) => document.getElementById(id);

async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v) url.searchParams.set(k, v);
  const res = await fetch(url, { headers: { Authorization: `Bearer ${state.token}` } });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    throw Object.assign(new Error(body.error || `HTTP ${res.status} on ${path}`), {
      status: res.status,
    });
  }
  return res;
}

const json = async (path, params) => (await api(path, params)).json();

async function picture(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

function el(tag, cls, ...children) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

// columns: [heading, field or function of the item, numeric]
function table(columns, items) {
  const head = el("tr", "", ...columns.map(([name, , num]) => el("th", num ? "num" : "", name)));
  const rows = items.map((item) =>
    el("tr", "", ...columns.map(([, field, num]) =>
      el("td", num ? "num" : "", typeof field === "function" ? field(item) : item[field]))));
  return el("table", "", el("thead", "", head), el("tbody", "", ...rows));
}

function when(text, tz) {
  try {
    const local = new Date(text).toLocaleString("en-GB", { timeZone: tz, timeZoneName: "short" });
    return `${text} (${local})`;
  } catch {
    return text;
  }
}

function meta(doc) {
  const dl = el("dl", "meta");
  const add = (name, value) => dl.append(el("dt", "", name), el("dd", "", value));
  add("Period", `${when(doc.from, doc.tz)} to ${when(doc.to, doc.tz)}, ${doc.tz}`);
  add("Status", el("span", `status ${doc.status}`, doc.status));
  add(doc.finalized_at ? "Final since" : "Final once settled", doc.finalized_at || doc.settles_at);
  const filters = Object.entries(doc.filters).filter(([, v]) => v).map(([k, v]) => `${k}=${v}`);
  if (filters.length) add("Filters", filters.join(", "));
  add("Digest (SHA-256)", el("span", "digest", doc.digest));
  return dl;
}

const LINE_COLUMNS = [
  ["Campaign", "campaign_id"], ["Ad group", "ad_group_id"], ["Plays", "plays", 1],
  ["Valid", "valid", 1], ["Partial", "partial", 1], ["Verified", "verified", 1],
  ["Failed", "failed", 1], ["Pending", "pending", 1], ["Billable", "billable_plays", 1],
  ["Impressions", "impressions", 1],
  ["Measured by", (l) => (l.sourcetype === null ? "" : `${l.sourcetype} ${l.vendor || ""}`)],
  ["Price", (l) => (l.price_model ? `${l.price_amount} ${l.price_model}` : "not booked")],
  ["Amount", "amount", 1], ["Currency", "currency"],
];
const ADJUSTMENT_COLUMNS = [
  ["Period", (a) => `${a.period_from} to ${a.period_to}`], ["Campaign", "campaign_id"],
  ["Ad group", "ad_group_id"], ["Billable", "billable_plays", 1],
  ["Impressions", "impressions", 1], ["Amount", "amount", 1], ["Currency", "currency"],
  ["Plays corrected", (a) => a.plays.length, 1],
];
const TOTAL_COLUMNS = [
  ["Currency", "currency"], ["Billable", "billable_plays", 1], ["Impressions", "impressions", 1],
  ["Amount", "amount", 1], ["Adjustments", "adjustments", 1], ["Amount due", "amount_due", 1],
];

function failures(totals) {
  const byReason = new Map();
  for (const total of totals) {
    for (const [reason, n] of Object.entries(total.failed_by_reason)) {
      byReason.set(reason, (byReason.get(reason) || 0) + n);
    }
  }
  return [...byReason].map(([reason, plays]) => ({ reason, plays }));
}

async function reference(contentId) {
  const found = await json(`/v1/contents/${encodeURIComponent(contentId)}/reference`);
  return found.references.length ? picture(found.references[0].url) : null;
}

async function example(play) {
  const shot = await picture(play.screenshot_url);
  const ref = await reference(play.content_id).catch(() => null);
  const side = (src, label) => el("div", "", src ? Object.assign(el("img"), { src, alt: label })
    : el("span", "", "no reference image"), label);
  return el("figure", "",
    el("div", "pair", side(shot, "screenshot"), side(ref, `reference of ${play.content_id}`)),
    el("figcaption", "",
      `${play.device_id}/${play.journal_id}/${play.seq} · ${play.start_ts} · ` +
      `${play.campaign_id} · failed: ${play.verification_reasons.join(", ")}`));
}

async function examples(doc, supplierId) {
  const query = { from: doc.from, to: doc.to, supplier_id: supplierId, verification: "failed",
    campaign_id: doc.filters.campaign_id, limit: "500" };
  const page = await json("/v1/impressions", query);
  const candidates = page.impressions.filter((i) => i.screenshot_url);
  // One example per first reason before a second of any, so the page shows the variety.
  const firsts = new Map();
  for (const play of candidates) {
    if (!firsts.has(play.verification_reasons[0])) firsts.set(play.verification_reasons[0], play);
  }
  const shown = [];
  for (const play of new Set([...firsts.values(), ...candidates])) {
    if (shown.length >= EXAMPLES) break;
    const figure = await example(play).catch(() => null); // a screenshot not uploaded yet
    if (figure) shown.push(figure);
  }
  return shown;
}

async function supplierPage(doc, supplierId, part) {
  const named = state.catalog?.suppliers.find((s) => s.supplier_id === supplierId);
  const title = named?.name ? `${named.name} (${supplierId})` : supplierId;
  const section = el("section", "supplier",
    el("header", "", el("h1", "", `Billing statement · ${title}`), el("span", "", "playproof")),
    meta(doc));
  section.dataset.supplier = supplierId;
  section.append(el("h2", "", "Lines"), table(LINE_COLUMNS, part.lines));
  if (part.adjustments.length) {
    section.append(el("h2", "", "Adjustments to final statements"),
      table(ADJUSTMENT_COLUMNS, part.adjustments));
  }
  section.append(el("h2", "", "Totals"), table(TOTAL_COLUMNS, part.totals));
  const failed = failures(part.totals);
  if (failed.length) {
    section.append(el("h2", "", "Failures by reason"),
      table([["Reason", "reason"], ["Plays", "plays", 1]], failed));
    const shown = await examples(doc, supplierId);
    if (shown.length) {
      section.append(el("h2", "", "Examples: failed plays beside their content's reference"),
        el("div", "examples", ...shown));
    }
  }
  section.append(el("p", "note", doc.rounding));
  return section;
}

function bySupplier(doc) {
  const parts = new Map();
  const of = (id) => parts.get(id) || parts.set(id, { lines: [], adjustments: [], totals: [] })
    .get(id);
  for (const line of doc.lines) of(line.supplier_id).lines.push(line);
  for (const item of doc.adjustments) of(item.supplier_id).adjustments.push(item);
  for (const total of doc.totals.by_supplier) of(total.supplier_id).totals.push(total);
  return [...parts].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

function asked() {
  const params = new URLSearchParams(location.search);
  return Object.fromEntries(KEYS.map((k) => [k, params.get(k) || ""]));
}

async function show() {
  const query = asked();
  for (const k of KEYS) $(k).value = query[k];
  if (!query.from || !query.to) return done("Choose a period: from and to.");
  const doc = await json("/v1/reports/billing", query);
  state.catalog = await json("/v1/catalog").catch(() => null);
  const pages = [];
  for (const [supplierId, part] of bySupplier(doc)) {
    pages.push(await supplierPage(doc, supplierId, part));
  }
  if (!pages.length) {
    pages.push(el("section", "supplier", el("h1", "", "Billing statement"), meta(doc),
      el("p", "", "No plays in this period."), el("p", "note", doc.rounding)));
  }
  $("pages").replaceChildren(...pages);
  document.title = `statement ${doc.from} to ${doc.to} · ${doc.status}`;
  done("");
}

function done(message) {
  $("message").hidden = !message;
  $("message").textContent = message;
  document.body.dataset.ready = message ? "error" : "true";
}

$("controls").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem("playproof-token", token);
  const params = new URLSearchParams();
  for (const k of KEYS) if ($(k).value.trim()) params.set(k, $(k).value.trim());
  location.search = params.toString();
});
$("print").addEventListener("click", () => window.print());

if (!state.token) {
  $("token-field").hidden = false;
  done("Sign in: paste an operator token (the dashboard's sign-in keeps one for this tab).");
} else {
  show().catch((err) => done(`Cannot show the statement: ${err.message}`));
}
