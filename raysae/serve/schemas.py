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


# ---- attribution graphs and explanations (write endpoints) -------------------------------------------
class GraphRequest(BaseModel):
    """A graph to compute: the prompt, the transcoder, and any parameters that differ from the server's
    defaults (``graph_defaults``); the graph's id hashes all three, so asking again is free."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=MAX_BODY_TEXT)
    dictionary_id: str = Field(
        min_length=1, max_length=1024, description="A CLT, or per-layer transcoders' ids joined by '+'."
    )
    max_n_logits: int | None = Field(None, ge=1, le=1000)
    desired_logit_prob: float | None = Field(None, gt=0, le=1)
    max_feature_nodes: int | None = Field(None, ge=1, le=1_000_000)
    node_threshold: float | None = Field(None, ge=0, le=1)
    edge_threshold: float | None = Field(None, ge=0, le=1)
    bos_features: bool | None = None
    wait: bool = Field(True, description="Wait up to the server's graph_wait_s before answering 202.")

    def parameters(self) -> dict[str, object]:
        """The graph parameters this request sets."""
        names = ("max_n_logits", "desired_logit_prob", "max_feature_nodes", "node_threshold")
        names += ("edge_threshold", "bos_features")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


class GraphState(BaseModel):
    """Where a requested graph stands: queued, running, done or failed (with the reason)."""

    graph_id: str
    status: str
    error: str | None = None
    seconds: float | None = None
    url: str = Field(description="Poll here: GET returns this state, then the graph once done.")


class GraphResult(GraphState):
    """A graph's state and, once done, its stored document (without the dense adjacency)."""

    graph: dict | None = None


class GraphList(BaseModel):
    items: list[dict]
    skip: int
    limit: int


class ExplainResult(BaseModel):
    """The stored explanation of a feature and the scores of it and of its baseline."""

    explanation: ExplanationDoc
    scores: list[ScoreDoc]
    usage: dict[str, int]


class FeatureInterpretation(BaseModel):
    """Every stored explanation of a feature and every score."""

    explanations: list[ExplanationDoc]
    scores: list[ScoreDoc]


# ---- steering and nearest features (feature browser) -------------------------------------------------
MAX_STEER_NEW_TOKENS = 64  # greedy steps of each continuation: two model passes per step on the deployment
MAX_STEER_STRENGTH = 1000.0  # in units of the feature's activation; far beyond any useful steering
MAX_NEAREST = 50


class SteerRequest(BaseModel):
    """A prompt to continue greedily, with and without a feature's decoder output added."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(
        min_length=1,
        max_length=MAX_BODY_TEXT,
        description="The prompt (BOS is prepended); the server's max_text_chars and max_text_tokens apply.",
    )
    strength: float = Field(
        ge=-MAX_STEER_STRENGTH,
        le=MAX_STEER_STRENGTH,
        allow_inf_nan=False,
        description="Multiple of the feature's decoder output added at its output hooks at every "
        "position: the activation the feature is forced to add (compare max_activation).",
    )
    max_new_tokens: int = Field(
        24, ge=1, le=MAX_STEER_NEW_TOKENS, description="Greedy tokens of each continuation."
    )


class Continuation(BaseModel):
    text: str
    tokens: list[str]
    token_ids: list[int]


class SteerResult(BaseModel):
    """Both greedy continuations of the prompt: unsteered, and steered by the feature."""

    dictionary_id: str
    hook: str
    index: int
    model: str
    prompt: str
    strength: float
    max_new_tokens: int
    hooks_out: list[str] = Field(description="The hooks the feature's decoder output was added at.")
    unsteered: Continuation
    steered: Continuation


class NearFeature(BaseModel):
    hook: str
    index: int
    cosine: float
    explanation: str | None = Field(None, description="Its first stored explanation, if any.")


class NearestFeatures(BaseModel):
    """Features whose decoder (write) directions are closest in cosine, most similar first."""

    dictionary_id: str
    hook: str
    index: int
    k: int
    items: list[NearFeature]
