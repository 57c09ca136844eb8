// The attribution-graph viewer: the pruned graph of a stored graph document drawn as SVG (columns are
// prompt positions, rows are embeddings, model layers and logits), edges by weight, a node's details on
// click (with a link to its feature), and pinned nodes drawn again as a subgraph (pins are in the URL).
import {api, el, enc, errorBox, featureHref, fmt, grid, hooksOf, href, layerOf, section, showToken, svg, table} from "./core.js";

const params = new URLSearchParams(location.search);

/** Stored graphs (of one dictionary when given) as a table of links into the viewer. */
export async function graphList(container, dictionaryId) {
  try {
    const q = new URLSearchParams();
    if (dictionaryId) q.set("dictionary_id", dictionaryId);
    const r = await api(`/api/graphs?${q}`);
    const rows = r.items.map((g) => [el("a", {href: href({graph: g.graph_id}), text: g.prompt || g.graph_id}), g.dictionary_id,
      (g.counts || {}).pruned_nodes, fmt((g.scores || {}).replacement_score, 3), fmt((g.scores || {}).completeness_score, 3)]);
    container.append(rows.length ? grid(["prompt", "dictionary", "nodes", "replacement", "completeness"], rows, {id: "graph-table"})
      : el("p", {class: "muted", text: "No graph stored yet (POST /api/graphs computes one)."}));
  } catch (e) {
    container.append(errorBox(e));
  }
}

/** layer → {dictionary_id, hook} of the transcoder features there: a CLT, or transcoders joined by '+'. */
async function featureTargets(dictionaryId) {
  const ids = dictionaryId.split("+");
  const records = [];
  try { records.push(await api(`/api/dictionaries/${enc(dictionaryId)}`)); } catch (e) {
    for (const id of ids) records.push(await api(`/api/dictionaries/${enc(id)}`));
  }
  const targets = new Map();
  for (const d of records) for (const h of hooksOf(d)) {
    const layer = layerOf(h);
    if (layer !== null && !targets.has(layer)) targets.set(layer, {dictionary_id: d.dictionary_id, hook: h});
  }
  return targets;
}

function nodeLabel(n) {
  if (n.kind === "feature") return `L${n.layer} #${n.index} @${n.position}`;
  if (n.kind === "error") return `error L${n.layer} @${n.position}`;
  if (n.kind === "token") return `token “${showToken(n.token)}” @${n.position}`;
  return `logit “${showToken(n.token)}” @${n.position} p=${fmt(n.probability, 3)}`;
}

function layout(g, kept) {
  const layers = [...new Set(kept.map((i) => g.nodes[i]).filter((n) => n.kind === "feature" || n.kind === "error").map((n) => n.layer))].sort((a, b) => a - b);
  const rows = ["E", ...layers, "logit"];
  const rowOf = (n) => n.kind === "token" ? 0 : n.kind === "logit" ? rows.length - 1 : rows.indexOf(n.layer);
  const cells = new Map();
  for (const i of kept) {
    const n = g.nodes[i], key = `${rowOf(n)}:${n.position}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(i);
  }
  const nPos = g.prompt_tokens.length, widest = Math.max(1, ...[...cells.values()].map((c) => c.length));
  const col = Math.max(96, Math.min(260, widest * 16 + 24)), rowH = 36, left = 64, top = 70;
  const pos = new Map();
  for (const [key, list] of cells) {
    const [r, p] = key.split(":").map(Number);
    list.forEach((i, k) => pos.set(i, {x: left + p * col + col / 2 + (k - (list.length - 1) / 2) * Math.min(16, (col - 16) / list.length),
      y: top + (rows.length - 1 - r) * rowH + rowH / 2}));
  }
  return {rows, pos, width: left + nPos * col + 12, height: top + rows.length * rowH + 40, col, left, top, rowH};
}

function shape(n, p) {
  if (n.kind === "feature") return svg("circle", {cx: p.x, cy: p.y, r: 6});
  if (n.kind === "error") return svg("rect", {x: p.x - 5, y: p.y - 5, width: 10, height: 10});
  return svg("rect", {x: p.x - 7, y: p.y - 7, width: 14, height: 14, rx: 3});
}

function draw(g, kept, edges, geo, opts) {
  const {rows, pos, width, height, col, left, top, rowH} = geo;
  const maxW = Math.max(1e-12, ...edges.map((e) => Math.abs(e.weight)));
  const root = svg("svg", {id: opts.id, class: "graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "group",
    "aria-label": opts.label});
  rows.forEach((r, k) => {
    const y = top + (rows.length - 1 - k) * rowH + rowH / 2;
    root.append(svg("line", {x1: left, x2: width - 8, y1: y, y2: y, class: "row-line"}),
      svg("text", {x: 6, y: y + 4, class: "axis", text: r === "E" ? "embed" : r === "logit" ? "logits" : `L${r}`}));
  });
  g.prompt_tokens.forEach((t, p) => root.append(svg("text", {x: left + p * col + col / 2, y: height - 12, "text-anchor": "middle",
    class: "axis token-label", text: showToken(t)})));
  const edgeLayer = svg("g", {class: "edges"});
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    if (!a || !b) continue;
    const line = svg("line", {x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: e.weight >= 0 ? "edge pos" : "edge neg",
      "stroke-width": (0.6 + 3.4 * Math.abs(e.weight) / maxW).toFixed(2), "data-source": e.source, "data-target": e.target,
      "data-weight": e.weight, "data-tip": `${nodeLabel(g.nodes[e.source])} → ${nodeLabel(g.nodes[e.target])}: ${fmt(e.weight, 3)}`});
    line.style.opacity = (0.2 + 0.8 * Math.abs(e.weight) / maxW).toFixed(3);
    edgeLayer.append(line);
  }
  root.append(edgeLayer);
  for (const i of kept) {
    const n = g.nodes[i];
    const node = svg("g", {class: `node ${n.kind}${opts.pinned.has(i) ? " pinned" : ""}`, tabindex: "0", role: "button",
      "data-node": i, "aria-label": nodeLabel(n), "data-tip": `${nodeLabel(n)}${n.activation !== undefined ? ` · activation ${fmt(n.activation, 3)}` : ""}`},
    shape(n, pos.get(i)));
    if (n.kind === "logit") {  // slanted, so that neighbouring logits' tokens do not overlap
      const {x, y} = pos.get(i);
      node.append(svg("text", {x: x + 2, y: y - 10, transform: `rotate(-40 ${x + 2} ${y - 10})`, class: "axis", text: showToken(n.token)}));
    }
    node.addEventListener("click", () => opts.select(i));
    node.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); opts.select(i); } });
    root.append(node);
  }
  return root;
}

export async function showGraph(view, graphId) {
  const state = await api(`/api/graphs/${enc(graphId)}`);
  view.append(el("h1", {id: "graph-title", text: "Attribution graph"}));
  if (state.status !== "done") {
    view.append(el("p", {id: "graph-state", text: `This graph is ${state.status}.${state.error ? ` ${state.error}` : ""}`}),
      el("a", {href: href({graph: graphId}), text: "reload"}));
    return;
  }
  const g = state.graph;
  document.title = `graph: ${g.prompt} · raysae`;
  const kept = g.pruned_nodes;
  const edges = g.pruned_edges.source.map((s, k) => ({source: s, target: g.pruned_edges.target[k], weight: g.pruned_edges.weight[k]}));
  const targets = await featureTargets(g.dictionary_id);
  const sc = g.scores || {}, counts = g.counts || {};
  view.append(el("p", {id: "graph-prompt", class: "lead", text: g.prompt}),
    el("div", {class: "columns"},
      table([["replacement score", sc.replacement_score], ["completeness score", sc.completeness_score],
        ["pruned replacement score", sc.pruned_replacement_score], ["pruned completeness score", sc.pruned_completeness_score]], {id: "graph-scores"}),
      table([["dictionary", g.dictionary_id], ["model", g.model], ["nodes shown", kept.length], ["edges shown", edges.length],
        ["active features", counts.active_features], ["feature nodes", counts.features]], {id: "graph-counts"})),
    el("p", {}, el("a", {href: `${document.documentElement.dataset.base || ""}/api/graphs/${enc(graphId)}/export`, text: "viewer JSON (circuit-tracer / Neuronpedia schema)"})));
  const pinned = new Set((params.get("pinned") || "").split(",").filter((x) => x !== "" && kept.includes(+x)).map(Number));
  const threshold = el("input", {id: "edge-threshold", type: "range", min: "0", max: "100", step: "1", value: "0"});
  const thresholdOut = el("output", {for: "edge-threshold", text: "0%"});
  const controls = el("div", {class: "row"}, el("label", {for: "edge-threshold", text: "Hide edges weaker than (% of strongest)"}), threshold, thresholdOut);
  const details = el("div", {id: "node-details", "aria-live": "polite"}, el("p", {class: "muted", text: "Click a node (or focus it and press Enter) to see it here."}));
  const sub = el("div", {id: "subgraph"});
  const holder = el("div", {class: "graph-scroll"});
  const geo = layout(g, kept);
  let selected = null;
  const maxW = Math.max(1e-12, ...edges.map((e) => Math.abs(e.weight)));

  const applyThreshold = () => {
    const t = (+threshold.value / 100) * maxW;
    thresholdOut.textContent = `${threshold.value}%`;
    for (const line of holder.querySelectorAll("line.edge")) line.classList.toggle("hidden", Math.abs(+line.dataset.weight) < t);
  };
  const savePins = () => {
    const p = new URLSearchParams(location.search);
    if (pinned.size) p.set("pinned", [...pinned].join(",")); else p.delete("pinned");
    history.replaceState(null, "", "?" + p.toString());
  };
  const redraw = () => {
    holder.textContent = "";
    holder.append(draw(g, kept, edges, geo, {id: "graph-svg", label: `Pruned attribution graph: ${kept.length} nodes, ${edges.length} edges`, pinned, select}));
    applyThreshold();
    if (selected !== null) highlight(selected);
    drawSubgraph();
  };
  const highlight = (i) => {
    for (const n of holder.querySelectorAll("g.node")) n.classList.toggle("selected", +n.dataset.node === i);
    for (const line of holder.querySelectorAll("line.edge")) {
      const on = +line.dataset.source === i || +line.dataset.target === i;
      line.classList.toggle("active", on);
      line.classList.toggle("dim", !on);
    }
  };
  const nodeButton = (i) => el("button", {type: "button", class: "link", text: nodeLabel(g.nodes[i]), on: {click: () => select(i)}});
  function select(i) {
    selected = i;
    highlight(i);
    const n = g.nodes[i];
    const incoming = edges.filter((e) => e.target === i).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
    const outgoing = edges.filter((e) => e.source === i).sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
    details.textContent = "";
    details.append(el("h3", {id: "node-title", text: nodeLabel(n)}),
      table([["kind", n.kind], ["layer", n.layer], ["position", n.position], ["token", n.token !== undefined ? showToken(n.token) : g.prompt_tokens[n.position]],
        ["feature index", n.index], ["activation", n.activation], ["influence", n.influence], ["probability", n.probability]]));
    const actions = el("div", {class: "row"});
    const target = n.kind === "feature" ? targets.get(n.layer) : null;
    if (target) actions.append(el("a", {id: "open-feature", href: featureHref(target.dictionary_id, target.hook, n.index), text: `Open feature ${n.index} of ${target.hook}`}));
    actions.append(el("button", {type: "button", id: "pin-node", text: pinned.has(i) ? "Unpin from subgraph" : "Pin to subgraph",
      on: {click: () => { if (pinned.has(i)) pinned.delete(i); else pinned.add(i); savePins(); redraw(); select(i); }}}));
    details.append(actions,
      el("h4", {text: "Strongest inputs"}), grid(["from", "weight"], incoming.map((e) => [nodeButton(e.source), fmt(e.weight, 3)])),
      el("h4", {text: "Strongest outputs"}), grid(["to", "weight"], outgoing.map((e) => [nodeButton(e.target), fmt(e.weight, 3)])));
  }
  function drawSubgraph() {
    sub.textContent = "";
    if (!pinned.size) { sub.append(el("p", {class: "muted", text: "No pinned node: select nodes and pin them to build a subgraph."})); return; }
    const nodes = kept.filter((i) => pinned.has(i));
    const inner = edges.filter((e) => pinned.has(e.source) && pinned.has(e.target));
    sub.append(el("ul", {id: "pinned-list", class: "plain"}, ...nodes.map((i) => el("li", {}, nodeButton(i), " ",
      el("button", {type: "button", text: "Unpin", "aria-label": `Unpin ${nodeLabel(g.nodes[i])}`,
        on: {click: () => { pinned.delete(i); savePins(); redraw(); }}})))),
    el("button", {type: "button", id: "clear-pins", text: "Clear pins", on: {click: () => { pinned.clear(); savePins(); redraw(); }}}),
    el("div", {class: "graph-scroll"}, draw(g, nodes, inner, layout(g, nodes), {id: "subgraph-svg", label: `Pinned subgraph: ${nodes.length} nodes, ${inner.length} edges`, pinned, select})),
    grid(["from", "to", "weight"], inner.map((e) => [nodeLabel(g.nodes[e.source]), nodeLabel(g.nodes[e.target]), fmt(e.weight, 3)]), {id: "subgraph-edges"}));
  }
  threshold.addEventListener("input", applyThreshold);
  view.append(section("Graph", "graph-view", controls, el("p", {class: "muted legend", text: "Columns: prompt positions; rows: embeddings, "
    + "layers, logits. ● feature ■ error ▢ token/logit; blue edges excite, red inhibit; width and opacity follow |weight|."}), holder),
  el("div", {class: "columns"}, el("div", {class: "column"}, section("Selected node", "node-panel", details)),
    el("div", {class: "column"}, section("Pinned subgraph", "pinned", sub))));
  redraw();
}
