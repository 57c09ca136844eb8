"""Per-input encoders stacked along a leading dim, shared by the dictionaries that read several hooks.

A CLT has one encoder per layer, a CrossCoder one per head: both hold ``W_enc [n, d_model, d_sae]``
(and, with a GLU encoder, ``W_glu`` of the same shape), scaled per input by ``input_scale [n]``. What
differs, the bias shape and how the encoders combine, stays on the classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raysae.dictionaries.base import SparseDictionary


class StackedEncoders(SparseDictionary):
    """Mixin base: ``_add_encoders`` creates the stacked encoder parameters; the helpers below zero
    every bias and fold the input scales into them."""

    def _add_encoders(self, n: int, bias_shape: tuple[int, ...], factory: dict[str, Any]) -> None:
        d, s = self.cfg.d_model, self.cfg.latent_count
        self.W_enc = nn.Parameter(torch.empty(n, d, s, **factory))
        self.b_enc = nn.Parameter(torch.zeros(*bias_shape, **factory))

    def _add_glu(self, n: int, bias_shape: tuple[int, ...], factory: dict[str, Any]) -> None:
        if self.cfg.glu_encoder:
            d, s = self.cfg.d_model, self.cfg.latent_count
            self.W_glu = nn.Parameter(torch.empty(n, d, s, **factory))
            self.b_glu = nn.Parameter(torch.zeros(*bias_shape, **factory))

    @torch.no_grad()
    def _zero_biases_(self) -> None:
        for bias in (self.b_enc, self.b_dec, getattr(self, "b_glu", None)):
            if bias is not None:
                bias.zero_()

    @torch.no_grad()
    def _fold_input_scales_(self) -> None:
        """W_enc[i] (and W_glu[i]) times input_scale[i]: the encoders then read raw activations."""
        s_in = self.input_scale
        self.W_enc.mul_(s_in[:, None, None])
        if self.cfg.glu_encoder:
            self.W_glu.mul_(s_in[:, None, None])
        self.input_scale.fill_(1.0)
