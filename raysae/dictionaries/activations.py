"""Activation functions of sparse dictionaries: ReLU, TopK, BatchTopK and JumpReLU.

Each maps pre-activations of shape ``[batch, *groups, d_sae]`` to latent activations of the same
shape; selection always runs over the last (latent) dimension, per group (per CLT layer). TopK and
BatchTopK mask by the k-th largest value rather than scattering, so a latent-sharded caller only needs
the k-th value, never the full pre-activations (see ``kth_value``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from raysae.config import DictionaryConfig

KthValueFn = Callable[[Tensor, int], Tensor]


def local_kth_value(x: Tensor, k: int) -> Tensor:
    """The k-th largest value along the last dim, keepdim (the unsharded reference)."""
    return x.topk(k, dim=-1, sorted=False).values.min(dim=-1, keepdim=True).values


class _RectangleJumpReLU(torch.autograd.Function):
    """z = x * H(x - θ); dz/dθ uses a rectangle kernel of width ε (Rajamanoharan et al., 2024)."""

    @staticmethod
    def forward(ctx, x: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return x * (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_x = grad * (x > threshold).to(x.dtype)
        kernel = ((x - threshold).abs() < eps / 2).to(x.dtype) / eps
        grad_t = -(threshold * kernel * grad)
        grad_t = grad_t.reshape(-1, *threshold.shape).sum(0)
        return grad_x, grad_t, None


class _RectangleStep(torch.autograd.Function):
    """H(x - θ) with the straight-through estimator dH/dθ = -K((x-θ)/ε)/ε; no gradient to x."""

    @staticmethod
    def forward(ctx, x: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((x - threshold).abs() < eps / 2).to(x.dtype) / eps
        grad_t = -(kernel * grad).reshape(-1, *threshold.shape).sum(0)
        return torch.zeros_like(x), grad_t, None


class Activation(nn.Module):
    """Base: ``forward(pre) -> z``; ``kth_value`` may be replaced by a latent-sharded version."""

    def __init__(self) -> None:
        super().__init__()
        self.kth_value: KthValueFn = local_kth_value

    def l0_surrogate(self, pre: Tensor) -> Tensor:
        """A differentiable count of active latents (only JumpReLU has one)."""
        raise NotImplementedError(f"{type(self).__name__} has no l0 surrogate; use l1 or tanh")


class ReLU(Activation):
    def forward(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)


class TopK(Activation):
    """Keep the k largest pre-activations per token (and group), then ReLU."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, pre: Tensor) -> Tensor:
        kth = self.kth_value(pre, self.k)
        return torch.relu(pre) * (pre >= kth).to(pre.dtype)


class BatchTopK(Activation):
    """Keep the k·batch largest pre-activations over the whole batch (per group) in training; at
    inference, a JumpReLU with the threshold estimated in training (Bussmann et al., 2024)."""

    def __init__(self, k: int, group_shape: tuple[int, ...], momentum: float) -> None:
        super().__init__()
        self.k = k
        self.momentum = momentum
        # -1 means "not estimated yet": the first training batch sets it directly.
        self.register_buffer("threshold", torch.full(group_shape, -1.0))

    def forward(self, pre: Tensor) -> Tensor:
        if not self.training:
            return pre * (pre > self.threshold.clamp(min=0)[..., None]).to(pre.dtype)
        batch = pre.shape[0]
        flat = pre.movedim(0, -2).flatten(-2)  # [*groups, batch * d_sae]
        kth = self.kth_value(flat, min(self.k * batch, flat.shape[-1]))
        z_flat = torch.relu(flat) * (flat >= kth).to(flat.dtype)
        self._update_threshold(z_flat.detach())
        return z_flat.unflatten(-1, (batch, pre.shape[-1])).movedim(-2, 0)

    @torch.no_grad()
    def _update_threshold(self, z_flat: Tensor) -> None:
        positive = torch.where(z_flat > 0, z_flat, torch.full_like(z_flat, float("inf")))
        # amin: a latent-sharded DTensor all-reduces, min gathers
        self.move_threshold_(self.threshold, positive.amin(dim=-1))

    @torch.no_grad()
    def move_threshold_(self, threshold: Tensor, smallest: Tensor) -> None:
        """Move ``threshold`` (this buffer, or its local tensor on the sharded sparse path, which
        reduces ``smallest`` itself) toward the batch's smallest active value per group; ``inf``
        (nothing fired) keeps it, and a fresh (-1) threshold takes the value directly."""
        smallest = torch.where(torch.isinf(smallest), threshold, smallest)
        fresh = threshold < 0
        mixed = self.momentum * threshold + (1 - self.momentum) * smallest
        threshold.copy_(torch.where(fresh, smallest, mixed))


class JumpReLU(Activation):
    """z = pre · H(pre − θ) with a learned per-latent threshold θ = exp(log_threshold)."""

    def __init__(self, latent_shape: tuple[int, ...], threshold_init: float, bandwidth: float) -> None:
        super().__init__()
        self.bandwidth = bandwidth
        self.log_threshold = nn.Parameter(torch.full(latent_shape, float(torch.tensor(threshold_init).log())))

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def forward(self, pre: Tensor) -> Tensor:
        return _RectangleJumpReLU.apply(pre, self.threshold, self.bandwidth)

    def l0_surrogate(self, pre: Tensor) -> Tensor:
        return _RectangleStep.apply(pre, self.threshold, self.bandwidth)


def build_activation(cfg: DictionaryConfig, latent_shape: tuple[int, ...]) -> Activation:
    """The activation module for ``cfg.act_fn``; ``latent_shape`` is ``(*groups, d_sae)``."""
    if cfg.act_fn == "relu":
        return ReLU()
    if cfg.act_fn == "topk":
        return TopK(cfg.top_k)
    if cfg.act_fn == "batchtopk":
        return BatchTopK(cfg.top_k, latent_shape[:-1], cfg.batchtopk_threshold_momentum)
    if cfg.act_fn == "jumprelu":
        return JumpReLU(latent_shape, cfg.jumprelu_threshold_init, cfg.jumprelu_bandwidth)
    raise ValueError(f"unknown act_fn {cfg.act_fn!r}")
