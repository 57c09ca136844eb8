"""Request and response models of the HTTP API (they make up the published OpenAPI schema).

Stored documents are returned as the store's own models (``raysae.store.models``) or thin views of
them; they accept extra fields, so whatever else a job stores in a document is passed through.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from raysae.config.serve import TOP_N_CEILING
from raysae.store.models import DictionaryDoc, ExplanationDoc, FeatureDoc, FeatureSummary, ScoreDoc

MAX_BODY_TEXT = 1_000_000  # hard bound of a text body; the configured max_text_chars is usually lower


class Health(BaseModel):
    """Liveness of the service and its store."""

    status: str
    store_ping_ms: float
    text_endpoint: bool


class DictionaryOut(DictionaryDoc):
    """A dictionary record (its server-side ``path`` is not published)."""

    dictionary_id: str
    path: SkipJsonSchema[str | None] = Field(None, exclude=True)


class DictionaryDetail(DictionaryOut):
    """A dictionary record and ``stored_features``: the feature documents stored now (all hooks)."""

    stored_features: int


class DictionaryList(BaseModel):
    items: list[DictionaryOut]
    skip: int
    limit: int


class FeatureDetail(FeatureDoc):
    """Everything stored about one feature, with its explanations and their scores."""

    explanations: list[ExplanationDoc] = Field(default_factory=list)
    scores: list[ScoreDoc] = Field(default_factory=list)


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
    items: list[ExplanationDoc]
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
