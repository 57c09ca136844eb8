"""Per-shard feature statistics: what one worker computes from its token windows, in mergeable form.

A ``Partial`` holds, for the windows of one task, everything the driver needs to merge shards *exactly*:

- token statistics (only for features that fired): firing count, activation sum (float64), maximum,
  and log-spaced histogram counts (fixed edges, so bin counts add);
- candidate examples. An example is a (window, feature) pair where the feature fires; its value is the
  feature's maximum activation over the window's kept tokens, its position the first token reaching it.
  Per feature the shard keeps its ``top_k`` pairs (value descending, then window id ascending) and the
  ``samples`` pairs with the smallest sampling key (a seeded hash of window id and feature, so the
  merged sample is a uniform sample of all activating windows however the corpus was sharded). The
  global top-k / sample is always contained in the union of the shards' ones;
- each candidate's per-token activations of its feature (sparse: positions and values where > 0) and
  the token ids and document ids of the task's windows, so examples need no second pass.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from raysae.data.tokens import WindowBatch

_MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def sample_keys(window_ids: np.ndarray, features: np.ndarray, seed: int) -> np.ndarray:
    """Pseudo-random uint64 sampling key of each (window id, feature) pair (splitmix64 finaliser)."""
    m = [np.uint64(c) for c in _MIX]
    with np.errstate(over="ignore"):
        x = np.asarray(window_ids).astype(np.uint64) * m[0]
        x ^= np.asarray(features).astype(np.uint64) * m[1]
        x ^= np.uint64(seed % 2**64) * m[2]
        x ^= x >> np.uint64(30)
        x *= m[3]
        x ^= x >> np.uint64(27)
        x *= m[4]
        x ^= x >> np.uint64(31)
    return x


def histogram_edges(bins: int, low: float, high: float) -> np.ndarray:
    """``bins + 1`` log-spaced edges from ``low`` to ``high`` (float64)."""
    return np.logspace(np.log10(low), np.log10(high), bins + 1)


def histogram_bins(values: Tensor, edges: np.ndarray) -> Tensor:
    """Bin of each value: i where edges[i] <= v < edges[i+1]; below edges[1] is bin 0, at or above
    edges[-2] the last bin (so the first and last bins are open-ended)."""
    inner = torch.as_tensor(edges[1:-1], dtype=torch.float64, device=values.device)
    return torch.bucketize(values.double(), inner, right=True)


@dataclass
class Partial:
    """Mergeable statistics of one shard of windows (see the module docstring)."""

    n_tokens: int
    n_windows: int
    feature: np.ndarray  # int64 [U]: features that fired
    n_fired: np.ndarray  # int64 [U]
    act_sum: np.ndarray  # float64 [U]
    act_max: np.ndarray  # float32 [U]
    hist_index: np.ndarray  # int64 [H]: feature * bins + bin
    hist_count: np.ndarray  # int64 [H]
    cand_feature: np.ndarray  # int64 [C], sorted
    cand_window: np.ndarray  # int64 [C]: global window id
    cand_value: np.ndarray  # float32 [C]
    cand_position: np.ndarray  # int64 [C]: token of the maximum within the window
    cand_key: np.ndarray  # uint64 [C]
    cand_top: np.ndarray  # bool [C]: among the shard's top_k of its feature
    cand_sample: np.ndarray  # bool [C]: among the shard's smallest-key samples of its feature
    acts_offsets: np.ndarray  # int64 [C + 1]: CSR of per-token activations of each candidate
    acts_position: np.ndarray  # int32 [nnz]
    acts_value: np.ndarray  # float32 [nnz]
    window_ids: np.ndarray  # int64 [n]
    tokens: np.ndarray  # int64 [n, T]
    doc_ids: np.ndarray  # int64 [n, T]
    timings: dict[str, float] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self.__dict__, protocol=5)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Partial:
        return cls(**pickle.loads(blob))

    def candidate_acts(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, values) of candidate ``i``'s per-token activations, as fresh arrays."""
        lo, hi = self.acts_offsets[i], self.acts_offsets[i + 1]
        return self.acts_position[lo:hi].copy(), self.acts_value[lo:hi].copy()


@dataclass
class LatentEntries:
    """Non-zero latent activations of kept tokens, as COO entries on the CPU."""

    window: list[np.ndarray] = field(default_factory=list)  # global window id
    position: list[np.ndarray] = field(default_factory=list)  # token position within the window
    feature: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)
    hist: list[Tensor] = field(default_factory=list)

    def add(self, z: Tensor, row_window: np.ndarray, row_position: np.ndarray, edges: np.ndarray) -> None:
        """Record latents ``z`` [rows, n_features] of rows at (window id, position)."""
        rows, feats = (z > 0).nonzero(as_tuple=True)
        values = z[rows, feats]
        n_bins = len(edges) - 1
        self.hist.append(feats * n_bins + histogram_bins(values, edges))
        rows_np = rows.cpu().numpy()
        self.window.append(row_window[rows_np])
        self.position.append(row_position[rows_np])
        self.feature.append(feats.cpu().numpy())
        self.value.append(values.float().cpu().numpy())

    def concat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Tensor]:
        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

        hist = torch.cat(self.hist) if self.hist else torch.zeros(0, dtype=torch.long)
        return (
            cat(self.window, np.int64),
            cat(self.position, np.int64),
            cat(self.feature, np.int64),
            cat(self.value, np.float32),
            hist,
        )


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each element's run of equal keys (keys sorted)."""
    n = len(sorted_keys)
    new = np.ones(n, dtype=bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    starts = np.flatnonzero(new)
    return starts[np.cumsum(new) - 1]


def build_partial(
    entries: LatentEntries,
    windows: WindowBatch,
    n_tokens: int,
    n_features: int,
    top_k: int,
    samples: int,
    seed: int,
) -> Partial:
    """Reduce the latent entries of a shard's windows into a ``Partial``."""
    win, pos, feat, val, hist = entries.concat()
    # ---- token statistics -------------------------------------------------------------------
    n_fired = np.bincount(feat, minlength=n_features)
    act_sum = np.bincount(feat, weights=val.astype(np.float64), minlength=n_features)
    fired = np.flatnonzero(n_fired)
    hist_index, hist_count = (t.cpu().numpy() for t in torch.unique(hist, return_counts=True))
    # ---- (window, feature) pairs: maximum and its first position -------------------------------
    order = np.lexsort((pos, -val, win, feat))  # by feature, window, value desc, position
    win, pos, feat, val = win[order], pos[order], feat[order], val[order]
    f_starts = np.searchsorted(feat, fired)
    act_max = np.maximum.reduceat(val, f_starts) if len(fired) else np.zeros(0, np.float32)
    first = np.ones(len(feat), dtype=bool)
    first[1:] = (feat[1:] != feat[:-1]) | (win[1:] != win[:-1])
    p_idx = np.flatnonzero(first)  # pairs, sorted by (feature, window)
    p_feat, p_win, p_val, p_pos = feat[p_idx], win[p_idx], val[p_idx], pos[p_idx]
    p_key = sample_keys(p_win, p_feat, seed)
    # top_k by (value desc, window asc) and samples by (key asc, window asc), per feature
    by_value = np.lexsort((p_win, -p_val, p_feat))
    top = np.zeros(len(p_idx), dtype=bool)
    top[by_value[np.arange(len(by_value)) - _group_starts(p_feat[by_value]) < top_k]] = True
    sample = np.zeros(len(p_idx), dtype=bool)
    if samples > 0:
        by_key = np.lexsort((p_win, p_key, p_feat))
        sample[by_key[np.arange(len(by_key)) - _group_starts(p_feat[by_key]) < samples]] = True
    cand = np.flatnonzero(top | sample)  # still sorted by (feature, window)
    # ---- per-token activations of the candidates: entries of candidate pairs, in pair order -------
    pair_of_entry = np.cumsum(first) - 1
    is_cand = np.zeros(len(p_idx), dtype=bool)
    is_cand[cand] = True
    keep = is_cand[pair_of_entry]
    cand_of_pair = np.full(len(p_idx), -1, dtype=np.int64)
    cand_of_pair[cand] = np.arange(len(cand))
    e_cand, e_pos, e_val = cand_of_pair[pair_of_entry[keep]], pos[keep], val[keep]
    e_order = np.lexsort((e_pos, e_cand))
    e_cand, e_pos, e_val = e_cand[e_order], e_pos[e_order], e_val[e_order]
    offsets = np.searchsorted(e_cand, np.arange(len(cand) + 1), side="left").astype(np.int64)
    return Partial(
        n_tokens=int(n_tokens),
        n_windows=len(windows),
        feature=fired.astype(np.int64),
        n_fired=n_fired[fired].astype(np.int64),
        act_sum=act_sum[fired],
        act_max=act_max.astype(np.float32),
        hist_index=hist_index.astype(np.int64),
        hist_count=hist_count.astype(np.int64),
        cand_feature=p_feat[cand],
        cand_window=p_win[cand],
        cand_value=p_val[cand],
        cand_position=p_pos[cand],
        cand_key=p_key[cand],
        cand_top=top[cand],
        cand_sample=sample[cand],
        acts_offsets=offsets,
        acts_position=e_pos.astype(np.int32),
        acts_value=e_val.astype(np.float32),
        window_ids=np.asarray(windows.window_ids, dtype=np.int64),
        tokens=np.asarray(windows.tokens, dtype=np.int64),
        doc_ids=np.asarray(windows.doc_ids, dtype=np.int64),
    )
