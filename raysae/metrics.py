"""Metric definitions, in one place, following SAELens / SAEBench conventions. Pure torch, no Ray.

Conventions:
- ``mse``: mean over tokens and features of the squared error (SAEBench's ``mse``).
- ``explained_variance``: 1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖², sums over tokens and features, ȳ the mean
  label over the tokens: variance relative to the mean, as SAELens and SAEBench compute it.
  ``fvu`` is 1 − explained_variance.
- ``l0``: mean number of non-zero latents per token (per group for CLT layers).
- dead: a latent that never fired in the window; dense: one firing on more than a fraction of tokens.
- ``ce_loss_recovered``: (CE_zero − CE_recon) / (CE_zero − CE_clean); ``kl_recovered``: 1 − KL_recon / KL_zero.

Inputs with a group dim (``[tokens, groups, d]`` for CLT layers / CrossCoder heads) can be reduced per
group with ``per_group=True``, giving one value per layer or head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def _token_dims(y: Tensor, per_group: bool) -> tuple[int, ...]:
    """Dims summed as 'features': the last one, plus the group dim unless per_group."""
    if per_group:
        if y.dim() != 3:
            raise ValueError(f"per_group needs [tokens, groups, d] activations, got shape {tuple(y.shape)}")
        return (-1,)
    return tuple(range(1, y.dim()))


def mse(y: Tensor, y_hat: Tensor, per_group: bool = False) -> Tensor:
    """Mean squared error per element."""
    err = (y_hat - y).double().pow(2)
    return err.mean(dim=(0, -1)) if per_group else err.mean()


def explained_variance(y: Tensor, y_hat: Tensor, per_group: bool = False) -> Tensor:
    """1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖² over tokens (and features)."""
    stats = ReconstructionStats(per_group=per_group)
    stats.update(y, y_hat)
    return stats.explained_variance


def fvu(y: Tensor, y_hat: Tensor, per_group: bool = False) -> Tensor:
    """Fraction of variance unexplained, 1 − explained variance."""
    return 1 - explained_variance(y, y_hat, per_group)


def active_latents(z: Tensor) -> Tensor:
    """Count of non-zero latents of each token, shape ``z.shape[:-1]`` (for sums over many batches)."""
    return (z != 0).double().sum(-1)


def l0(z: Tensor) -> Tensor:
    """Mean count of non-zero latents per token; shape ``z.shape[1:-1]`` (scalar for an SAE)."""
    return active_latents(z).mean(0)


def firing_counts(z: Tensor) -> Tensor:
    """How many tokens each latent fired on, shape ``z.shape[1:]``."""
    return (z != 0).long().sum(0)


def dead_fraction(counts: Tensor) -> float:
    """Fraction of latents that never fired in the window ``counts`` was collected over."""
    return float((counts == 0).double().mean())


def dense_fraction(counts: Tensor, n_tokens: int, threshold: float = 0.1) -> float:
    """Fraction of latents firing on more than ``threshold`` of the ``n_tokens`` tokens."""
    return float((counts.double() / n_tokens > threshold).double().mean())


def feature_density_histogram(
    counts: Tensor, n_tokens: int, bins: int = 50, log10_min: float = -10.0
) -> tuple[Tensor, Tensor]:
    """Histogram of log10 firing densities (SAELens' 'feature density' plot); dead latents go in the
    lowest bin at ``log10_min``. Returns (bin counts, bin edges)."""
    density = counts.double().flatten() / n_tokens
    log_density = torch.where(
        density > 0, density.clamp(min=1e-300).log10(), torch.full_like(density, log10_min)
    )
    edges = torch.linspace(log10_min, 0.0, bins + 1, dtype=torch.float64)
    hist = torch.histc(log_density.clamp(log10_min, 0.0), bins=bins, min=log10_min, max=0.0)
    return hist.long(), edges


def ce_loss_recovered(ce_clean: float, ce_reconstructed: float, ce_zero_ablated: float) -> float:
    """(CE_zero − CE_recon) / (CE_zero − CE_clean): 1 is perfect, 0 as bad as zero-ablation."""
    denom = ce_zero_ablated - ce_clean
    if abs(denom) < 1e-12:
        return math.nan
    return (ce_zero_ablated - ce_reconstructed) / denom


def kl_recovered(kl_reconstructed: float, kl_zero_ablated: float) -> float:
    """1 − KL(clean‖recon) / KL(clean‖zero) (SAEBench's kl_div_score)."""
    if abs(kl_zero_ablated) < 1e-12:
        return math.nan
    return 1 - kl_reconstructed / kl_zero_ablated


def log_probs(logits: Tensor) -> Tensor:
    """Next-token log-probabilities from logits ``[..., vocab]`` (float32 at least: the rounding of a
    log-probability, ~1e-7 of its size, stays far below the KL and CE differences being measured)."""
    return torch.log_softmax(
        logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1
    )


def kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-token KL(p ‖ q) from log-probabilities ``[..., vocab]``, summed in float64."""
    return (log_p.exp() * (log_p - log_q)).sum(-1, dtype=torch.float64)


def kl_divergence(logits_clean: Tensor, logits_other: Tensor) -> Tensor:
    """Per-token KL(p_clean ‖ p_other) from logits ``[..., vocab]``."""
    return kl_from_log_probs(log_probs(logits_clean), log_probs(logits_other))


CHUNK_BYTES = {"cpu": 1 << 22}
"""Bytes of one run's logits that ``next_token_ce_kl`` handles at a time, by device type: on a CPU a
few rows, which stay in cache through the passes over them; elsewhere (default 64 MiB) fewer, larger
kernels matter more."""


def next_token_ce_kl(
    logits: Sequence[Tensor], tokens: Tensor, ce_mask: Tensor, kl_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Summed next-token CE of each run and summed KL(run 0 ‖ run j) of the others, float64 ``([k],
    [k-1])``, from each run's logits ``[B, T, vocab]``; the masks ``[B, T-1]`` say which predictions of
    ``tokens[:, 1:]`` count in each sum.

    The numbers of ``log_probs`` then ``kl_from_log_probs`` without a ``[rows, vocab]`` log-softmax
    per run (its memory passes were most of the metric's time): per run and a few rows at a time,
    z = logit − max, e = exp(z), s = Σ e summed in float64; CE = log s − z[target] and KL(0 ‖ j) =
    Σ e_0·(z_0 − z_j) / s_0 + log s_j − log s_0, with e_0 from run 0's pass. No term is of the size of
    the logits (a shift of all logits cancels in z), so a KL is off by ~1e-8 of itself plus ~1e-9
    nats per token (float32 ``exp`` rounding), where float32 log-probabilities carry ~1e-6.
    """
    n, t = tokens.shape
    vocab = logits[0].shape[-1]
    flat = [lg.reshape(n * t, vocab) for lg in logits]  # views; a window's last row is weighed 0
    target = torch.cat([tokens.reshape(-1)[1:], tokens.new_zeros(1)])[:, None]
    w_ce, w_kl = (torch.nn.functional.pad(m.double(), (0, 1)).reshape(-1) for m in (ce_mask, kl_mask))
    step = max(1, CHUNK_BYTES.get(tokens.device.type, 1 << 26) // (vocab * 4))
    ce = torch.zeros(len(logits), dtype=torch.float64, device=tokens.device)
    kl = torch.zeros(len(logits) - 1, dtype=torch.float64, device=tokens.device)
    for lo in range(0, n * t, step):
        rows = slice(lo, lo + step)
        for j, lg in enumerate(flat):
            x = lg[rows].float()
            z = x - x.amax(-1, keepdim=True)  # log-probability + log s
            e = z.exp()
            s = e.sum(-1, dtype=torch.float64)
            log_s = s.log()
            ce[j] += ((log_s - z.gather(-1, target[rows]).squeeze(-1)) * w_ce[rows]).sum()
            if j == 0:
                z0, e0, s0, log_s0 = z, e, s, log_s
                continue
            dot = torch.sub(z0, z, out=e).mul_(e0).sum(-1).double()  # e is spent: reuse it
            kl[j - 1] += ((dot / s0 + log_s - log_s0) * w_kl[rows]).sum()
    return ce, kl


@dataclass
class ReconstructionStats:
    """Streaming sums for exact dataset-level MSE and explained variance over many batches (float64)."""

    per_group: bool = False
    n: int = 0
    sum_y: Tensor | None = None
    sum_y2: Tensor | None = None
    sum_err2: Tensor | None = None
    n_elements_per_token: int = 0

    def update(self, y: Tensor, y_hat: Tensor) -> None:
        dims = _token_dims(y, self.per_group)
        y64, e64 = y.detach().double(), (y_hat.detach() - y.detach()).double()
        sum_y = y64.sum(0)
        sum_y2 = y64.pow(2).sum(dim=(0, *dims))
        sum_err2 = e64.pow(2).sum(dim=(0, *dims))
        if self.sum_y is None:
            self.sum_y, self.sum_y2, self.sum_err2 = sum_y, sum_y2, sum_err2
            self.n_elements_per_token = y.shape[-1] if self.per_group else y[0].numel()
        else:
            self.sum_y += sum_y
            self.sum_y2 += sum_y2
            self.sum_err2 += sum_err2
        self.n += y.shape[0]

    @property
    def total_variance(self) -> Tensor:
        """Σ‖y − ȳ‖² = Σ‖y‖² − n‖ȳ‖²."""
        assert self.sum_y is not None, "no data"
        mean = self.sum_y / self.n
        sq_mean = mean.pow(2).sum(-1) if self.per_group else mean.pow(2).sum()
        return self.sum_y2 - self.n * sq_mean

    @property
    def explained_variance(self) -> Tensor:
        return 1 - self.sum_err2 / self.total_variance

    @property
    def mse(self) -> Tensor:
        return self.sum_err2 / (self.n * self.n_elements_per_token)
