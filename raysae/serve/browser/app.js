// The feature browser's entry: the sidebar (dictionaries, searches), and the view the query string names.
import {$, api, el, enc, errorBox, featureLink, grid, hooksOf, href, section, setStatus, showToken, table} from "./core.js";
import {showFeature} from "./feature.js";
import {graphList, showGraph} from "./graph.js";
import {textTester} from "./lab.js";

const params = new URLSearchParams(location.search);

async function loadDictionaries() {
  const list = [];  // every record, page by page at the server's own page size
  for (let skip = 0; list.length < 2000;) {
    const page = await api(`/api/dictionaries?skip=${skip}`);
    list.push(...page.items);
    if (page.items.length < page.limit) break;
    skip += page.limit;
  }
  const ul = $("dictionaries");
  for (const d of list) {
    ul.append(el("li", {}, el("a", {href: href({dictionary: d.dictionary_id}), text: d.dictionary_id}),
      el("span", {class: "muted", text: ` ${d.architecture || ""}${d.d_sae ? ` · ${d.d_sae} latents` : ""}`})));
  }
  if (!list.length) ul.append(el("li", {class: "muted", text: "none stored yet"}));
  const select = $("jump-dictionary"), hookSelect = $("jump-hook");
  for (const d of list) select.append(el("option", {value: d.dictionary_id, text: d.dictionary_id}));
  const fillHooks = () => {
    const d = list.find((x) => x.dictionary_id === select.value);
    hookSelect.textContent = "";
    for (const h of d ? hooksOf(d) : []) hookSelect.append(el("option", {value: h, text: h}));
  };
  select.addEventListener("change", fillHooks);
  if (params.get("dictionary")) select.value = params.get("dictionary");
  fillHooks();
  if (params.get("hook")) hookSelect.value = params.get("hook");
  if (params.get("index")) $("jump-index").value = params.get("index");
  if (params.has("q")) $("search-q").value = params.get("q");
  if (params.has("token")) $("search-token").value = params.get("token");
  return list;
}

function dictionaryRows(list) {
  return list.map((d) => [el("a", {href: href({dictionary: d.dictionary_id}), text: d.dictionary_id}),
    d.architecture, d.model, d.d_sae, d.n_features, el("span", {class: "tok", text: hooksOf(d).join(", ")})]);
}

async function home(view, list) {
  view.append(el("h1", {text: "Sparse dictionaries"}),
    el("p", {class: "muted", text: "Dictionaries analysed into this store. Open one to page through its features, "
      + "search explanations or promoted tokens on the left, or open an attribution graph."}),
    section("Dictionaries", "dictionary-list", grid(["dictionary", "architecture", "model", "d_sae", "features", "hooks"],
      dictionaryRows(list), {id: "dictionary-table"})));
  const graphs = section("Attribution graphs", "graphs");
  view.append(graphs);
  await graphList(graphs, null);
}

async function showDictionary(view, id) {
  const d = await api(`/api/dictionaries/${enc(id)}`);
  document.title = `${id} · raysae`;
  view.append(el("h1", {id: "dictionary-title", text: `Dictionary ${d.dictionary_id}`}),
    table([["architecture", d.architecture], ["model", d.model], ["hooks", hooksOf(d).join(", ")],
      ["d_model", d.d_model], ["d_sae", d.d_sae], ["features", d.n_features], ["stored features", d.stored_features]]));
  const sortBy = params.get("sort_by") || "frequency", skip = +(params.get("skip") || 0);
  const hook = params.get("hook_filter") || undefined;
  const order = sortBy === "index" ? "asc" : "desc";
  const q = new URLSearchParams({sort_by: sortBy, order, skip: String(skip)});
  if (hook) q.set("hook", hook);
  const page = await api(`/api/dictionaries/${enc(id)}/features?${q}`);
  const sorter = el("p", {class: "row"}, "Sort by: ", ...["frequency", "max_activation", "index"].map((s) =>
    el("a", {href: href({dictionary: id, sort_by: s, hook_filter: hook}), "aria-current": s === sortBy ? "true" : null, text: s})));
  const pager = el("nav", {class: "row", "aria-label": "Feature pages"},
    el("span", {class: "muted", text: `features ${page.items.length ? skip + 1 : 0}–${skip + page.items.length} of ${page.total}`}));
  if (skip > 0) pager.append(el("a", {href: href({dictionary: id, sort_by: sortBy, hook_filter: hook, skip: Math.max(0, skip - page.limit)}), text: "« previous"}));
  if (page.next_skip !== null) pager.append(el("a", {href: href({dictionary: id, sort_by: sortBy, hook_filter: hook, skip: page.next_skip}), text: "next »"}));
  const rows = page.items.map((f) => [featureLink(id, f.hook, f.index), f.frequency, f.max_activation,
    el("span", {class: "tok", text: (f.dla_positive_tokens || []).slice(0, 6).map(showToken).join(" | ")})]);
  view.append(section("Features", "features", sorter, pager,
    grid(["feature", "frequency", "max activation", "top promoted tokens"], rows, {id: "feature-table"})));
  const lab = section("Test a text", "text-test");
  view.append(lab);
  textTester(lab, id, null);
  const graphs = section("Attribution graphs", "graphs");
  view.append(graphs);
  await graphList(graphs, id);
}

async function explanationResults(view, q) {
  const r = await api(`/api/search/explanations?${new URLSearchParams({q})}`);
  view.append(el("h1", {text: `Explanations containing “${q}”`}),
    grid(["feature", "dictionary", "explainer", "explanation"],
      r.items.map((x) => [featureLink(x.dictionary_id, x.hook, x.index), x.dictionary_id, x.explainer,
        el("span", {class: "explanation", text: x.explanation})]), {id: "search-results"}));
  if (!r.items.length) view.append(el("p", {class: "muted", text: "No explanation matches."}));
}

async function tokenResults(view, token) {
  const r = await api(`/api/search/tokens?${new URLSearchParams({token})}`);
  view.append(el("h1", {text: `Features promoting “${showToken(token)}”`}),
    el("p", {class: "muted", text: "Exact match on each feature's top promoted (positive logit) tokens, strongest first."}),
    grid(["feature", "dictionary", "max activation", "promoted tokens"],
      r.items.map((f) => [featureLink(f.dictionary_id, f.hook, f.index), f.dictionary_id, f.max_activation,
        el("span", {class: "tok", text: (f.dla_positive_tokens || []).map(showToken).join(" | ")})]), {id: "search-results"}));
  if (!r.items.length) view.append(el("p", {class: "muted", text: "No feature promotes this token."}));
}

async function main() {
  const view = $("view");
  try {
    const list = await loadDictionaries();
    const id = params.get("dictionary"), index = params.get("index");
    let hook = params.get("hook");
    if (id && index !== null && !hook) {
      const d = list.find((x) => x.dictionary_id === id);
      hook = d && hooksOf(d).length ? hooksOf(d)[0] : hook;
    }
    if (params.get("graph")) await showGraph(view, params.get("graph"));
    else if (params.has("q")) await explanationResults(view, params.get("q"));
    else if (params.has("token")) await tokenResults(view, params.get("token"));
    else if (id && hook && index !== null) await showFeature(view, id, hook, index);
    else if (id) await showDictionary(view, id);
    else if (params.get("view") === "graphs") {
      const graphs = section("Attribution graphs", "graphs");
      view.append(el("h1", {text: "Attribution graphs"}), graphs);
      await graphList(graphs, null);
    } else await home(view, list);
    setStatus("ready");
  } catch (e) {
    view.append(errorBox(e));
    setStatus(`error: ${e.message}`, true);
  }
}

main();
