"""Building the documents that `raysae analyze` writes: ``FeatureDoc`` and ``DictionaryDoc`` models.

Their shapes (and what every field means) are defined once, in ``raysae.store.models``; this module
only fills them from the merged statistics. Dead features (never fired) get a document with frequency
0, zero counts and empty example lists. The ``analyses`` record is an ``AnalysisDoc`` (see there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysae.analysis.dla import TopTokens
from raysae.analysis.layout import FeatureLayout
from raysae.analysis.merge import Example, StatsMerger
from raysae.dictionaries import SparseDictionary
from raysae.store.models import (
    DictionaryDoc,
    FeatureDoc,
    Histogram,
    LogitEffect,
    QuantileExamples,
)
from raysae.store.models import (
    Example as ExampleDoc,
)


def example_document(
    ex: Example, windows: dict[int, tuple[np.ndarray, np.ndarray]], vocab: list[str]
) -> ExampleDoc:
    """One example (see the module docstring) from a merged candidate and its token window."""
    tokens, doc_ids = windows[ex.window_id]
    n = len(tokens)
    while n > 0 and doc_ids[n - 1] < 0:  # trailing padding of the last window
        n -= 1
    acts = np.zeros(n, dtype=np.float32)
    acts[ex.act_positions] = ex.act_values
    ids = tokens[:n].tolist()
    return ExampleDoc(
        doc_id=int(doc_ids[ex.position]),
        window_id=ex.window_id,
        position=ex.position,
        max_activation=ex.value,
        tokens=[vocab[t] if 0 <= t < len(vocab) else "" for t in ids],
        token_ids=ids,
        activations=acts.tolist(),
    )


def quantile_groups(sample: list[Example], quantiles: int) -> list[list[Example]]:
    """Cut a sample into ``quantiles`` groups by activation rank (item i of n → group i·Q // n);
    each group strongest first."""
    ranked = sorted(sample, key=lambda e: (e.value, -e.window_id))
    groups: list[list[Example]] = [[] for _ in range(quantiles)]
    for i, ex in enumerate(ranked):
        groups[i * quantiles // len(ranked)].append(ex)
    return [g[::-1] for g in groups]


def dla_entries(ids: np.ndarray, values: np.ndarray, vocab: list[str]) -> list[LogitEffect]:
    return [
        LogitEffect(token=vocab[i] if i < len(vocab) else "", token_id=int(i), value=float(v))
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
) -> list[FeatureDoc]:
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
            FeatureDoc(
                hook=hook,
                index=index,
                layer=layer,
                frequency=n_fired / merger.n_tokens if merger.n_tokens else 0.0,
                n_fired=n_fired,
                n_tokens=merger.n_tokens,
                mean_activation=float(merger.act_sum[g] / n_fired) if n_fired else 0.0,
                max_activation=float(merger.act_max[g]),
                histogram=Histogram(edges=edge_list, counts=merger.histogram(g).tolist()),
                top_examples=[example_document(ex, merger.windows, vocab) for ex in merger.top.examples(g)],
                quantile_examples=[
                    QuantileExamples(
                        quantile_low=q / quantiles,
                        quantile_high=(q + 1) / quantiles,
                        examples=[example_document(ex, merger.windows, vocab) for ex in group_examples],
                    )
                    for q, group_examples in enumerate(quantile_groups(sample, quantiles))
                ]
                if sample
                else [],
                dla_positive_tokens=[e.token for e in pos],
                dla_positive=pos,
                dla_negative=dla_entries(
                    dla.negative_ids[row].numpy(), dla.negative_values[row].numpy(), vocab
                ),
            )
        )
    return docs


def dictionary_document(
    dictionary: SparseDictionary, layout: FeatureLayout, path: Path, model: str, analysis_id: str
) -> DictionaryDoc:
    """The ``dictionaries`` record of an analysed dictionary."""
    return DictionaryDoc(
        architecture=layout.architecture,
        hooks_in=list(layout.hooks_in),
        hooks_out=list(layout.hooks_out),
        hooks=layout.hooks(),
        d_model=dictionary.d_model,
        d_sae=layout.d_sae,
        n_features=layout.n_features,
        layers=layout.layers,
        path=str(path.resolve()),
        model=model,
        config=dictionary.cfg.model_dump(mode="json"),
        analysis_id=analysis_id,
    )
