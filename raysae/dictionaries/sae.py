"""The sparse autoencoder and the transcoder (an SAE whose label is another hook), optional GLU encoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raysae.config import SAEConfig
from raysae.dictionaries.base import LATENT, Batch, LossOutput, SparseDictionary, factory_kwargs
from raysae.dictionaries.registry import register
from raysae.dictionaries.sparse import Pattern, SparseLatents, dense_active, gather_active, sparse_decode

DENSE_AUX_MAX_RATIO = 8
"""AuxK runs dense over the dead latents when they are at most this many times k_aux, sparse over its
k_aux entries per row otherwise: dense products cost ∝ dead latents at ~140 GMAC/s, sparse ones ∝ k_aux
at ~10 GMAC/s (2 CPU cores; benchmarks/train_step.py)."""


@register
class SparseAutoencoder(SparseDictionary):
    """pre = (x − b_dec?) W_enc + b_enc [· σ(x W_glu + b_glu)]; z = act(pre); ŷ = z W_dec + b_dec."""

    architecture = "sae"
    aliases = ("transcoder",)

    def __init__(self, cfg: SAEConfig, device: str | torch.device | None = None):
        super().__init__(cfg, latent_shape=(cfg.latent_count,), scale_shape=())
        self.cfg: SAEConfig = cfg
        d, s = cfg.d_model, cfg.latent_count
        factory = factory_kwargs(cfg, device)
        self.W_enc = nn.Parameter(torch.empty(d, s, **factory))
        self.b_enc = nn.Parameter(torch.zeros(s, **factory))
        self.W_dec = nn.Parameter(torch.empty(s, d, **factory))
        self.b_dec = nn.Parameter(torch.zeros(d, **factory))
        if cfg.glu_encoder:
            self.W_glu = nn.Parameter(torch.empty(d, s, **factory))
            self.b_glu = nn.Parameter(torch.zeros(s, **factory))
        self.to(**factory)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-uniform decoder rows, encoder = decoderᵀ, zero biases."""
        nn.init.kaiming_uniform_(self.W_dec)
        self.tie_encoder_to_decoder_()
        if self.cfg.glu_encoder:
            nn.init.kaiming_uniform_(self.W_glu)

    @torch.no_grad()
    def tie_encoder_to_decoder_(self) -> None:
        self.W_enc.copy_(self.W_dec.T)

    @property
    def hooks_in(self) -> list[str]:
        return [self.cfg.hook_point_in]

    @property
    def hooks_out(self) -> list[str]:
        return [self.cfg.output_hook]

    @property
    def subtracts_b_dec(self) -> bool:
        """Only when input and label share a space: a transcoder's b_dec lives in output space."""
        return self.cfg.apply_decoder_bias_to_pre_encoder and self.hooks_in == self.hooks_out

    def encode_pre(self, x: Tensor) -> Tensor:
        x_in = x - self.b_dec if self.subtracts_b_dec else x
        pre = x_in @ self.W_enc + self.b_enc
        if self.cfg.glu_encoder:
            pre = pre * torch.sigmoid(x_in @ self.W_glu + self.b_glu)
        return pre

    def decode_scaled(self, z: Tensor) -> Tensor:
        return z @ self.W_dec + self.b_dec

    # ---- the sparse training path (raysae.dictionaries.sparse) ----------------------------------
    @property
    def supports_sparse_loss(self) -> bool:
        """TopK and BatchTopK without a GLU gate: the active set is known before any decoder work."""
        return self.cfg.act_fn in ("topk", "batchtopk") and not self.cfg.glu_encoder

    def compute_sparse_loss(
        self,
        batch: Batch,
        sparsity_coefficient: float | None = None,
        dead_mask: Tensor | None = None,
        aux_k: int | None = None,
        aux_k_coefficient: float = 0.0,
        encode_dtype: torch.dtype | None = None,
    ) -> LossOutput:
        """``compute_loss`` for TopK/BatchTopK with sparse decode and sparse gradients (same loss:
        MSE summed over features, mean over tokens, plus AuxK). ``encode_dtype`` (e.g. bfloat16) computes the
        encoder's dense product, hence the selection and the active pre-activations, in that precision;
        gradients and parameters stay in the parameters' dtype. The latents come back as
        ``sparse_latents`` (``feature_acts`` None), densified only when metrics read them. ``sparsity_coefficient`` is unused, as in the dense path for these activations."""
        if not self.supports_sparse_loss:
            raise ValueError(f"no sparse loss for act_fn={self.cfg.act_fn!r} (glu={self.cfg.glu_encoder})")
        x = self._scale(self.prepare_input(batch).to(self.input_scale.dtype), self.input_scale)
        y = self._scale(self.prepare_label(batch).to(self.output_scale.dtype), self.output_scale)
        b_sub = self.b_dec if self.subtracts_b_dec else None
        with torch.no_grad():
            x_in = x - b_sub if b_sub is not None else x
            if encode_dtype is None or encode_dtype == self.W_enc.dtype:
                pre = torch.addmm(self.b_enc, x_in, self.W_enc)
            else:  # the one dense product in low precision (bf16: AMX / tensor cores); the rest stays fp32
                pre = torch.addmm(
                    self.b_enc.to(encode_dtype), x_in.to(encode_dtype), self.W_enc.to(encode_dtype)
                )
        act = self.activation
        if self.cfg.act_fn == "topk":
            pattern = Pattern.topk(pre, act.k)
        else:
            pattern = Pattern.batch_topk(pre, min(act.k * pre.shape[0], pre.numel()))
        values = torch.relu(gather_active(x_in, self.W_enc, self.b_enc, b_sub, pre, pattern))
        if self.cfg.act_fn == "batchtopk":
            act._update_threshold(values.detach())  # type: ignore[attr-defined]
        y_hat = sparse_decode(values, self.W_dec, pattern) + self.b_dec
        mse = (y_hat - y).pow(2).sum(-1).mean()
        parts, loss = {"mse": mse}, mse
        if dead_mask is not None and aux_k_coefficient > 0:
            residual = y - y_hat.detach()
            aux = self._sparse_aux_k(x_in, b_sub, pre, residual, dead_mask, aux_k or self.d_model // 2)
            parts["aux_k"], loss = aux, loss + aux_k_coefficient * aux
        parts = {k: v.detach() for k, v in parts.items()}
        latents = SparseLatents(pattern, values.detach())
        return LossOutput(loss, parts, None, y_hat, y, sparse_latents=latents)

    def _sparse_aux_k(
        self, x_in: Tensor, b_sub: Tensor | None, pre: Tensor, residual: Tensor, dead_mask: Tensor, k_aux: int
    ) -> Tensor:
        """``aux_k_loss`` on the sparse path, over the dead latents' columns only: their top k_aux per
        row decode through their rows (sparse), or, when the dead latents are few, dense products over
        them with the others masked (``DENSE_AUX_MAX_RATIO``); same selection either way."""
        dead = dead_mask.nonzero().squeeze(1)
        n_dead = len(dead)
        if n_dead == 0:
            return pre.new_zeros(())
        k = min(k_aux, n_dead)
        pre_dead = pre.index_select(1, dead)
        W_enc, b_enc, W_dec = self.W_enc[:, dead], self.b_enc[dead], self.W_dec[dead]
        if n_dead <= DENSE_AUX_MAX_RATIO * k:
            top = pre_dead.topk(k, dim=-1, sorted=False).indices
            keep = torch.zeros_like(pre_dead, dtype=torch.bool).scatter_(1, top, True)
            z = torch.relu(dense_active(x_in, W_enc, b_enc, b_sub, pre_dead)) * keep
            linear = z @ W_dec
        else:
            pattern = Pattern.topk(pre_dead, k)
            linear = sparse_decode(
                torch.relu(gather_active(x_in, W_enc, b_enc, b_sub, pre_dead, pattern)), W_dec, pattern
            )
        return min(n_dead / k_aux, 1.0) * (linear - residual).pow(2).sum(-1).mean()

    def decoder_norms(self) -> Tensor:
        return self.W_dec.norm(dim=-1)

    @torch.no_grad()
    def scale_decoder_(self, factor: Tensor) -> None:
        self.W_dec.mul_(factor[:, None])

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        parallel = (self.W_dec.grad * unit).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * unit)

    @torch.no_grad()
    def write_directions(self, group: int, index: Tensor, n_layers: int | None = None) -> Tensor:
        """The decoder rows: the features write ``hook_point_out``."""
        self._check_group(group)
        return self.W_dec[index] / self.output_scale

    @torch.no_grad()
    def fold_scales_(self) -> None:
        s_in, s_out = self.input_scale, self.output_scale
        if self.subtracts_b_dec:
            # The encoder subtracts b_dec/s_out after folding but saw b_dec/s_in before: correct b_enc.
            r = 1 - s_in / s_out
            self.b_enc.sub_(r * (self.b_dec @ self.W_enc))
            if self.cfg.glu_encoder:
                self.b_glu.sub_(r * (self.b_dec @ self.W_glu))
        self.W_enc.mul_(s_in)
        if self.cfg.glu_encoder:
            self.W_glu.mul_(s_in)
        self.W_dec.div_(s_out)
        self.b_dec.div_(s_out)
        self.input_scale.fill_(1.0)
        self.output_scale.fill_(1.0)

    @classmethod
    def param_dims(cls) -> dict[str, tuple[str, ...]]:
        return {
            "W_enc": ("d_model", LATENT),
            "b_enc": (LATENT,),
            "W_glu": ("d_model", LATENT),
            "b_glu": (LATENT,),
            "W_dec": (LATENT, "d_model"),
            "b_dec": ("d_model",),
            "activation.log_threshold": (LATENT,),
            "activation.threshold": (),
            "input_scale": (),
            "output_scale": (),
        }
