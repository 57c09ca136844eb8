"""Direct logit attribution (DLA) of feature decoder directions through the model's final norm and unembedding.

The logits of a residual vector ``x`` are ``norm(x) @ W_U (+ b_U)``. For RMSNorm,
``norm(x) = w * x / rms(x)``: the learned scale ``w`` is applied to the decoder direction ``d``, giving
``(w * d) @ W_U``. The denominator ``rms(x)`` depends on the whole residual stream of the token the
feature fires on, not on the feature; it is one positive scalar per token that multiplies every logit
alike, so it changes neither the sign nor the ranking of tokens, and it is left out: values are logits
per unit of 1/rms. For LayerNorm the direction is also mean-centred first (LayerNorm subtracts the
mean, a linear map), and its bias, like ``b_U``, does not depend on the feature and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from raysae.lm.model import Unembed


@dataclass
class DLAReadout:
    """The feature-independent part of the head: ``logits(d) = (center(d) * scale) @ W_U``."""

    scale: Tensor | None
    W_U: Tensor
    center: bool

    @classmethod
    def of(cls, unembed: Unembed) -> DLAReadout:
        norm = unembed.final_norm
        weight = getattr(norm, "weight", None)
        scale = weight.detach() if isinstance(weight, Tensor) else None
        return cls(scale, unembed.W_U.detach(), isinstance(norm, nn.LayerNorm))

    @torch.no_grad()
    def logits(self, directions: Tensor) -> Tensor:
        """DLA ``[n, d_vocab]`` of residual-stream directions ``[n, d_model]``."""
        d = directions.to(device=self.W_U.device, dtype=self.W_U.dtype)
        if self.center:
            d = d - d.mean(-1, keepdim=True)
        if self.scale is not None:
            d = d * self.scale
        return d @ self.W_U


@dataclass
class TopTokens:
    """The strongest positive and negative DLA tokens of each feature (strongest first)."""

    positive_ids: Tensor  # [n, k]
    positive_values: Tensor
    negative_ids: Tensor
    negative_values: Tensor


@torch.no_grad()
def top_dla_tokens(readout: DLAReadout, directions: Tensor, k: int) -> TopTokens:
    """Top-``k`` positive and negative tokens of each direction (k is capped at the vocabulary size)."""
    logits = readout.logits(directions).float()
    k = min(k, logits.shape[-1])
    pos = logits.topk(k, dim=-1)
    neg = (-logits).topk(k, dim=-1)
    return TopTokens(pos.indices.cpu(), pos.values.cpu(), neg.indices.cpu(), (-neg.values).cpu())
