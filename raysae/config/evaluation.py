"""Settings of the evaluation of a trained dictionary on held-out text."""

from __future__ import annotations

from pydantic import Field

from raysae.config.base import StrictModel
from raysae.config.data import ActivationsConfig, TokensConfig


def _held_out() -> ActivationsConfig:
    return ActivationsConfig(tokens=TokensConfig(split="eval"), total_tokens=8192, batch_windows=4)


class EvalConfig(StrictModel):
    """Evaluate a dictionary: reconstruction, sparsity, and (SAE/transcoder) CE and KL loss recovered."""

    activations: ActivationsConfig = Field(default_factory=_held_out)
    """Model and text to evaluate on; by default the held-out split of the bundled corpus, 8192 tokens.
    Its hooks are set from the dictionary."""
    ce_loss: bool = True
    """Splice the reconstruction into the forward pass and measure CE/KL loss recovered (SAE and
    transcoder; needs full forward passes, about three per batch)."""
    dense_threshold: float = Field(0.1, gt=0, le=1)
    """A latent firing on more than this fraction of tokens counts as dense."""
