"""Influence, pruning and scores on graphs small enough to compute by hand.

Nodes ``[f0, e0, t0, l0]`` (one feature, one error, one token, one logit with probability 1):
l0 ← f0: 2, l0 ← e0: −1, l0 ← t0: 1; f0 ← e0: 1, f0 ← t0: 3. Normalised rows: l0 = [½, ¼, ¼, 0],
f0 = [0, ¼, ¾, 0]. Influence = w N + w N² = [½, ¼, ¼, 0] + [0, ⅛, ⅜, 0] = [½, ⅜, ⅝, 0].
"""

from __future__ import annotations

import pytest
import torch

from raysae.graphs.prune import Layout, graph_scores, normalize_rows, prune, score_threshold, total_influence

LAYOUT = Layout(n_features=1, n_errors=1, n_tokens=1, n_logits=1)
P = torch.tensor([1.0], dtype=torch.float64)


def small() -> torch.Tensor:
    a = torch.zeros(4, 4, dtype=torch.float64)
    a[3, 0], a[3, 1], a[3, 2] = 2, -1, 1
    a[0, 1], a[0, 2] = 1, 3
    return a


def test_influence_by_hand():
    n = normalize_rows(small())
    torch.testing.assert_close(n[3], torch.tensor([0.5, 0.25, 0.25, 0], dtype=torch.float64))
    w = LAYOUT.logit_weights(P, n)
    torch.testing.assert_close(
        total_influence(n, w), torch.tensor([0.5, 0.375, 0.625, 0], dtype=torch.float64)
    )


def test_scores_by_hand():
    # replacement = tokens / (tokens + errors) = ⅝ / (⅝ + ⅜); completeness: non-error input fractions
    # [¾, 1, 1, ¾] weighted by influence + w = [½, ⅜, ⅝, 1]: (⅜ + ⅜ + ⅝ + ¾) / 2½ = 0.85
    replacement, completeness = graph_scores(small(), LAYOUT, P)
    assert replacement == pytest.approx(0.625)
    assert completeness == pytest.approx(0.85)
    # without the error node's edges, all influence reaches the token: both scores are 1
    a = small()
    a[:, 1] = 0
    assert graph_scores(a, LAYOUT, P) == pytest.approx((1.0, 1.0))


def test_threshold_by_hand():
    s = torch.tensor([0.5, 0.375, 0.625, 0.0], dtype=torch.float64)
    # sorted [⅝, ½, ⅜, 0], cumulative fractions [5/12, 9/12, 1, 1]
    assert score_threshold(s, 0.4) == 0.625
    assert score_threshold(s, 0.7) == 0.5
    assert score_threshold(s, 0.8) == 0.375


def test_node_pruning_by_hand():
    # node_threshold 0.7 keeps f0 (½) and t0 (⅝), drops e0 (⅜); the logit always stays.
    r = prune(small(), LAYOUT, P, node_threshold=0.7, edge_threshold=1.0)
    assert r.node_mask.tolist() == [True, False, True, True]
    assert not r.edge_mask[:, 1].any()
    assert r.edge_mask[3, 0] and r.edge_mask[3, 2] and r.edge_mask[0, 2]
    # cumulative influence ranks: t0 5/12, f0 9/12, e0 1
    torch.testing.assert_close(
        r.cumulative_scores[:3], torch.tensor([0.75, 1.0, 5 / 12], dtype=torch.float64)
    )


def test_edge_pruning_and_orphans_by_hand():
    # After dropping e0: rows l0 = [⅔, 0, ⅓, 0], f0 = [0, 0, 1, 0]; influence + w = [⅔, 0, 1, 1], so the
    # edge scores are l0←f0 ⅔, f0←t0 ⅔, l0←t0 ⅓ (cumulative 0.4, 0.8, 1). 0.75 drops l0←t0 only.
    r = prune(small(), LAYOUT, P, node_threshold=0.7, edge_threshold=0.75)
    assert r.edge_mask.nonzero().tolist() == [[0, 2], [3, 0]]
    # a second feature f1 that only feeds l0 through a negligible edge loses it, then itself
    a = torch.zeros(5, 5, dtype=torch.float64)
    a[4, 0], a[4, 1], a[4, 3] = 2, 0.001, 1  # l0 ← f0, f1, t0
    a[0, 3], a[1, 3] = 3, 5  # f0 ← t0, f1 ← t0
    layout = Layout(n_features=2, n_errors=1, n_tokens=1, n_logits=1)
    r = prune(a, layout, P, node_threshold=1.0, edge_threshold=0.9)
    assert r.node_mask.tolist() == [True, False, False, True, True]  # f1 and the edgeless error go
    assert not r.edge_mask[1].any() and not r.edge_mask[:, 1].any()


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="node_threshold"):
        prune(small(), LAYOUT, P, node_threshold=1.5, edge_threshold=0.9)


def test_cycles_are_refused():
    a = torch.zeros(4, 4, dtype=torch.float64)
    a[0, 1], a[1, 0], a[3, 0] = 1, 1, 1
    with pytest.raises(RuntimeError, match="cycle"):
        total_influence(normalize_rows(a), LAYOUT.logit_weights(P, a))
