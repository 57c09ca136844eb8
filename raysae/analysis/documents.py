"""The documents that `raysae analyze` writes to MongoDB (the contract the Serve endpoints read).

Collection ``features`` — one document per feature; identity (``dictionary_id``, ``hook``, ``index``)::

    dictionary_id      str    the dictionary's id
    hook               str    SAE/transcoder: hook_point_in; CLT: the layer's input hook (hooks_in[layer]);
                              CrossCoder: "+".join(hooks_in)
    index              int    latent index within the hook (0 .. d_sae-1)
    layer              int | null   CLT layer (position in hooks_in); null for other architectures
    frequency          float  n_fired / n_tokens
    n_fired            int    kept tokens on which the feature fires (activation > 0)
    n_tokens           int    kept tokens analysed (BOS and padding are not kept)
    mean_activation    float  mean activation over the firing tokens (0.0 if it never fired)
    max_activation     float  largest activation (0.0 if it never fired)
    histogram          {edges: [float] (bins+1, log-spaced, fixed by the settings), counts: [int] (bins)}
                       counts[i] = firing tokens with edges[i] <= a < edges[i+1]; the first bin also
                       holds a < edges[0], the last a >= edges[-1]; sum(counts) == n_fired
    top_examples       [example], strongest first (max_activation desc, then window_id asc); at most
                       top_k_examples, one per window
    quantile_examples  [{quantile_low: float, quantile_high: float, examples: [example]}]: a uniform
                       sample (seeded hash of window and feature) of quantiles × examples_per_quantile
                       activating windows, sorted by activation and cut into `quantiles` equal groups by
                       rank: group q holds the sample's ranks [q/Q, (q+1)/Q) (quantile_low = q/Q,
                       quantile_high = (q+1)/Q); examples strongest first. Empty for a dead feature
    dla_positive_tokens [str]  the dla_positive tokens, strongest first (a flat list: multikey index)
    dla_positive       [{token: str, token_id: int, value: float}], largest direct logit attribution first
    dla_negative       [{token: str, token_id: int, value: float}], most negative first
    updated_at         datetime (set by the store)

    example = {doc_id: int (document of the max token), window_id: int, position: int (index of the max
               token within the window), max_activation: float, tokens: [str], token_ids: [int],
               activations: [float] (this feature, one per token; 0 where it does not fire, at BOS)}

An example's window is a whole context window of the analysed token stream (BOS first; it may span
documents; trailing padding is cut). Token strings are ``tokenizer.decode([id])``. DLA values are
``(w * d) @ W_U`` for decoder direction d and final-RMSNorm scale w (see ``raysae.analysis.dla``).
Dead features (never fired) get a document with frequency 0, zero counts and empty example lists.

Collection ``dictionaries`` — identity ``dictionary_id`` (merged into an existing record, so fields a
training job wrote stay)::

    dictionary_id, architecture ("sae" | "transcoder" | "clt" | "crosscoder"), hooks_in [str],
    hooks_out [str], hooks [str] (the feature documents' hook values), d_model, d_sae (latents per
    hook), n_features (all hooks), layers (int: number of CLT layers; null otherwise),
    path (absolute dictionary folder), model (language model name), config (dictionary config dict),
    analysis_id (the latest analysis)

Collection ``analyses`` — identity (``dictionary_id``, ``analysis_id``), one per run::

    dictionary_id, analysis_id, status ("running" | "complete" | "failed"), error (str | null),
    corpus (the text source settings), model (model settings), tokens (kept tokens analysed),
    windows, context_size, hooks [str], n_features, settings (the analysis settings without the
    store), started_at, finished_at, seconds, timings {seconds per stage}, features_written
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from raysae.analysis.dla import TopTokens
from raysae.analysis.layout import FeatureLayout
from raysae.analysis.merge import Example, StatsMerger
from raysae.dictionaries import SparseDictionary

Document = dict[str, Any]


def example_document(
    ex: Example, windows: dict[int, tuple[np.ndarray, np.ndarray]], vocab: list[str]
) -> Document:
    """One example (see the module docstring) from a merged candidate and its token window."""
    tokens, doc_ids = windows[ex.window_id]
    n = len(tokens)
    while n > 0 and doc_ids[n - 1] < 0:  # trailing padding of the last window
        n -= 1
    acts = np.zeros(n, dtype=np.float32)
    acts[ex.act_positions] = ex.act_values
    ids = tokens[:n].tolist()
    return {
        "doc_id": int(doc_ids[ex.position]),
        "window_id": ex.window_id,
        "position": ex.position,
        "max_activation": ex.value,
        "tokens": [vocab[t] if 0 <= t < len(vocab) else "" for t in ids],
        "token_ids": ids,
        "activations": acts.tolist(),
    }


def quantile_groups(sample: list[Example], quantiles: int) -> list[list[Example]]:
    """Cut a sample into ``quantiles`` groups by activation rank (item i of n → group i·Q // n);
    each group strongest first."""
    ranked = sorted(sample, key=lambda e: (e.value, -e.window_id))
    groups: list[list[Example]] = [[] for _ in range(quantiles)]
    for i, ex in enumerate(ranked):
        groups[i * quantiles // len(ranked)].append(ex)
    return [g[::-1] for g in groups]


def dla_entries(ids: np.ndarray, values: np.ndarray, vocab: list[str]) -> list[Document]:
    return [
        {"token": vocab[i] if i < len(vocab) else "", "token_id": int(i), "value": float(v)}
        for i, v in zip(ids.tolist(), values.tolist(), strict=True)
    ]


def feature_documents(
    layout: FeatureLayout,
    merger: StatsMerger,
    group: int,
    indices: np.ndarray,
    dla: TopTokens,
    vocab: list[str],
    edges: np.ndarray,
    quantiles: int,
) -> list[Document]:
    """Documents of features ``indices`` of ``group`` (``dla`` rows are in the same order)."""
    docs = []
    hook, layer = layout.hook(group), layout.layer(group)
    edge_list = edges.tolist()
    for row, index in enumerate(indices.tolist()):
        g = group * layout.d_sae + index
        n_fired = int(merger.n_fired[g])
        sample = merger.sample.examples(g)
        pos = dla_entries(dla.positive_ids[row].numpy(), dla.positive_values[row].numpy(), vocab)
        docs.append(
            {
                "hook": hook,
                "index": index,
                "layer": layer,
                "frequency": n_fired / merger.n_tokens if merger.n_tokens else 0.0,
                "n_fired": n_fired,
                "n_tokens": merger.n_tokens,
                "mean_activation": float(merger.act_sum[g] / n_fired) if n_fired else 0.0,
                "max_activation": float(merger.act_max[g]),
                "histogram": {"edges": edge_list, "counts": merger.histogram(g).tolist()},
                "top_examples": [
                    example_document(ex, merger.windows, vocab) for ex in merger.top.examples(g)
                ],
                "quantile_examples": [
                    {
                        "quantile_low": q / quantiles,
                        "quantile_high": (q + 1) / quantiles,
                        "examples": [example_document(ex, merger.windows, vocab) for ex in group_examples],
                    }
                    for q, group_examples in enumerate(quantile_groups(sample, quantiles))
                ]
                if sample
                else [],
                "dla_positive_tokens": [e["token"] for e in pos],
                "dla_positive": pos,
                "dla_negative": dla_entries(
                    dla.negative_ids[row].numpy(), dla.negative_values[row].numpy(), vocab
                ),
            }
        )
    return docs


def dictionary_document(
    dictionary: SparseDictionary, layout: FeatureLayout, path: Path, model: str, analysis_id: str
) -> Document:
    """The ``dictionaries`` record of an analysed dictionary."""
    return {
        "architecture": layout.architecture,
        "hooks_in": list(layout.hooks_in),
        "hooks_out": list(layout.hooks_out),
        "hooks": layout.hooks(),
        "d_model": dictionary.d_model,
        "d_sae": layout.d_sae,
        "n_features": layout.n_features,
        "layers": layout.groups if layout.architecture == "clt" else None,
        "path": str(path.resolve()),
        "model": model,
        "config": dictionary.cfg.model_dump(mode="json"),
        "analysis_id": analysis_id,
    }
