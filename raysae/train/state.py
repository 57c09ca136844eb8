"""What, besides parameters and optimiser, a resumed run must restore (shared by both checkpoint kinds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class TrainState:
    """Step and token counters, the dead-latent counter and the metrics history of a run."""

    tokens_since_fired: Tensor
    step: int = 0
    tokens_seen: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def fresh(cls, latent_shape: tuple[int, ...], device: torch.device | str) -> TrainState:
        """The state of a run that has not trained yet."""
        return cls(torch.zeros(latent_shape, dtype=torch.long, device=device))

    def to_blob(self) -> dict[str, Any]:
        """Plain, CPU-only contents for ``torch.save``."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "tokens_since_fired": self.tokens_since_fired.cpu(),
            "history": self.history,
        }

    @classmethod
    def from_blob(cls, blob: dict[str, Any], device: torch.device | str = "cpu") -> TrainState:
        """The inverse of ``to_blob`` (extra keys, such as an optimiser state, are ignored)."""
        return cls(blob["tokens_since_fired"].to(device), blob["step"], blob["tokens_seen"], blob["history"])
