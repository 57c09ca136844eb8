"""Synthetic activations from a known sparse dictionary: ground truth for recovery tests and demos."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SparseGroundTruth:
    """``n_features`` random unit directions in ``d_model`` dims; each sample is a non-negative sum of
    about ``active_per_sample`` of them (Bernoulli firing, magnitudes uniform in [0.5, 1.5]) plus noise."""

    d_model: int = 64
    n_features: int = 256
    active_per_sample: float = 4.0
    noise_std: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        features = torch.randn(self.n_features, self.d_model, generator=g)
        self.features: Tensor = features / features.norm(dim=-1, keepdim=True)
        self._gen = g

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` activation vectors ``[n, d_model]``."""
        g = generator or self._gen
        p = self.active_per_sample / self.n_features
        active = torch.rand(n, self.n_features, generator=g) < p
        magnitudes = 0.5 + torch.rand(n, self.n_features, generator=g)
        codes = active * magnitudes
        noise = self.noise_std * torch.randn(n, self.d_model, generator=g)
        return codes @ self.features + noise

    def batches(self, batch_size: int, n_batches: int, seed: int = 1) -> Iterator[Tensor]:
        """A deterministic stream of batches (the same ``seed`` gives the same stream)."""
        g = torch.Generator().manual_seed(seed)
        for _ in range(n_batches):
            yield self.sample(batch_size, g)

    def recovery(self, decoder: Tensor) -> Tensor:
        """For each true feature, the max cosine similarity with any decoder row ``[d_sae, d_model]``."""
        rows = decoder / decoder.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return (self.features @ rows.T).max(dim=-1).values
