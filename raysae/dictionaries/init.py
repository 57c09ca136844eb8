"""Data-dependent initialisation: activation norm scaling, decoder norm, encoder = decoderᵀ, b_dec.

Pure torch. ``initialize_from_data`` reads a few batches (the trainer's first ``init_batches``) and
sets the dictionary's scales and decoder bias from them before the first optimiser step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from raysae.config import InitializerConfig
from raysae.dictionaries.base import Batch, SparseDictionary


def geometric_median(points: Tensor, iters: int = 100, eps: float = 1e-8) -> Tensor:
    """Weiszfeld's algorithm over dim 0; ``points`` is ``[n, *shape]``, each trailing ``[..., d]``
    vector group is treated independently (one median per CLT layer / CrossCoder head)."""
    x = points.double()
    median = x.mean(0)
    for _ in range(iters):
        dist = (x - median).norm(dim=-1, keepdim=True).clamp(min=eps)
        weights = 1 / dist
        new = (weights * x).sum(0) / weights.sum(0)
        if (new - median).norm() <= eps * max(1.0, float(median.norm())):
            median = new
            break
        median = new
    return median.to(points.dtype)


def norm_scale(acts: Tensor, d_model: int) -> Tensor:
    """sqrt(d_model) / mean ‖a‖ per group: the scale that makes the mean norm sqrt(d_model)."""
    mean_norm = acts.double().norm(dim=-1).mean(0)
    return (math.sqrt(d_model) / mean_norm.clamp(min=1e-12)).float()


@torch.no_grad()
def initialize_from_data(
    dictionary: SparseDictionary, batches: Sequence[Batch], cfg: InitializerConfig
) -> None:
    """Initialise ``dictionary`` in place from ``batches`` according to ``cfg``."""
    if not batches:
        raise ValueError("initialisation needs at least one batch")
    torch.manual_seed(cfg.seed)
    dictionary.reset_parameters()  # type: ignore[operator]
    x = torch.cat([dictionary.prepare_input(b) for b in batches]).to(dictionary.input_scale)
    y = torch.cat([dictionary.prepare_label(b) for b in batches]).to(dictionary.output_scale)
    if cfg.norm_activation == "dataset_wide":
        dictionary.input_scale.copy_(norm_scale(x, dictionary.d_model).reshape(dictionary.input_scale.shape))
        dictionary.output_scale.copy_(
            norm_scale(y, dictionary.d_model).reshape(dictionary.output_scale.shape)
        )
    if cfg.decoder_norm is not None:
        dictionary.set_decoder_norm_(cfg.decoder_norm)
    if cfg.encoder_as_decoder_transpose:
        dictionary.tie_encoder_to_decoder_()
    y_scaled = dictionary._scale(y, dictionary.output_scale)
    b_dec: Tensor = dictionary.b_dec  # type: ignore[assignment]
    if cfg.b_dec_init == "mean":
        b_dec.copy_(y_scaled.mean(0).reshape(b_dec.shape))
    elif cfg.b_dec_init == "geometric_median":
        b_dec.copy_(geometric_median(y_scaled).reshape(b_dec.shape))
    else:
        b_dec.zero_()
