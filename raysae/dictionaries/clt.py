"""Cross-layer transcoder (CLT): one encoder per layer, a decoder from layer i to every layer j >= i.

Layer l's latents read layer l's input hook: ``pre_l = x_l W_enc[l] + b_enc[l]`` (times
``σ(x_l W_glu[l] + b_glu[l])`` with a GLU encoder). Layer j's output is
``ŷ_j = Σ_{i≤j} z_i W_dec[i→j] + b_dec[j]``. No decoder bias is subtracted before encoding: the
input and output hooks live in different spaces.

Decoder storage: ``W_dec`` is an ``nn.ParameterList`` of L tensors; ``W_dec[i]`` (state-dict key
``W_dec.{i}``) has shape ``[d_sae, L - i, d_model]`` and holds every decoder of source layer i, so
``W_dec[i][:, j - i]`` is the ``[d_sae, d_model]`` decoder i→j (``decoder(i, j)`` returns that view).
Keeping one latent's decoders in one tensor makes its norm, rescaling and gradient projection a single
reduction, and shards the latent dim of all its decoders alike. ``param_dims()`` describes every
``W_dec.{i}`` under the key ``W_dec``: list indices (``.0``, ``.1``…) are dropped from names to look
them up.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raysae.config import CLTConfig
from raysae.dictionaries.base import LATENT, factory_kwargs
from raysae.dictionaries.registry import register
from raysae.dictionaries.stacked import StackedEncoders


@register
class CrossLayerTranscoder(StackedEncoders):
    """L per-layer encoders; decoders i→j for j ≥ i; latents ``[batch, L, d_sae]``."""

    architecture = "clt"

    def __init__(self, cfg: CLTConfig, device: str | torch.device | None = None):
        n, s, d = cfg.n_layers, cfg.latent_count, cfg.d_model
        super().__init__(cfg, latent_shape=(n, s), scale_shape=(n,))
        self.cfg: CLTConfig = cfg
        self.n_layers = n
        factory = factory_kwargs(cfg, device)
        self._add_encoders(n, (n, s), factory)
        self.W_dec = nn.ParameterList([nn.Parameter(torch.empty(s, n - i, d, **factory)) for i in range(n)])
        self.b_dec = nn.Parameter(torch.zeros(n, d, **factory))
        self._add_glu(n, (n, s), factory)
        self.to(**factory)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-uniform rows for every decoder i→j, W_enc[l] = W_dec[l→l]ᵀ, zero biases."""
        self._zero_biases_()
        for w in self.W_dec:
            for k in range(w.shape[1]):
                nn.init.kaiming_uniform_(w[:, k])
        self.tie_encoder_to_decoder_()
        if self.cfg.glu_encoder:
            for layer in range(self.n_layers):
                nn.init.kaiming_uniform_(self.W_glu[layer])

    @torch.no_grad()
    def tie_encoder_to_decoder_(self) -> None:
        """W_enc[l] = W_dec[l→l]ᵀ: each layer's encoder is its own-layer decoder, transposed."""
        for layer in range(self.n_layers):
            self.W_enc[layer].copy_(self.decoder(layer, layer).T)

    def decoder(self, i: int, j: int) -> Tensor:
        """The decoder from source layer ``i`` to target layer ``j >= i``: a ``[d_sae, d_model]`` view."""
        if not 0 <= i <= j < self.n_layers:
            raise IndexError(f"no decoder {i}->{j}: need 0 <= i <= j < {self.n_layers}")
        return self.W_dec[i][:, j - i]

    @property
    def hooks_in(self) -> list[str]:
        return list(self.cfg.hook_points_in)

    @property
    def hooks_out(self) -> list[str]:
        return list(self.cfg.hook_points_out)

    @property
    def n_groups(self) -> int:
        """One latent group per layer."""
        return self.n_layers

    def group_layer(self, group: int) -> int | None:
        self._check_group(group)
        return group

    def encode_pre(self, x: Tensor) -> Tensor:
        pre = torch.einsum("...ld,lds->...ls", x, self.W_enc) + self.b_enc
        if self.cfg.glu_encoder:
            pre = pre * torch.sigmoid(torch.einsum("...ld,lds->...ls", x, self.W_glu) + self.b_glu)
        return pre

    def decode_scaled(self, z: Tensor) -> Tensor:
        # One GEMM per source layer i: [.., d_sae] x [d_sae, (L - i) * d_model].
        parts = [torch.einsum("...s,sjd->...jd", z[..., i, :], w) for i, w in enumerate(self.W_dec)]
        outs = [sum(parts[i][..., j - i, :] for i in range(j + 1)) for j in range(self.n_layers)]
        return torch.stack(outs, dim=-2) + self.b_dec  # type: ignore[arg-type]

    def decoder_norms(self) -> Tensor:
        """Norm of the concatenation of each latent's decoders to all layers j ≥ i: ``[L, d_sae]``."""
        return torch.stack([torch.linalg.vector_norm(w, dim=(-2, -1)) for w in self.W_dec])

    @torch.no_grad()
    def scale_decoder_(self, factor: Tensor) -> None:
        for i, w in enumerate(self.W_dec):
            w.mul_(factor[i][:, None, None])

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Per latent, over its concatenated decoders: remove the gradient parallel to them."""
        for w in self.W_dec:
            if w.grad is None:
                continue
            unit = w / torch.linalg.vector_norm(w, dim=(-2, -1), keepdim=True).clamp(min=1e-12)
            parallel = (w.grad * unit).sum(dim=(-2, -1), keepdim=True)
            w.grad.sub_(parallel * unit)

    @torch.no_grad()
    def write_directions(self, group: int, index: Tensor, n_layers: int | None = None) -> Tensor:
        """The sum of the features' decoders to every layer j >= ``group``: each layer's output is
        added to the residual stream."""
        self._check_group(group)
        s_out = self.output_scale
        parts = [self.decoder(group, j)[index] / s_out[j] for j in range(group, self.n_layers)]
        return torch.stack(parts).sum(0)

    @torch.no_grad()
    def fold_scales_(self) -> None:
        s_out = self.output_scale
        self._fold_input_scales_()
        for i, w in enumerate(self.W_dec):
            w.div_(s_out[i:, None])  # slice [:, j - i] is divided by s_out[j]
        self.b_dec.div_(s_out[:, None])
        self.output_scale.fill_(1.0)

    @classmethod
    def param_dims(cls) -> dict[str, tuple[str, ...]]:
        """Named dims; ``W_dec`` stands for every ``W_dec.{i}`` (``to_layer`` has size L - i)."""
        return {
            "W_enc": ("layer", "d_model", LATENT),
            "b_enc": ("layer", LATENT),
            "W_glu": ("layer", "d_model", LATENT),
            "b_glu": ("layer", LATENT),
            "W_dec": (LATENT, "to_layer", "d_model"),
            "b_dec": ("layer", "d_model"),
            "activation.log_threshold": ("layer", LATENT),
            "activation.threshold": ("layer",),
            "input_scale": ("layer",),
            "output_scale": ("layer",),
        }
