// Shared helpers of the feature browser: DOM building (text only through textContent), the API client,
// links, formatting, and highlighted token rows with a hover/focus tooltip.

export const BASE = document.documentElement.dataset.base || "";
export const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";

export function fmt(x, digits = 4) {
  if (x === null || x === undefined || (typeof x === "number" && !Number.isFinite(x))) return "–";
  return typeof x === "number" ? String(+x.toPrecision(digits)) : String(x);
}

function apply(e, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = String(v);
    else if (k === "style") Object.assign(e.style, v);  // CSSOM: allowed by the page's CSP
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k.startsWith("on")) throw new Error(`inline handler ${k} refused`);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  return e;
}

/** An HTML element; ``text`` sets textContent, ``on`` adds listeners; children are nodes or strings. */
export function el(tag, attrs = {}, ...children) {
  const e = apply(document.createElement(tag), attrs);
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

/** An SVG element, built the same way. */
export function svg(tag, attrs = {}, ...children) {
  const e = apply(document.createElementNS(SVG_NS, tag), attrs);
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

export function href(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) p.set(k, v);
  return "?" + p.toString();
}

export const featureHref = (dictionaryId, hook, index) => href({dictionary: dictionaryId, hook, index});

export function featureLink(dictionaryId, hook, index, text) {
  return el("a", {href: featureHref(dictionaryId, hook, index), text: text || `${hook} #${index}`});
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

/** JSON from ``BASE + path``; an ApiError naming the status and the server's detail otherwise. */
export async function api(path, options = {}) {
  const r = await fetch(BASE + path, options);
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) {
    const d = body.detail;
    const text = typeof d === "string" ? d : Array.isArray(d) ? d.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ") : JSON.stringify(d);
    throw new ApiError(r.status, text);
  }
  return body;
}

export const enc = encodeURIComponent;
export const featurePath = (d, hook, index) => `/api/dictionaries/${enc(d)}/features/${enc(hook)}/${enc(index)}`;

export function postJson(path, body, token) {
  const headers = {"content-type": "application/json"};
  if (token) headers.authorization = `Bearer ${token}`;
  return api(path, {method: "POST", headers, body: JSON.stringify(body)});
}

export function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

export function errorBox(err) {
  return el("p", {class: "error", role: "alert", text: String(err.message || err)});
}

export function section(title, id, ...children) {
  const headingId = `${id}-heading`;
  return el("section", {id, "aria-labelledby": headingId}, el("h2", {id: headingId, text: title}), ...children);
}

/** Rows of [label, value] as a two-column table. */
export function table(rows, attrs = {}) {
  return el("table", {class: "kv", ...attrs},
    el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", {scope: "row", text: k}),
      el("td", {}, v instanceof Node ? v : fmt(v))))));
}

/** A table with a header row; cells are nodes or values. */
export function grid(headers, rows, attrs = {}) {
  return el("table", {class: "grid", ...attrs},
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {scope: "col", text: h})))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c instanceof Node ? c : fmt(c)))))));
}

/** A token as shown: newlines and tabs made visible, the text itself untouched otherwise. */
export const showToken = (t) => String(t).replace(/\n/g, "↵").replace(/\t/g, "⇥");

/** One text window, each token shaded by ``activations[i] / scale``, its strongest token outlined;
 * hovering a token shows its value in the tooltip (and the span's title holds it too). */
export function tokenRow(tokens, activations, scale, attrs = {}) {
  const div = el("div", {class: "example", ...attrs});
  const acts = activations || [];
  let best = -1;
  acts.forEach((a, i) => { if (a > 0 && (best < 0 || a > acts[best])) best = i; });
  (tokens || []).forEach((t, i) => {
    const a = acts[i] || 0;
    const alpha = scale > 0 ? Math.max(0, Math.min(1, a / scale)) : 0;
    const span = el("span", {class: i === best ? "tok max" : "tok", title: `activation ${fmt(a)}`,
      "data-activation": String(a), text: showToken(t)});
    if (alpha > 0) span.style.backgroundColor = `rgba(255, 140, 0, ${alpha.toFixed(3)})`;
    div.append(span);
  });
  return div;
}

// One tooltip for the page: the activation (or any data-tip) of the token under the pointer.
function showTip(target, x, y) {
  const tip = $("tooltip");
  const text = target.dataset.tip || (target.dataset.activation !== undefined ? `activation ${fmt(+target.dataset.activation)}` : null);
  if (!text) { tip.hidden = true; return; }
  tip.textContent = text;
  tip.hidden = false;
  tip.style.left = `${x + 12}px`;
  tip.style.top = `${y + 14}px`;
}
document.addEventListener("mouseover", (ev) => {
  const t = ev.target.closest ? ev.target.closest("[data-activation], [data-tip]") : null;
  if (t) showTip(t, ev.pageX, ev.pageY); else $("tooltip").hidden = true;
});
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("tooltip").hidden = true; });

/** The dictionary's stored hook values (what feature documents are keyed by). */
export const hooksOf = (d) => d.hooks || d.hooks_in || [];

/** The model layer a block hook name sits in (``blocks.N.…``), or null. */
export function layerOf(hook) {
  const m = /^blocks\.(\d+)\./.exec(hook);
  return m ? +m[1] : null;
}
