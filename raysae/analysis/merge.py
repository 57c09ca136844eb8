"""The driver's exact merge of shard statistics: sums of counts, the global top-k and the global sample.

Candidate order is total, so the merged result is the same for any sharding and any merge order:
top examples by (value descending, window id ascending), samples by (sampling key ascending, window id
ascending). Each feature keeps ``slots`` candidates; a slot with window id -1 is empty. Token windows
are kept only while some slot refers to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raysae.analysis.partial import Partial

_EMPTY_KEY = np.iinfo(np.uint64).max


@dataclass
class Example:
    """One example: a window and the per-token activations of a feature in it."""

    window_id: int
    position: int
    value: float
    key: int
    act_positions: np.ndarray
    act_values: np.ndarray


class CandidateSlots:
    """The best ``size`` candidates of every feature under one ordering ("value" or "key")."""

    def __init__(self, n_features: int, size: int, order: str):
        self.size, self.order = size, order
        self.value = np.zeros((n_features, size), dtype=np.float32)
        self.window = np.full((n_features, size), -1, dtype=np.int64)
        self.position = np.zeros((n_features, size), dtype=np.int64)
        self.key = np.full((n_features, size), _EMPTY_KEY, dtype=np.uint64)
        self.acts = np.empty((n_features, size), dtype=object)

    def _sort_keys(self, value: np.ndarray, window: np.ndarray, key: np.ndarray) -> tuple:
        primary = -value.astype(np.float64) if self.order == "value" else key
        return (window, primary, window < 0)  # np.lexsort: last key first; empty slots last

    def merge(self, p: Partial, mask: np.ndarray) -> None:
        """Merge the candidates of ``p`` selected by ``mask`` (sorted by feature, at most ``size`` each)."""
        idx = np.flatnonzero(mask)
        if self.size == 0 or len(idx) == 0:
            return
        feat = p.cand_feature[idx]
        feats, starts, counts = np.unique(feat, return_index=True, return_counts=True)
        width = int(counts.max())
        if width > self.size:
            raise ValueError(f"a partial has {width} candidates of one feature, more than {self.size}")
        row = np.searchsorted(feats, feat)
        col = self.size + np.arange(len(idx)) - starts[row]
        n, w = len(feats), self.size + width

        def combined(state: np.ndarray, incoming: np.ndarray, fill) -> np.ndarray:
            out = np.full((n, w), fill, dtype=state.dtype)
            out[:, : self.size] = state[feats]
            out[row, col] = incoming
            return out

        value = combined(self.value, p.cand_value[idx], 0)
        window = combined(self.window, p.cand_window[idx], -1)
        position = combined(self.position, p.cand_position[idx], 0)
        key = combined(self.key, p.cand_key[idx], _EMPTY_KEY)
        source = combined(np.zeros_like(self.window), idx, -1)  # candidate index for incoming columns
        order = np.lexsort(self._sort_keys(value, window, key), axis=-1)[:, : self.size]
        rows = np.arange(n)[:, None]
        acts = self.acts[feats][rows, np.minimum(order, self.size - 1)]
        new = order >= self.size
        new_r, new_c = np.nonzero(new)
        acts[new_r, new_c] = _objects([p.candidate_acts(i) for i in source[new_r, order[new_r, new_c]]])
        self.value[feats] = value[rows, order]
        self.window[feats] = window[rows, order]
        self.position[feats] = position[rows, order]
        self.key[feats] = key[rows, order]
        self.acts[feats] = acts

    def examples(self, feature: int) -> list[Example]:
        """The filled slots of ``feature``, best first."""
        return [
            Example(
                int(self.window[feature, j]),
                int(self.position[feature, j]),
                float(self.value[feature, j]),
                int(self.key[feature, j]),
                *self.acts[feature, j],
            )
            for j in range(self.size)
            if self.window[feature, j] >= 0
        ]


def _objects(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


class StatsMerger:
    """Accumulates ``Partial`` results into whole-corpus statistics for every feature."""

    def __init__(self, n_features: int, n_bins: int, top_k: int, samples: int):
        self.n_features, self.n_bins = n_features, n_bins
        self.n_tokens = 0
        self.n_windows = 0
        self.n_partials = 0
        self.n_fired = np.zeros(n_features, dtype=np.int64)
        self.act_sum = np.zeros(n_features, dtype=np.float64)
        self.act_max = np.zeros(n_features, dtype=np.float32)
        self.hist = np.zeros(n_features * n_bins, dtype=np.int64)
        self.top = CandidateSlots(n_features, top_k, "value")
        self.sample = CandidateSlots(n_features, samples, "key")
        self.windows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.timings: dict[str, float] = {}
        self._gc_at = 4096

    def add(self, p: Partial) -> None:
        """Merge one shard."""
        self.n_tokens += p.n_tokens
        self.n_windows += p.n_windows
        self.n_partials += 1
        for name, seconds in p.timings.items():
            self.timings[name] = self.timings.get(name, 0.0) + seconds
        self.n_fired[p.feature] += p.n_fired
        self.act_sum[p.feature] += p.act_sum
        self.act_max[p.feature] = np.maximum(self.act_max[p.feature], p.act_max)
        self.hist[p.hist_index] += p.hist_count
        self.top.merge(p, p.cand_top)
        self.sample.merge(p, p.cand_sample)
        for i, wid in enumerate(p.window_ids.tolist()):
            if wid not in self.windows:
                self.windows[wid] = (p.tokens[i].copy(), p.doc_ids[i].copy())
        if len(self.windows) > self._gc_at:
            self._drop_unused_windows()

    def _drop_unused_windows(self) -> None:
        used = set(np.unique(np.concatenate([self.top.window.ravel(), self.sample.window.ravel()])).tolist())
        self.windows = {w: v for w, v in self.windows.items() if w in used}
        self._gc_at = max(4096, 2 * len(self.windows))

    def histogram(self, feature: int) -> np.ndarray:
        return self.hist[feature * self.n_bins : (feature + 1) * self.n_bins]

    def mean_activation(self) -> np.ndarray:
        """Mean activation over firing tokens (0 for dead features)."""
        return np.divide(self.act_sum, self.n_fired, out=np.zeros_like(self.act_sum), where=self.n_fired > 0)
