"""CrossCoder: H heads (hook points, layers, checkpoints or models) share one latent space.

``pre = Σ_h x_h W_enc[h] + b_enc`` (times ``σ(Σ_h x_h W_glu[h] + b_glu)`` with a GLU encoder);
head h's reconstruction is ``ŷ_h = z W_dec[h] + b_dec[h]``. A latent's decoder norm is the *sum* of
its per-head decoder norms (the L1-of-norms weighting of Anthropic's crosscoders), so the sparsity
term favours latents that write to few heads.

Decoder-norm constraint: ``scale_decoder_`` scales every head alike, so ``set_decoder_norm_(c)`` makes
each latent's summed head norm ``c``. ``project_decoder_grad_`` projects each latent's gradient onto the
tangent of that constraint: it removes the component along ``n = (W_dec[h, s] / ||W_dec[h, s]||)_h``,
the gradient of ``Σ_h ||W_dec[h, s]||``. The summed norm is then constant to first order while norm
can still move between heads (a head-specific latent may shrink its other heads to zero).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raysae.config import CrossCoderConfig
from raysae.dictionaries.base import LATENT, factory_kwargs
from raysae.dictionaries.registry import register
from raysae.dictionaries.stacked import StackedEncoders
from raysae.lm.hooks import parse_hook


@register
class CrossCoder(StackedEncoders):
    """Per-head encoders summed into one latent space; per-head decoders; latents ``[batch, d_sae]``."""

    architecture = "crosscoder"

    def __init__(self, cfg: CrossCoderConfig, device: str | torch.device | None = None):
        h, s, d = cfg.n_heads, cfg.latent_count, cfg.d_model
        super().__init__(cfg, latent_shape=(s,), scale_shape=(h,))
        self.cfg: CrossCoderConfig = cfg
        self.n_heads = h
        factory = factory_kwargs(cfg, device)
        self._add_encoders(h, (s,), factory)
        self.W_dec = nn.Parameter(torch.empty(h, s, d, **factory))
        self.b_dec = nn.Parameter(torch.zeros(h, d, **factory))
        self._add_glu(h, (s,), factory)
        self.to(**factory)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-uniform decoder rows per head, W_enc[h] = W_dec[h]ᵀ, zero biases."""
        self._zero_biases_()
        for head in range(self.n_heads):
            nn.init.kaiming_uniform_(self.W_dec[head])
            if self.cfg.glu_encoder:
                nn.init.kaiming_uniform_(self.W_glu[head])
        self.tie_encoder_to_decoder_()

    @torch.no_grad()
    def tie_encoder_to_decoder_(self) -> None:
        """W_enc[h] = W_dec[h]ᵀ for every head."""
        self.W_enc.copy_(self.W_dec.transpose(1, 2))

    @property
    def hooks_in(self) -> list[str]:
        return list(self.cfg.hook_points)

    @property
    def hooks_out(self) -> list[str]:
        return list(self.cfg.hook_points)

    def group_hook(self, group: int) -> str:
        """Every head's hook, joined with "+": the heads share one latent space."""
        self._check_group(group)
        return "+".join(self.hooks_in)

    def encode_pre(self, x: Tensor) -> Tensor:
        pre = torch.einsum("...hd,hds->...s", x, self.W_enc) + self.b_enc
        if self.cfg.glu_encoder:
            pre = pre * torch.sigmoid(torch.einsum("...hd,hds->...s", x, self.W_glu) + self.b_glu)
        return pre

    def decode_scaled(self, z: Tensor) -> Tensor:
        return torch.einsum("...s,hsd->...hd", z, self.W_dec) + self.b_dec

    def decoder_norms(self) -> Tensor:
        """Σ_h ||W_dec[h, s]|| per latent: ``[d_sae]``."""
        return torch.linalg.vector_norm(self.W_dec, dim=-1).sum(0)

    @torch.no_grad()
    def scale_decoder_(self, factor: Tensor) -> None:
        self.W_dec.mul_(factor[None, :, None])

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove the gradient component that changes Σ_h ||W_dec[h, s]|| (see the module docstring)."""
        grad = self.W_dec.grad
        if grad is None:
            return
        n = self.W_dec / torch.linalg.vector_norm(self.W_dec, dim=-1, keepdim=True).clamp(min=1e-12)
        n_sq = n.pow(2).sum(dim=(0, 2), keepdim=True)  # number of non-zero heads of each latent
        along = (grad * n).sum(dim=(0, 2), keepdim=True) / n_sq.clamp(min=1e-12)
        grad.sub_(along * n)

    @torch.no_grad()
    def write_directions(self, group: int, index: Tensor, n_layers: int | None = None) -> Tensor:
        """The decoder of the head whose hook comes last in the forward pass (nearest the unembedding)."""
        self._check_group(group)
        hooks = self.hooks_in
        head = max(range(len(hooks)), key=lambda h: parse_hook(hooks[h], n_layers).order)
        return self.W_dec[head][index] / self.output_scale[head]

    @torch.no_grad()
    def fold_scales_(self) -> None:
        s_out = self.output_scale
        self._fold_input_scales_()
        self.W_dec.div_(s_out[:, None, None])
        self.b_dec.div_(s_out[:, None])
        self.output_scale.fill_(1.0)

    @classmethod
    def param_dims(cls) -> dict[str, tuple[str, ...]]:
        return {
            "W_enc": ("head", "d_model", LATENT),
            "b_enc": (LATENT,),
            "W_glu": ("head", "d_model", LATENT),
            "b_glu": (LATENT,),
            "W_dec": ("head", LATENT, "d_model"),
            "b_dec": ("head", "d_model"),
            "activation.log_threshold": (LATENT,),
            "activation.threshold": (),
            "input_scale": ("head",),
            "output_scale": ("head",),
        }
