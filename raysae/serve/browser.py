"""The feature browser: one HTML page with a little JavaScript that calls the JSON endpoints (no build step).

State lives in the query string (``?dictionary=ID&hook=H&index=I&sort_by=...&skip=N``), so every view has
a link. Stored text (tokens, explanations) only ever reaches the page through ``textContent``.
"""

from __future__ import annotations

import json

_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>raysae feature browser</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 0; display: flex; min-height: 100vh; color: #222; }
 nav { width: 260px; padding: 12px; background: #f4f4f6; border-right: 1px solid #ddd; }
 main { flex: 1; padding: 12px 20px; max-width: 1100px; }
 h1 { font-size: 18px; margin: 0 0 8px; } h2 { font-size: 16px; margin: 18px 0 6px; }
 a { color: #0645ad; text-decoration: none; } a:hover { text-decoration: underline; }
 table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
 .tok { white-space: pre; border-radius: 2px; padding: 0 1px; font-family: ui-monospace, monospace; }
 .example { margin: 4px 0; padding: 4px; border: 1px solid #eee; line-height: 1.8; }
 .bar { background: #6a8fd8; height: 10px; display: inline-block; }
 .error { color: #b00020; } .muted { color: #777; }
 input, select, textarea, button { font: inherit; }
 textarea { width: 100%; }
</style>
</head>
<body>
<nav>
 <h1><a href="?">raysae</a></h1>
 <div class="muted">dictionaries</div>
 <ul id="dictionaries"></ul>
 <h2>search</h2>
 <form id="token-search"><input name="token" placeholder="DLA token, e.g. ' the'" required>
  <button>find</button></form>
 <form id="explanation-search"><input name="q" placeholder="text in explanations" required>
  <button>find</button></form>
</nav>
<main>
 <div id="status" class="muted">loading…</div>
 <section id="search-results"></section>
 <section id="feature"></section>
 <section id="dictionary"></section>
</main>
<script>
const BASE = __BASE__;
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const fmt = (x) => (x === null || x === undefined) ? "–" : (typeof x === "number" ? +x.toPrecision(4) : String(x));

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v; else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}
function href(p) { return "?" + new URLSearchParams(p).toString(); }
function featureLink(f) {
  return el("a", {href: href({dictionary: f.dictionary_id, hook: f.hook, index: f.index}),
                  text: `${f.hook} #${f.index}`});
}
async function api(path, options) {
  const r = await fetch(BASE + path, options);
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (!r.ok) throw new Error(`${r.status}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`);
  return body;
}
function table(rows) {
  return el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", {text: k}), el("td", {text: fmt(v)}))));
}
function tokens(example, scale) {
  const div = el("div", {class: "example"});
  const acts = example.activations || [];
  (example.tokens || []).forEach((t, i) => {
    const a = acts[i] || 0, alpha = scale > 0 ? Math.max(0, Math.min(1, a / scale)) : 0;
    div.append(el("span", {class: "tok", title: `activation ${fmt(a)}`, "data-activation": String(a),
                           style: `background: rgba(255, 140, 0, ${alpha.toFixed(3)})`, text: t}));
  });
  return div;
}

async function loadDictionaries() {
  const list = await api("/api/dictionaries");
  const ul = $("dictionaries");
  for (const d of list.items) {
    ul.append(el("li", {}, el("a", {href: href({dictionary: d.dictionary_id}), text: d.dictionary_id}),
                 el("span", {class: "muted", text: ` ${d.architecture || ""} ${d.d_sae ? d.d_sae + " latents" : ""}`})));
  }
  if (!list.items.length) ul.append(el("li", {class: "muted", text: "none stored yet"}));
}

async function showDictionary(id) {
  const sec = $("dictionary");
  const d = await api(`/api/dictionaries/${encodeURIComponent(id)}`);
  sec.append(el("h2", {text: `dictionary ${d.dictionary_id}`}),
    table([["architecture", d.architecture], ["model", d.model], ["hooks", (d.hooks_in || []).join(", ")],
           ["d_model", d.d_model], ["d_sae", d.d_sae], ["features", d.n_features], ["stored features", d.stored_features]]));
  const sortBy = params.get("sort_by") || "frequency", skip = +(params.get("skip") || 0);
  const order = sortBy === "index" ? "asc" : "desc";
  const page = await api(`/api/dictionaries/${encodeURIComponent(id)}/features?sort_by=${sortBy}&order=${order}&skip=${skip}`);
  const sorter = el("div", {}, "sort by ",
    ...["frequency", "max_activation", "index"].map((s) => el("a", {href: href({dictionary: id, sort_by: s}), text: s + " "})));
  const rows = page.items.map((f) => el("tr", {}, el("td", {}, featureLink(f)), el("td", {text: fmt(f.frequency)}),
    el("td", {text: fmt(f.max_activation)}), el("td", {class: "tok", text: (f.dla_positive_tokens || []).slice(0, 5).join(" | ")})));
  const nav = el("div", {class: "muted", text: `features ${skip + 1}–${skip + page.items.length} of ${page.total} `});
  if (skip > 0) nav.append(el("a", {href: href({dictionary: id, sort_by: sortBy, skip: Math.max(0, skip - page.limit)}), text: "« prev "}));
  if (page.next_skip !== null) nav.append(el("a", {href: href({dictionary: id, sort_by: sortBy, skip: page.next_skip}), text: "next »"}));
  sec.append(el("h2", {text: "features"}), sorter, nav,
    el("table", {id: "feature-table"}, el("tr", {}, ...["feature", "frequency", "max act", "top DLA tokens"].map((h) => el("th", {text: h}))), ...rows));
  textForm(id, sec);
}

function textForm(id, sec) {
  const area = el("textarea", {rows: "3", placeholder: "type a text to see its most active features"});
  const out = el("div", {id: "text-features"});
  const form = el("form", {}, area, el("button", {text: "run the model"}));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault(); out.textContent = "running…";
    try {
      const r = await api(`/api/dictionaries/${encodeURIComponent(id)}/activations`, {method: "POST",
        headers: {"content-type": "application/json"}, body: JSON.stringify({text: area.value, top_n: 5})});
      out.textContent = "";
      for (const t of r.tokens) {
        out.append(el("div", {}, el("span", {class: "tok", text: JSON.stringify(t.token)}), " → ",
          ...t.features.flatMap((f) => [featureLink({...f, dictionary_id: id}), ` (${fmt(f.activation)})  `])));
      }
    } catch (e) { out.textContent = String(e); out.className = "error"; }
  });
  sec.append(el("h2", {text: "text → active features"}), form, out);
}

async function showFeature(id, hook, index) {
  const f = await api(`/api/dictionaries/${encodeURIComponent(id)}/features/${encodeURIComponent(hook)}/${encodeURIComponent(index)}`);
  const sec = $("feature");
  sec.append(el("h1", {id: "feature-title", text: `${f.dictionary_id} · ${f.hook} · feature ${f.index}`}),
    table([["layer", f.layer], ["frequency", f.frequency], ["fired on", f.n_fired], ["of tokens", f.n_tokens],
           ["mean activation", f.mean_activation], ["max activation", f.max_activation]]));
  sec.append(el("h2", {text: "explanations"}));
  const ex = el("ul", {id: "explanations"});
  for (const e of f.explanations) {
    const scores = f.scores.filter((s) => s.explainer === e.explainer).map((s) => `${s.scorer}: ${fmt(s.score)}`);
    ex.append(el("li", {}, el("b", {text: e.explainer + ": "}), el("span", {class: "explanation", text: e.explanation}),
                 el("span", {class: "muted", text: scores.length ? `  [${scores.join(", ")}]` : ""})));
  }
  if (!f.explanations.length) ex.append(el("li", {class: "muted", text: "none yet"}));
  sec.append(ex);
  for (const [name, list] of [["positive logits", f.dla_positive], ["negative logits", f.dla_negative]]) {
    if (!list || !list.length) continue;
    sec.append(el("h2", {text: name}), el("div", {class: name.split(" ")[0] + "-logits"},
      ...list.map((t) => el("span", {class: "tok", title: fmt(t.value), text: t.token + "  "}))));
  }
  if (f.histogram && f.histogram.counts) {
    const top = Math.max(1, ...f.histogram.counts);
    sec.append(el("h2", {text: "activation histogram"}), el("div", {id: "histogram"},
      ...f.histogram.counts.map((c, i) => el("div", {}, el("span", {class: "muted tok", text: fmt(f.histogram.edges[i]).toString().padStart(8) + " "}),
        el("span", {class: "bar", style: `width: ${(300 * c / top).toFixed(1)}px`}), el("span", {class: "muted", text: " " + c})))));
  }
  const scale = f.max_activation || 1;
  sec.append(el("h2", {text: "top examples"}), el("div", {id: "top-examples"}, ...(f.top_examples || []).map((e) => tokens(e, scale))));
  for (const q of f.quantile_examples || []) {
    sec.append(el("details", {}, el("summary", {text: `activations ${fmt(q.quantile_low)}–${fmt(q.quantile_high)}`}),
      ...(q.examples || []).map((e) => tokens(e, scale))));
  }
}

function resultsList(title, items, describe) {
  const sec = $("search-results");
  sec.textContent = "";
  sec.append(el("h2", {text: title}), el("ul", {}, ...items.map((x) => el("li", {}, featureLink(x), " ", describe(x)))));
  if (!items.length) sec.append(el("div", {class: "muted", text: "no match"}));
}
$("token-search").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = new FormData(ev.target).get("token");
  try {
    const r = await api(`/api/search/tokens?token=${encodeURIComponent(token)}`);
    resultsList(`features promoting ${JSON.stringify(token)}`, r.items, (f) => `${f.dictionary_id}, max ${fmt(f.max_activation)}`);
  } catch (e) { $("status").textContent = String(e); $("status").className = "error"; }
});
$("explanation-search").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = new FormData(ev.target).get("q");
  try {
    const r = await api(`/api/search/explanations?q=${encodeURIComponent(q)}`);
    resultsList(`explanations with ${JSON.stringify(q)}`, r.items, (x) => `${x.dictionary_id}: ${x.explanation}`);
  } catch (e) { $("status").textContent = String(e); $("status").className = "error"; }
});

(async () => {
  try {
    await loadDictionaries();
    const id = params.get("dictionary"), hook = params.get("hook"), index = params.get("index");
    if (id && hook !== null && index !== null) await showFeature(id, hook, index);
    else if (id) await showDictionary(id);
    $("status").textContent = "ready";
  } catch (e) { $("status").textContent = String(e); $("status").className = "error"; }
})();
</script>
</body>
</html>
"""


def render_browser(base: str = "") -> str:
    """The browser page, calling the API under ``base`` (the application's route prefix, "" at /)."""
    literal = json.dumps(base.rstrip("/")).replace("<", "\\u003c")
    return _PAGE.replace("__BASE__", literal)
