// Live model queries: a text's most active features (POST .../activations) and steering with a
// feature's decoder direction (POST /api/features/.../steer, bearer token), unsteered beside steered.
import {el, enc, errorBox, featureLink, fmt, postJson, showToken, tokenRow} from "./core.js";

const TOKEN_KEY = "raysae-api-token";
let counter = 0;

function field(label, control, hint) {
  const id = control.id || `field-${++counter}`;
  control.id = id;
  const parts = [el("label", {for: id, text: label}), control];
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    parts.push(el("small", {id: hintId, class: "muted", text: hint}));
  }
  return el("div", {class: "field"}, ...parts);
}

/** The text box: each token's top features; with ``focus`` ({hook, index, scale}) the tokens are also
 * shaded by that feature's activation where it is among a token's top features. */
export function textTester(container, dictionaryId, focus) {
  const area = el("textarea", {id: "test-text", rows: "3", maxlength: "4000", required: true});
  area.value = "The cat sat on the mat.";
  const topN = el("input", {id: "test-top-n", type: "number", min: "1", max: "32", step: "1", value: "5", required: true});
  const out = el("div", {id: "text-features", "aria-live": "polite"});
  const form = el("form", {id: "text-form", class: "stack"},
    field("Text to run through the model", area),
    el("div", {class: "row"}, field("Features per token", topN), el("button", {type: "submit", text: "Run the model"})));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    out.textContent = "running the model…";
    try {
      const r = await postJson(`/api/dictionaries/${enc(dictionaryId)}/activations`, {text: area.value, top_n: +topN.value});
      out.textContent = "";
      if (focus) {
        const acts = r.tokens.map((t) => {
          const hit = t.features.find((x) => x.hook === focus.hook && x.index === focus.index);
          return hit ? hit.activation : 0;
        });
        out.append(el("p", {class: "muted", text: `This feature on your text (where it is among a token's top ${r.top_n}):`}),
          tokenRow(r.tokens.map((t) => t.token), acts, focus.scale || Math.max(1e-9, ...acts), {id: "focus-activations"}));
      }
      const rows = r.tokens.map((t) => el("tr", {},
        el("td", {}, el("span", {class: "tok", text: showToken(t.token)})),
        el("td", {text: String(t.n_active)}),
        el("td", {}, ...t.features.flatMap((f) => [featureLink(dictionaryId, f.hook, f.index, r.hooks.length === 1 ? `#${f.index}` : null),
          el("span", {class: "muted", text: ` ${fmt(f.activation, 3)}  `})]))));
      out.append(el("table", {class: "grid", id: "token-features"},
        el("thead", {}, el("tr", {}, el("th", {scope: "col", text: "token"}), el("th", {scope: "col", text: "active"}),
          el("th", {scope: "col", text: "top features"}))), el("tbody", {}, ...rows)));
    } catch (e) {
      out.textContent = "";
      out.append(errorBox(e));
    }
  });
  container.append(form, out);
}

function continuation(title, id, prompt, c) {
  return el("div", {class: "column", id},
    el("h3", {text: title}),
    el("p", {class: "generation"}, el("span", {class: "muted", text: prompt}), el("strong", {class: "generated", text: c.text})));
}

/** Steering: a prompt, a strength (in units of the feature's activation) and a token count; the
 * server answers both greedy continuations, shown side by side. */
export function steeringPanel(container, dictionaryId, f) {
  const prompt = el("textarea", {id: "steer-prompt", rows: "2", maxlength: "4000", required: true});
  prompt.value = "My favourite thing is";
  const suggested = f.max_activation ? Math.round(4 * f.max_activation * 10) / 10 : 10;
  const strength = el("input", {id: "steer-strength", type: "number", step: "any", min: "-1000", max: "1000", value: String(suggested), required: true});
  const tokens = el("input", {id: "steer-tokens", type: "number", min: "1", max: "64", step: "1", value: "24", required: true});
  const secret = el("input", {id: "steer-token", type: "password", autocomplete: "off", required: true});
  secret.value = sessionStorage.getItem(TOKEN_KEY) || "";
  const out = el("div", {id: "steer-output", "aria-live": "polite"});
  const form = el("form", {id: "steer-form", class: "stack"},
    field("Prompt", prompt),
    el("div", {class: "row"},
      field("Strength", strength, "activation added (max seen: " + fmt(f.max_activation) + ")"),
      field("New tokens", tokens),
      field("API token", secret, "bearer token of this server's write endpoints"),
      el("button", {type: "submit", text: "Steer"})));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, secret.value);
    out.textContent = "generating (greedy, with and without steering)…";
    try {
      const body = {prompt: prompt.value, strength: +strength.value, max_new_tokens: +tokens.value};
      const r = await postJson(`/api/features/${enc(dictionaryId)}/${enc(f.hook)}/${enc(f.index)}/steer`, body, secret.value);
      out.textContent = "";
      out.append(el("p", {class: "muted", text: `${r.model}: feature ${r.index} × ${fmt(r.strength)} added at ${r.hooks_out.join(", ")}`}),
        el("div", {class: "columns"}, continuation("Unsteered", "unsteered", r.prompt, r.unsteered),
          continuation(`Steered (strength ${fmt(r.strength)})`, "steered", r.prompt, r.steered)));
    } catch (e) {
      out.textContent = "";
      out.append(errorBox(e));
    }
  });
  container.append(el("p", {class: "muted", text: "Adds the feature's decoder direction at the dictionary's output hook, "
    + "at every position, and continues greedily; the unsteered text is the same loop without it."}), form, out);
}
