"""The one description of every stored document: pydantic models that producers build and serve returns.

Producers (the analysis job now; autointerp and attribution graphs next) build these models; the
``Store.upsert_*`` methods take them (or plain mappings) and store ``model_dump(exclude_unset=True)``, so
a merge never overwrites a field with a default the producer did not set. Every model allows extra
fields: whatever else a job stores passes through to readers unchanged. Identity fields that a write
call's arguments supply (``dictionary_id``, and ``hook`` for explanations and scores) may be left out.

``QUERY_FIELDS`` names the fields the store's queries filter or sort on; the store checks their types
strictly (no bool for a number) even in plain mappings, so a bad value cannot break a sort or an index.

features — one per feature; identity (``dictionary_id``, ``hook``, ``index``). ``hook`` is the group's
hook (``SparseDictionary.group_hook``: SAE/transcoder hook_point_in, a CLT layer's input hook,
"+".join(hooks_in) for a CrossCoder), ``index`` the latent within it (0 .. d_sae-1). ``frequency`` is
n_fired / n_tokens over kept tokens (BOS and padding are not kept); ``mean_activation`` the mean over
firing tokens (0.0 if it never fired). The histogram's ``counts[i]`` are firing tokens with
``edges[i] <= a < edges[i+1]`` (the first bin also holds ``a < edges[0]``, the last ``a >= edges[-1]``;
sum(counts) == n_fired). ``top_examples`` are strongest first (max_activation desc, window_id asc), one
per window; ``quantile_examples`` cut a seeded uniform sample of activating windows into equal rank
groups [q/Q, (q+1)/Q), empty for a dead feature. ``dla_positive_tokens`` is a flat list of the
dla_positive tokens, strongest first, so that a multikey index serves "features by token". DLA values
are ``(w * d) @ W_U`` for write direction d and final-RMSNorm scale w (see ``raysae.analysis.dla``).
An example's window is a whole context window of the analysed stream (BOS first; it may span documents;
trailing padding cut); token strings are ``tokenizer.decode([id])``.

Every document also gets ``updated_at`` from the store; fields too large for one document live in
GridFS (see ``raysae.store.documents``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class StoreDoc(BaseModel):
    """Base of stored documents: extra fields allowed (and kept), strict about nothing else."""

    model_config = ConfigDict(extra="allow")

    QUERY_FIELDS: ClassVar[tuple[str, ...]] = ()

    def storable(self) -> dict[str, Any]:
        """The fields this document sets (defaults it left alone are not written)."""
        return self.model_dump(exclude_unset=True)


# ---- dictionaries ----------------------------------------------------------------------------------
class DictionaryDoc(StoreDoc):
    """A dictionary record; identity ``dictionary_id``. Analysis merges it into what training wrote."""

    dictionary_id: str | None = None
    architecture: str | None = None
    hooks_in: list[str] | None = None
    hooks_out: list[str] | None = None
    hooks: list[str] | None = Field(None, description="The hook values of the feature documents.")
    d_model: int | None = None
    d_sae: int | None = Field(None, description="Latents per hook.")
    layers: int | list[int] | None = Field(None, description="Number of CLT layers; null otherwise.")
    n_features: int | None = Field(None, description="Features of the dictionary (all hooks).")
    path: str | None = Field(None, description="Absolute dictionary folder on the analysing machine.")
    model: str | None = Field(None, description="The language model's name.")
    analysis_id: str | None = Field(None, description="The latest analysis.")
    config: dict[str, Any] | None = Field(None, description="The dictionary config.")


# ---- analyses --------------------------------------------------------------------------------------
class AnalysisDoc(StoreDoc):
    """One analysis run; identity (``dictionary_id``, ``analysis_id``). Written at start and at the end."""

    dictionary_id: str | None = None
    analysis_id: str | None = None
    status: str | None = Field(None, description='"running" | "complete" | "failed"')
    error: str | None = None
    corpus: dict[str, Any] | None = Field(None, description="The text source settings.")
    model: dict[str, Any] | None = Field(None, description="The model settings.")
    tokens: int | None = Field(None, description="Kept tokens analysed.")
    windows: int | None = None
    context_size: int | None = None
    hooks: list[str] | None = None
    n_features: int | None = None
    settings: dict[str, Any] | None = Field(None, description="The analysis settings without the store.")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    timings: dict[str, float] | None = Field(None, description="Seconds per stage.")
    features_written: int | None = None


# ---- features --------------------------------------------------------------------------------------
class Histogram(StoreDoc):
    edges: list[float]
    counts: list[int | float]


class Example(StoreDoc):
    """A window of text around a token where the feature fired; one activation per token."""

    doc_id: int | str | None = Field(None, description="Document of the max token.")
    window_id: int | str | None = None
    position: int | None = Field(None, description="Index of the max token within the window.")
    max_activation: float | None = None
    tokens: list[str] = []
    token_ids: list[int] = []
    activations: list[float] = Field([], description="This feature; 0 where it does not fire, at BOS.")


class QuantileExamples(StoreDoc):
    quantile_low: float | None = None
    quantile_high: float | None = None
    examples: list[Example] = []


class LogitEffect(StoreDoc):
    """A token whose logit the feature's write direction raises (or lowers) directly."""

    token: str
    token_id: int | None = None
    value: float


class FeatureSummary(StoreDoc):
    """A feature's statistics without its examples, histogram and logit lists (pages, searches)."""

    QUERY_FIELDS: ClassVar[tuple[str, ...]] = ("frequency", "max_activation", "dla_positive_tokens")

    dictionary_id: str | None = None
    hook: str
    index: int
    layer: int | None = Field(None, description="CLT layer (position in hooks_in); null otherwise.")
    frequency: float | None = None
    n_fired: int | None = None
    n_tokens: int | None = None
    mean_activation: float | None = None
    max_activation: float | None = None
    dla_positive_tokens: list[str] | None = None


class FeatureDoc(FeatureSummary):
    """Everything analysis stores about one feature."""

    histogram: Histogram | None = None
    top_examples: list[Example] | None = None
    quantile_examples: list[QuantileExamples] | None = None
    dla_positive: list[LogitEffect] | None = None
    dla_negative: list[LogitEffect] | None = None


# Left out of feature summaries (pages, searches): the bulk of a feature document.
FEATURE_HEAVY_FIELDS = tuple(f for f in FeatureDoc.model_fields if f not in FeatureSummary.model_fields)


# ---- explanations, scores, graphs ------------------------------------------------------------------
class ExplanationDoc(StoreDoc):
    """An explanation of a feature; identity (feature identity, ``explainer``)."""

    QUERY_FIELDS: ClassVar[tuple[str, ...]] = ("explanation",)

    dictionary_id: str | None = None
    hook: str | None = None
    index: int
    explainer: str
    explanation: str
    status: str | None = Field(None, description='autointerp: "ok" | "failed" (explanation then "").')
    error: str | None = Field(None, description="Why the explainer failed (no credentials in it).")
    explainer_model: str | None = Field(None, description="The chat model that wrote it.")
    prompt_version: str | None = Field(None, description="Version of the explainer prompt.")


class ScoreDoc(StoreDoc):
    """A score of an explanation; identity (feature identity, ``explainer``, ``scorer``)."""

    QUERY_FIELDS: ClassVar[tuple[str, ...]] = ("score",)

    dictionary_id: str | None = None
    hook: str | None = None
    index: int
    explainer: str
    scorer: str
    score: float
    status: str | None = Field(None, description='autointerp: "ok" | "failed" (score then NaN).')
    error: str | None = None
    scorer_model: str | None = None
    prompt_version: str | None = Field(None, description="Version of the scorer prompt.")
    baseline: bool | None = Field(None, description="True: the score of a random (baseline) explanation.")
    balanced_accuracy: float | None = None
    auroc: float | None = Field(None, description="From logprobs' P(1); null without logprobs.")
    predictions: list[dict[str, Any]] | None = Field(
        None, description="Per example: activating, prediction (0/1), probability; scores recompute from it."
    )


class GraphDoc(StoreDoc):
    """An attribution graph of one prompt; identity ``graph_id``; large fields spill to GridFS."""

    graph_id: str | None = None
    dictionary_id: str | None = None
    prompt: str | None = None


class GraphRequestDoc(StoreDoc):
    """The state of a graph asked for over HTTP; identity ``graph_id`` (the graph's own id), so asking
    twice for the same graph is one request. ``status``: queued → running → done | failed."""

    graph_id: str | None = None
    dictionary_id: str | None = None
    status: str = Field(description='"queued", "running", "done" or "failed".')
    error: str | None = Field(None, description="Why the graph failed (a user error's message).")
    prompt: str | None = None
    parameters: dict[str, Any] | None = None
    seconds: float | None = Field(None, description="Compute time of the graph, once done.")
