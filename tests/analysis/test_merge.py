"""Shard statistics and their merge against a brute-force pass, with ties, on synthetic latents (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_reference import brute_force

from raysae.analysis.documents import quantile_groups
from raysae.analysis.merge import Example, StatsMerger
from raysae.analysis.partial import LatentEntries, build_partial, histogram_bins, histogram_edges, sample_keys
from raysae.data.tokens import WindowBatch

EDGES = histogram_edges(12, 0.01, 100.0)
TOP_K, SAMPLES, SEED = 4, 6, 3


def synthetic(seed: int, n_windows: int = 30, t: int = 12, n_features: int = 9):
    """Latents with many exact ties (values from a few levels), unkept tokens and a dead feature."""
    rng = np.random.default_rng(seed)
    levels = np.array([0.005, 0.5, 1.0, 2.0, 4.0, 150.0], dtype=np.float32)
    z = levels[rng.integers(0, len(levels), (n_windows, t, n_features))]
    z *= rng.random((n_windows, t, n_features)) < 0.3
    z[..., 0] *= rng.random((n_windows, t)) < 0.05  # a rare feature
    z[..., -1] = 0  # a dead feature
    keep = rng.random((n_windows, t)) < 0.85
    keep[:, 0] = False  # BOS
    window_ids = 1000 + 7 * rng.permutation(n_windows)
    tokens = rng.integers(0, 500, (n_windows, t))
    doc_ids = np.repeat(np.arange(n_windows)[:, None], t, axis=1)
    return z, keep, window_ids, tokens, doc_ids


def partial_of(z, keep, window_ids, tokens, doc_ids, rows: np.ndarray):
    entries = LatentEntries()
    w_idx, t_idx = np.nonzero(keep[rows])
    zz = torch.from_numpy(z[rows][w_idx, t_idx])
    entries.add(zz, window_ids[rows][w_idx], t_idx.astype(np.int64), EDGES)
    wb = WindowBatch(tokens[rows], doc_ids[rows], np.zeros_like(tokens[rows]), keep[rows], window_ids[rows])
    return build_partial(entries, wb, int(keep[rows].sum()), z.shape[-1], TOP_K, SAMPLES, SEED)


def merged(data, shards: list[np.ndarray], order_seed: int) -> StatsMerger:
    merger = StatsMerger(data[0].shape[-1], len(EDGES) - 1, TOP_K, SAMPLES)
    rng = np.random.default_rng(order_seed)
    for i in rng.permutation(len(shards)):
        merger.add(partial_of(*data, shards[i]))
    return merger


def check_against_reference(merger: StatsMerger, data) -> None:
    z, keep, window_ids, _, _ = data
    ref = brute_force(z, keep, window_ids, TOP_K, SAMPLES, SEED, EDGES)
    assert merger.n_tokens == ref.n_tokens
    assert np.array_equal(merger.n_fired, ref.n_fired)
    np.testing.assert_allclose(merger.mean_activation(), ref.mean, rtol=1e-12)
    assert np.array_equal(merger.act_max, ref.max)
    assert np.array_equal(merger.hist.reshape(ref.hist.shape), ref.hist)
    for f in range(z.shape[-1]):
        for slots, want in ((merger.top, ref.top[f]), (merger.sample, ref.sample[f])):
            got = slots.examples(f)
            assert [(e.window_id, e.position, e.value) for e in got] == want, f
            for e in got:
                dense = np.zeros(z.shape[1], dtype=np.float32)
                dense[e.act_positions] = e.act_values
                assert np.array_equal(dense, ref.windows[e.window_id][:, f])
                assert e.window_id in merger.windows


@pytest.mark.parametrize("seed", [0, 1])
def test_any_sharding_and_merge_order_gives_the_brute_force_result(seed):
    data = synthetic(seed)
    n = len(data[0])
    shardings = [
        [np.arange(n)],  # one shard
        [np.array([i]) for i in range(n)],  # one window per shard
        np.array_split(np.random.default_rng(seed).permutation(n), 7),  # uneven, interleaved
    ]
    for k, shards in enumerate(shardings):
        check_against_reference(merged(data, shards, order_seed=k), data)


def test_dead_feature_has_no_examples_and_stats_are_zero():
    data = synthetic(2)
    merger = merged(data, np.array_split(np.arange(len(data[0])), 3), 0)
    dead = data[0].shape[-1] - 1
    assert merger.n_fired[dead] == 0 and merger.act_max[dead] == 0 and merger.mean_activation()[dead] == 0
    assert merger.top.examples(dead) == [] and merger.sample.examples(dead) == []
    assert merger.histogram(dead).sum() == 0


def test_histogram_bins_are_half_open_and_open_ended():
    edges = histogram_edges(4, 0.1, 1000.0)
    assert np.allclose(edges, [0.1, 1, 10, 100, 1000])
    values = torch.tensor([0.001, 0.1, 0.99, 1.0, 9.99, 10.0, 100.0, 999.0, 1000.0, 1e9])
    assert histogram_bins(values, edges).tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3, 3]


def test_sample_keys_depend_on_window_feature_and_seed():
    w, f = np.arange(1000), np.full(1000, 5)
    k = sample_keys(w, f, 0)
    assert k.dtype == np.uint64 and len(np.unique(k)) == 1000
    assert np.array_equal(k, sample_keys(w, f, 0))
    assert not np.array_equal(k, sample_keys(w, f, 1))
    assert not np.array_equal(k, sample_keys(w, f + 1, 0))
    # roughly uniform: each quarter of the key range gets about a quarter of the keys
    quarters = np.bincount((k >> np.uint64(62)).astype(np.int64), minlength=4)
    assert quarters.min() > 200


def test_quantile_groups_split_the_sample_by_rank():
    def ex(w: int, v: float) -> Example:
        return Example(w, 0, v, 0, np.zeros(0, np.int32), np.zeros(0, np.float32))

    sample = [ex(w, v) for w, v in enumerate([5.0, 1.0, 3.0, 2.0, 4.0, 6.0])]
    groups = quantile_groups(sample, 3)
    assert [[e.value for e in g] for g in groups] == [[2.0, 1.0], [4.0, 3.0], [6.0, 5.0]]
    few = quantile_groups(sample[:2], 4)  # fewer examples than groups: spread by rank
    assert [[e.value for e in g] for g in few] == [[1.0], [], [5.0], []]


def test_shards_without_kept_or_firing_tokens_merge_as_nothing():
    z, keep, window_ids, tokens, doc_ids = synthetic(4)
    keep[:5] = False  # e.g. windows past the token budget
    z[5:8] = 0  # windows where nothing fires
    data = (z, keep, window_ids, tokens, doc_ids)
    empty = partial_of(*data, np.arange(5))
    assert empty.n_tokens == 0 and len(empty.feature) == 0 and len(empty.cand_feature) == 0
    assert len(partial_of(*data, np.arange(5, 8)).cand_feature) == 0
    check_against_reference(merged(data, [np.arange(5), np.arange(5, 8), np.arange(8, 30)], 0), data)
