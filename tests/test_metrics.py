"""Metric definitions checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from raysae import metrics as M


def test_mse_and_explained_variance_hand_computed():
    y = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean [2, 1]; total variance Σ‖y−ȳ‖² = (1+1)+(1+1) = 4
    y_hat = torch.tensor([[1.0, 1.0], [3.0, 2.0]])  # one error of 1 → Σ err² = 1
    assert float(M.mse(y, y_hat)) == pytest.approx(1 / 4)
    assert float(M.explained_variance(y, y_hat)) == pytest.approx(1 - 1 / 4)
    assert float(M.fvu(y, y_hat)) == pytest.approx(1 / 4)
    # Predicting the mean explains nothing; relative to the mean, not to zero.
    assert float(M.explained_variance(y, y.mean(0, keepdim=True).expand_as(y))) == pytest.approx(0.0)


def test_explained_variance_per_group_and_streaming():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(100, 3, 8, generator=g) * torch.tensor([1.0, 2.0, 3.0])[:, None]
    y_hat = y + 0.5 * torch.randn(100, 3, 8, generator=g)
    per = M.explained_variance(y, y_hat, per_group=True)
    for h in range(3):
        yy, ee = y[:, h], (y_hat - y)[:, h]
        expected = 1 - ee.pow(2).sum() / (yy - yy.mean(0)).pow(2).sum()
        assert float(per[h]) == pytest.approx(float(expected), rel=1e-6)
    stats = M.ReconstructionStats()
    for chunk in range(4):
        stats.update(y[chunk * 25 : (chunk + 1) * 25], y_hat[chunk * 25 : (chunk + 1) * 25])
    assert float(stats.explained_variance) == pytest.approx(float(M.explained_variance(y, y_hat)), rel=1e-9)
    assert float(stats.mse) == pytest.approx(float(M.mse(y, y_hat)), rel=1e-9)
    with pytest.raises(ValueError, match="per_group"):
        M.explained_variance(y[:, 0], y_hat[:, 0], per_group=True)


def test_l0_firing_dead_dense():
    z = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    assert float(M.l0(z)) == pytest.approx((2 + 1 + 1) / 3)
    counts = M.firing_counts(z)
    assert counts.tolist() == [0, 3, 1, 0]
    assert M.dead_fraction(counts) == pytest.approx(0.5)
    assert M.dense_fraction(counts, n_tokens=3, threshold=0.5) == pytest.approx(0.25)
    # Per-layer l0 for a CLT-shaped [tokens, layers, d_sae].
    zz = torch.stack([z, torch.zeros_like(z)], dim=1)
    assert M.l0(zz).tolist() == pytest.approx([4 / 3, 0.0])


def test_feature_density_histogram():
    counts = torch.tensor([0, 1, 10, 100, 1000])
    hist, edges = M.feature_density_histogram(counts, n_tokens=1000, bins=10, log10_min=-5)
    assert int(hist.sum()) == 5
    assert len(edges) == 11
    # densities 1e-3, 1e-2, 1e-1, 1 → log10 -3, -2, -1, 0; dead goes to the lowest bin.
    assert hist[0] == 1 and hist[-1] == 1


def test_loss_recovered_scores():
    assert M.ce_loss_recovered(ce_clean=2.0, ce_reconstructed=2.5, ce_zero_ablated=7.0) == pytest.approx(0.9)
    assert math.isnan(M.ce_loss_recovered(2.0, 2.0, 2.0))
    assert M.kl_recovered(kl_reconstructed=0.1, kl_zero_ablated=2.0) == pytest.approx(0.95)
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [0.25, 0.75]
    uniform = torch.zeros(1, 2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(M.kl_divergence(logits, uniform)) == pytest.approx(expected)
