// The feature page: statistics, explanations and scores, the activation histogram, direct logit
// attribution, top and quantile examples, nearest features by decoder cosine, test text and steering.
import {api, el, enc, errorBox, featureLink, featurePath, fmt, grid, href, section, showToken, svg, table, tokenRow} from "./core.js";
import {steeringPanel, textTester} from "./lab.js";

function explanations(f) {
  const list = el("ul", {id: "explanations", class: "plain"});
  for (const e of f.explanations) {
    const scores = f.scores.filter((s) => s.explainer === e.explainer);
    const chips = scores.map((s) => el("span", {class: s.baseline ? "chip baseline" : "chip",
      title: s.baseline ? "score of a random (baseline) explanation" : "score of this explanation",
      text: `${s.scorer}${s.baseline ? " (baseline)" : ""}: ${fmt(s.score, 3)}`}));
    const failed = e.status === "failed";
    list.append(el("li", {class: "explanation-item"},
      el("div", {}, el("span", {class: failed ? "explanation error" : "explanation",
        text: failed ? `explainer failed: ${e.error || "no reason given"}` : e.explanation})),
      el("div", {class: "muted"}, el("span", {text: e.explainer}), " ", ...chips)));
  }
  if (!f.explanations.length) list.append(el("li", {class: "muted", text: "No explanation stored yet."}));
  return list;
}

/** The stored activation histogram as SVG bars; each bar's title gives its range and count. */
function histogram(h, frequency) {
  const counts = h.counts || [], edges = h.edges || [];
  const w = 520, ht = 150, pad = 34, bw = (w - pad - 8) / Math.max(1, counts.length);
  const top = Math.max(1, ...counts);
  const bars = counts.map((c, i) => {
    const hgt = (ht - 30) * c / top;
    return svg("rect", {x: pad + i * bw + 1, y: ht - 18 - hgt, width: Math.max(1, bw - 2), height: hgt, class: "bar",
      "data-tip": `activation ${fmt(edges[i])} – ${fmt(edges[i + 1])}: ${c} tokens`},
    svg("title", {text: `activation ${fmt(edges[i])} – ${fmt(edges[i + 1])}: ${c} tokens`}));
  });
  const label = (x, y, text, anchor = "middle") => svg("text", {x, y, "text-anchor": anchor, class: "axis", text});
  const total = counts.reduce((a, b) => a + b, 0);
  return el("figure", {},
    svg("svg", {id: "histogram", viewBox: `0 0 ${w} ${ht}`, width: w, height: ht, role: "img",
      "aria-label": `Activation histogram: ${counts.length} bins from ${fmt(edges[0])} to ${fmt(edges[edges.length - 1])}, ${total} tokens`},
    ...bars, svg("line", {x1: pad, y1: ht - 18, x2: w - 8, y2: ht - 18, class: "axis-line"}),
    label(pad, ht - 4, fmt(edges[0])), label(w - 8, ht - 4, fmt(edges[edges.length - 1]), "end"),
    label(pad - 4, 14, String(top), "end"), label(pad - 4, ht - 20, "0", "end")),
    el("figcaption", {class: "muted", text: `Activation values of the ${total} tokens where the feature fired`
      + (frequency !== null && frequency !== undefined ? ` (density ${fmt(100 * frequency, 3)}% of tokens).` : ".")}));
}

/** Promoted and suppressed tokens side by side, each with a bar of its logit effect. */
function logits(f) {
  const column = (title, id, list, cls) => {
    const top = Math.max(1e-9, ...list.map((t) => Math.abs(t.value)));
    return el("div", {class: "column"}, el("h3", {text: title}),
      el("ol", {id, class: "plain logits"}, ...list.map((t) => {
        const bar = el("span", {class: `logit-bar ${cls}`});
        bar.style.width = `${(80 * Math.abs(t.value) / top).toFixed(1)}px`;
        return el("li", {}, el("span", {class: "tok", text: showToken(t.token)}), bar, el("span", {class: "muted", text: fmt(t.value, 3)}));
      })), list.length ? null : el("p", {class: "muted", text: "none stored"}));
  };
  return el("div", {class: "columns"}, column("Promoted tokens", "dla-positive", f.dla_positive || [], "pos"),
    column("Suppressed tokens", "dla-negative", f.dla_negative || [], "neg"));
}

function examples(f) {
  const scale = f.max_activation || 1;
  const out = [el("h3", {text: "Top activations"}),
    el("div", {id: "top-examples"}, ...(f.top_examples || []).map((e) => tokenRow(e.tokens, e.activations, scale,
      {"aria-label": `example with max activation ${fmt(e.max_activation)}`})))];
  if (!(f.top_examples || []).length) out.push(el("p", {class: "muted", text: "No stored example."}));
  const groups = el("div", {id: "quantile-examples"});
  (f.quantile_examples || []).forEach((q, i) => {
    const n = (q.examples || []).length;
    groups.append(el("details", {open: i === 0},
      el("summary", {text: `Activations ${fmt(q.quantile_low)} – ${fmt(q.quantile_high)} (${n} example${n === 1 ? "" : "s"})`}),
      ...(q.examples || []).map((e) => tokenRow(e.tokens, e.activations, scale))));
  });
  if ((f.quantile_examples || []).length) out.push(el("h3", {text: "Quantile groups"}), groups);
  return out;
}

async function nearest(container, id, hook, index) {
  const out = el("div", {id: "nearest-results"}, el("p", {class: "muted", text: "computing decoder cosines…"}));
  container.append(out);
  try {
    const r = await api(`/api/features/${enc(id)}/${enc(hook)}/${enc(index)}/nearest?k=10`);
    out.textContent = "";
    out.append(grid(["feature", "cosine", "explanation"], r.items.map((n) => [featureLink(id, n.hook, n.index), fmt(n.cosine, 3),
      el("span", {class: n.explanation ? "explanation" : "muted", text: n.explanation || "–"})]), {id: "nearest-table"}));
  } catch (e) {
    out.textContent = "";
    out.append(errorBox(e));
  }
}

export async function showFeature(view, id, hook, index) {
  const f = await api(featurePath(id, hook, index));
  document.title = `${id} · ${hook} · ${index} · raysae`;
  const first = f.explanations.find((e) => e.explanation);
  view.append(el("p", {class: "crumbs"}, el("a", {href: href({dictionary: id}), text: id}), " › ", el("span", {text: hook})),
    el("h1", {id: "feature-title", text: `${f.dictionary_id} · ${f.hook} · feature ${f.index}`}),
    el("p", {id: "feature-summary", class: "lead", text: first ? first.explanation : "No explanation yet."}));
  const nav = el("nav", {class: "row", "aria-label": "Neighbouring features"});
  if (f.index > 0) nav.append(el("a", {href: href({dictionary: id, hook, index: f.index - 1}), text: `« feature ${f.index - 1}`}));
  nav.append(el("a", {href: href({dictionary: id, hook, index: f.index + 1}), text: `feature ${f.index + 1} »`}));
  view.append(nav);
  view.append(el("div", {class: "columns"},
    el("div", {class: "column"}, section("Statistics", "stats", table([["layer", f.layer], ["density (frequency)", f.frequency],
      ["fired on", f.n_fired], ["of tokens", f.n_tokens], ["mean activation", f.mean_activation], ["max activation", f.max_activation]])),
    section("Explanations", "explanations-section", explanations(f))),
    el("div", {class: "column"}, section("Activation density", "density",
      f.histogram && (f.histogram.counts || []).length ? histogram(f.histogram, f.frequency) : el("p", {class: "muted", text: "No histogram stored."})))));
  view.append(section("Direct logit attribution", "dla", logits(f)));
  view.append(section("Examples", "examples", ...examples(f)));
  const near = section("Nearest features by decoder cosine", "nearest");
  view.append(near);
  const lab = section("Test a text", "text-test");
  view.append(lab);
  textTester(lab, id, {hook: f.hook, index: f.index, scale: f.max_activation});
  const steer = section("Steering", "steering");
  view.append(steer);
  steeringPanel(steer, id, f);
  await nearest(near, id, hook, index);
}
