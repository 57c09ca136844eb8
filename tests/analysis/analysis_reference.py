"""Brute-force feature statistics from a dense latent tensor: one feature at a time, plain numpy, no merging.

Only the definitions are shared with the code under test: the log-spaced edges, the sampling hash and the
orderings documented in raysae.analysis (top: value desc, window asc; sample: key asc, window asc).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raysae.analysis.partial import sample_keys
from raysae.config.analysis import AnalysisConfig

HOOK = "blocks.1.hook_resid_post"
DEAD = (0, 1, 2)  # SAE features that can never fire


@dataclass
class Ref:
    """Whole-corpus statistics of every feature."""

    n_tokens: int
    n_fired: np.ndarray
    mean: np.ndarray
    max: np.ndarray
    hist: np.ndarray  # [F, bins]
    top: list[list[tuple[int, int, float]]]  # per feature: (window_id, position, value), best first
    sample: list[list[tuple[int, int, float]]]  # per feature, by key
    windows: dict[int, np.ndarray]  # window id -> [T, F] latents (0 where not kept)


def brute_force(
    z: np.ndarray, keep: np.ndarray, window_ids: np.ndarray, top_k: int, samples: int, seed: int, edges
) -> Ref:
    """``z`` [W, T, F] latents of every window (any values where ``keep`` [W, T] is False)."""
    z = np.where(keep[..., None], z, 0).astype(np.float32)
    n_features = z.shape[-1]
    n_fired = np.zeros(n_features, dtype=np.int64)
    mean = np.zeros(n_features)
    mx = np.zeros(n_features, dtype=np.float32)
    hist = np.zeros((n_features, len(edges) - 1), dtype=np.int64)
    lows = np.concatenate([[0.0], edges[1:-1]])
    highs = np.concatenate([edges[1:-1], [np.inf]])
    top, sample = [], []
    for f in range(n_features):
        col = z[..., f]
        v = col[col > 0].astype(np.float64)
        n_fired[f] = len(v)
        if len(v):
            mean[f] = v.sum() / len(v)
            mx[f] = v.max()
        for i in range(len(lows)):
            hist[f, i] = int(((v >= lows[i]) & (v < highs[i])).sum())
        pairs = []
        for w in range(len(window_ids)):
            if col[w].max() > 0:
                pos = int(np.argmax(col[w]))  # first position of the maximum
                pairs.append((int(window_ids[w]), pos, float(col[w, pos])))
        top.append(sorted(pairs, key=lambda p: (-p[2], p[0]))[:top_k])
        keys = [
            int(k)
            for k in sample_keys(
                np.array([p[0] for p in pairs], dtype=np.int64), np.full(len(pairs), f), seed
            )
        ]
        sample.append(
            [p for _, p in sorted(zip(keys, pairs, strict=True), key=lambda kp: (kp[0], kp[1][0]))][:samples]
        )
    return Ref(
        int(keep.sum()),
        n_fired,
        mean,
        mx,
        hist,
        top,
        sample,
        {int(w): z[i] for i, w in enumerate(window_ids)},
    )


def analysis_config(store, **overrides) -> AnalysisConfig:
    """~40 windows of 64 tokens of Shakespeare, 2 forward passes of 4 windows per Ray task (5 tasks)."""
    data = {
        "activations": {
            "total_tokens": 2400,
            "batch_windows": 4,
            "tokens": {"context_size": 64, "shuffle_buffer_documents": 16, "seed": 1},
            "model": {"device": "cpu"},
            "forward_passes_per_task": 2,
        },
        "top_k_examples": 5,
        "quantiles": 3,
        "examples_per_quantile": 2,
        "histogram_bins": 24,
        "histogram_min": 0.01,
        "histogram_max": 1000.0,
        "dla_tokens": 8,
        "write_batch_features": 100,
        "store": store.config.model_dump(),
    }
    data.update(overrides)
    return AnalysisConfig.model_validate(data)
