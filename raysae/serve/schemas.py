"""Request and response models of the HTTP API (they make up the published OpenAPI schema).

Response models accept extra fields, so whatever else a job stores in a document is passed through.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raysae.config.serve import TOP_N_CEILING

MAX_BODY_TEXT = 1_000_000  # hard bound of a text body; the configured max_text_chars is usually lower


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Health(BaseModel):
    """Liveness of the service and its store."""

    status: str
    store_ping_ms: float
    text_endpoint: bool


class DictionaryOut(_Open):
    """A dictionary record (its server-side ``path`` is not published)."""

    dictionary_id: str
    architecture: str | None = None
    hooks_in: list[str] | None = None
    hooks_out: list[str] | None = None
    hooks: list[str] | None = Field(None, description="The hook values of the feature documents.")
    d_model: int | None = None
    d_sae: int | None = Field(None, description="Latents per hook.")
    layers: int | list[int] | None = Field(None, description="Number of CLT layers; null otherwise.")
    n_features: int | None = Field(None, description="Features of the dictionary (all hooks).")
    model: str | None = None
    analysis_id: str | None = None
    config: dict[str, Any] | None = None


class DictionaryDetail(DictionaryOut):
    """A dictionary record and ``stored_features``: the feature documents stored now (all hooks)."""

    stored_features: int


class DictionaryList(BaseModel):
    items: list[DictionaryOut]
    skip: int
    limit: int


class Histogram(_Open):
    edges: list[float]
    counts: list[int | float]


class Example(_Open):
    """A window of text around a token where the feature fired; one activation per token."""

    doc_id: int | str | None = None
    window_id: int | str | None = None
    position: int | None = None
    max_activation: float | None = None
    tokens: list[str] = []
    token_ids: list[int] = []
    activations: list[float] = []


class QuantileExamples(_Open):
    quantile_low: float | None = None
    quantile_high: float | None = None
    examples: list[Example] = []


class LogitEffect(_Open):
    """A token whose logit the feature's decoder direction raises (or lowers) directly."""

    token: str
    token_id: int | None = None
    value: float


class Explanation(_Open):
    dictionary_id: str
    hook: str
    index: int
    explainer: str
    explanation: str


class Score(_Open):
    dictionary_id: str
    hook: str
    index: int
    explainer: str
    scorer: str
    score: float | None


class FeatureSummary(_Open):
    """A feature's statistics without its examples, histogram and logit lists."""

    dictionary_id: str
    hook: str
    index: int
    layer: int | None = None
    frequency: float | None = None
    n_fired: int | None = None
    n_tokens: int | None = None
    mean_activation: float | None = None
    max_activation: float | None = None
    dla_positive_tokens: list[str] | None = None


class FeatureDetail(FeatureSummary):
    """Everything stored about one feature, with its explanations and their scores."""

    histogram: Histogram | None = None
    top_examples: list[Example] | None = None
    quantile_examples: list[QuantileExamples] | None = None
    dla_positive: list[LogitEffect] | None = None
    dla_negative: list[LogitEffect] | None = None
    explanations: list[Explanation] = []
    scores: list[Score] = []


class FeaturePage(BaseModel):
    """One page of a dictionary's features; ``next_skip`` is None on the last page."""

    dictionary_id: str
    hook: str | None
    sort_by: str
    order: str
    total: int
    skip: int
    limit: int
    next_skip: int | None
    items: list[FeatureSummary]


class FeatureList(BaseModel):
    items: list[FeatureSummary]


class ExplanationList(BaseModel):
    items: list[Explanation]
    skip: int
    limit: int


class TextQuery(BaseModel):
    """A text to run through the model and the dictionary."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(
        min_length=1,
        max_length=MAX_BODY_TEXT,
        description="The text; BOS is prepended before the forward pass. The server's max_text_chars "
        "and max_text_tokens apply (413 beyond them).",
    )
    top_n: int = Field(
        5, ge=1, le=TOP_N_CEILING, description="Features per token (the server may cap lower)."
    )
    include_bos: bool = Field(False, description="Also report the BOS position.")


class ActiveFeature(BaseModel):
    hook: str
    index: int
    activation: float


class TokenFeatures(BaseModel):
    position: int
    token: str
    token_id: int
    n_active: int
    features: list[ActiveFeature]


class TextFeatures(BaseModel):
    """The most active features of each token, strongest first (only positive activations)."""

    dictionary_id: str
    model: str
    hooks: list[str] = Field(description="The hook values its features are stored under.")
    top_n: int
    n_tokens: int
    tokens: list[TokenFeatures]
