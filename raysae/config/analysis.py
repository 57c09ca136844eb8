"""Settings of the feature-analysis job (`raysae analyze`): statistics, examples, DLA and where results go."""

from __future__ import annotations

from pydantic import Field, model_validator

from raysae.config.base import StrictModel
from raysae.config.data import ActivationsConfig
from raysae.config.store import StoreConfig


class AnalysisConfig(StrictModel):
    """What `raysae analyze` computes for every feature of a dictionary, over which corpus."""

    activations: ActivationsConfig = Field(default_factory=ActivationsConfig)
    """Model, text source, tokenisation, token budget (total_tokens) and Ray resources. Its hooks are
    replaced by the dictionary's input hooks; batch_windows is the model's forward batch, and
    forward_passes_per_task of them make one Ray task's partial statistics (more: fewer, larger partials
    for the driver to merge)."""
    top_k_examples: int = Field(20, gt=0)
    """Top-activating examples kept per feature: the windows with the largest maximum activation of the
    feature, strongest first (ties: smaller window id first)."""
    quantiles: int = Field(5, ge=1)
    """Activation-quantile groups of sampled examples per feature (for autointerp)."""
    examples_per_quantile: int = Field(5, ge=0)
    """Sampled examples per quantile group; 0 turns quantile sampling off."""
    sample_seed: int = 0
    """Seed of the hash that picks the uniformly sampled activating windows (the same for any sharding)."""
    histogram_bins: int = Field(48, gt=0)
    """Log-spaced bins of the per-feature activation histogram."""
    histogram_min: float = Field(1e-3, gt=0)
    """Lower edge of the histogram; firing activations below it count in the first bin."""
    histogram_max: float = Field(1e3, gt=0)
    """Upper edge of the histogram; activations at or above it count in the last bin."""
    dla_tokens: int = Field(10, gt=0)
    """Tokens kept per feature in dla_positive and dla_negative (the strongest direct logit attribution)."""
    dla_chunk_features: int = Field(512, gt=0)
    """Features whose DLA is computed in one matrix product with the unembedding ([chunk, vocab] floats)."""
    write_batch_features: int = Field(256, gt=0)
    """Feature documents built and upserted together; results reach MongoDB batch by batch."""
    dictionary_device: str = "auto"
    """Device of the dictionary in every replica ("auto": the model's device)."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """The MongoDB store; uri and db default to MONGO_URI and MONGO_DB."""
    dictionary_id: str | None = None
    """Id of the dictionary in the store; None uses the checkpoint folder's name."""
    analysis_id: str | None = None
    """Id of this run's `analyses` record; None derives it from the dictionary's weights and these
    settings, so re-running the same analysis replaces the same record."""

    @model_validator(mode="after")
    def _check_histogram(self) -> AnalysisConfig:
        if self.histogram_max <= self.histogram_min:
            raise ValueError(
                f"histogram_max ({self.histogram_max:g}) must exceed histogram_min ({self.histogram_min:g})"
            )
        return self

    @property
    def samples_per_feature(self) -> int:
        """Size of the uniform sample of activating windows kept per feature."""
        return self.quantiles * self.examples_per_quantile

    @property
    def windows_per_task(self) -> int:
        """Windows in one Ray task's input batch."""
        return self.activations.forward_passes_per_task * self.activations.batch_windows
