"""Data-dependent initialisation: norm scaling, decoder norm, tied encoder, b_dec."""

from __future__ import annotations

import math

import pytest
import torch

from raysae.config import InitializerConfig, SAEConfig
from raysae.dictionaries import build_dictionary
from raysae.dictionaries.init import geometric_median, initialize_from_data


def test_geometric_median_resists_outliers():
    points = torch.cat([torch.zeros(20, 3), torch.full((3, 3), 100.0)]).double()
    median = geometric_median(points)
    assert median.norm() < 1.0 < points.mean(0).norm()
    # Per-group: [n, groups, d] → one median per group.
    grouped = torch.stack([points, points + 5], dim=1)
    m2 = geometric_median(grouped)
    assert m2.shape == (2, 3)
    torch.testing.assert_close(m2[1] - m2[0], torch.full((3,), 5.0, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("b_dec_init", ["zeros", "mean", "geometric_median"])
def test_initialize_from_data(b_dec_init):
    d = build_dictionary(SAEConfig(d_model=16, d_sae=64, act_fn="topk", top_k=4))
    batches = [torch.randn(50, 16) * 7 + 3 for _ in range(3)]
    cfg = InitializerConfig(decoder_norm=0.2, b_dec_init=b_dec_init, norm_activation="dataset_wide")
    initialize_from_data(d, batches, cfg)
    x = torch.cat(batches)
    expected_scale = math.sqrt(16) / x.norm(dim=-1).mean()
    assert float(d.input_scale) == pytest.approx(float(expected_scale), rel=1e-5)
    assert float(d.output_scale) == pytest.approx(float(expected_scale), rel=1e-5)
    torch.testing.assert_close(d.decoder_norms(), torch.full((64,), 0.2))
    torch.testing.assert_close(d.W_enc, d.W_dec.T)
    scaled = x * expected_scale
    expected_b = {
        "zeros": torch.zeros(16),
        "mean": scaled.mean(0),
        "geometric_median": geometric_median(scaled),
    }
    torch.testing.assert_close(d.b_dec.detach(), expected_b[b_dec_init], atol=1e-4, rtol=1e-4)
