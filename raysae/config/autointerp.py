"""Settings of `raysae autointerp`: the OpenAI-compatible endpoint, the explainer, the scorers, the store.

The API key is read from ``endpoint.api_key`` or, when unset, from ``$OPENAI_API_KEY`` at request time;
it is a ``SecretStr`` so that printing, logging or dumping a config never shows it.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from raysae.config.base import StrictModel
from raysae.config.store import StoreConfig

ScorerKind = Literal["detection", "fuzzing"]
LOCAL_CHAT_ROUTE = "/llm"  # where `raysae serve` mounts its chat deployment (…/llm/v1/chat/completions)
LOCAL_CHAT_URL = f"http://127.0.0.1:8000{LOCAL_CHAT_ROUTE}/v1"


class EndpointConfig(StrictModel):
    """Where the chat model is and how hard raysae may push it."""

    base_url: str | None = None
    """OpenAI-compatible API root (the part before /chat/completions); None: the bundled SmolLM2 chat
    model that `raysae serve` runs (`LOCAL_CHAT_URL`; under serve, at the service's own host and port)."""
    model: str = "smollm2-135m-instruct"
    """Model name sent with every request; also part of the stored explainer/scorer identity."""
    api_key: SecretStr | None = None
    """API key; unset reads $OPENAI_API_KEY, and a local server without auth gets a placeholder."""
    concurrency: int = Field(8, gt=0, le=1024)
    """Requests in flight at once (over all Ray workers together)."""
    requests_per_second: float | None = Field(None, gt=0)
    """Token-bucket rate limit of requests (over all workers together); None: unlimited."""
    burst: int = Field(4, gt=0)
    """Requests the token bucket lets through at once after an idle spell."""
    retries: int = Field(4, ge=0, le=50)
    """Extra attempts after a 429, a 5xx, a timeout, a connection error or an unparseable answer."""
    backoff_s: float = Field(0.5, ge=0)
    """Sleep before the first retry; doubles on each further one (with jitter)."""
    backoff_max_s: float = Field(20.0, ge=0)
    """Upper bound of one backoff sleep."""
    timeout_s: float = Field(60.0, gt=0)
    """Timeout of one HTTP request."""
    cache: bool = True
    """Keep answers on disk under $RAYSAE_HOME/autointerp-cache, keyed by (model, prompt hash), so a
    re-run or a resumed job does not pay twice for the same prompt."""
    cache_dir: str | None = None
    """Folder of the answer cache; None: $RAYSAE_HOME/autointerp-cache (each machine has its own)."""

    @property
    def url(self) -> str:
        """The API root requests go to."""
        return self.base_url or LOCAL_CHAT_URL

    def resolved_api_key(self) -> str:
        """The key to send: the configured one, else $OPENAI_API_KEY, else a placeholder for local servers."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY", "").strip() or "no-key"


class ExplainerConfig(StrictModel):
    """Which stored examples the explainer sees and how (delphi's default explainer)."""

    top_examples: int = Field(10, ge=0)
    """Strongest examples shown (from the feature's top_examples)."""
    examples_per_quantile: int = Field(1, ge=0)
    """Quantile-sampled examples shown per quantile group (the rest are held out for scoring)."""
    threshold: float = Field(0.3, ge=0, lt=1)
    """Tokens above this fraction of the example's max activation are marked <<token>>."""
    show_activations: bool = True
    """List the marked tokens with their activation normalised to 0-10 under each example."""
    max_tokens: int = Field(200, gt=0)
    """Token limit of the explainer's answer."""
    temperature: float = Field(0.0, ge=0)
    """Sampling temperature (0 is greedy)."""


class ScorerConfig(StrictModel):
    """Detection and fuzzing (delphi's classifier scorers) over held-out windows."""

    kinds: list[ScorerKind] = Field(default_factory=lambda: ["detection", "fuzzing"])
    """Scorers to run."""
    n_activating: int = Field(10, ge=1)
    """Held-out activating windows per feature (quantile-sampled ones first, never the shown ones)."""
    n_non_activating: int = Field(10, ge=1)
    """Non-activating windows per feature, taken from other features' stored examples."""
    answer: Literal["list", "digit"] = "list"
    """How the scorer answers. ``list`` (delphi's): several examples per prompt, the answer is a list of
    0/1s. ``digit``: one example per prompt and a one-token answer; the prediction is P("1") > P("0")
    among the first token's top logprobs, so a small model that cannot keep a list format (SmolLM2-135M
    writes prose) still gives a prediction for every example. Needs an endpoint with logprobs."""
    examples_per_prompt: int | None = Field(None, ge=1, le=50)
    """Examples in one scoring prompt (``list`` answers); None: 5 for ``list``, 1 for ``digit``."""
    logprobs: bool = True
    """Ask for top logprobs to turn each 0/1 into P(1) for AUROC (endpoints without logprobs: null AUROC)."""
    max_tokens: int = Field(60, gt=0)
    """Token limit of a scoring answer."""
    baseline: Literal["other_feature", "random_words", "none"] = "other_feature"
    """Random-explanation baseline scored beside each explanation: the explanation of another, randomly
    paired feature of the job (delphi's choice: fluent and specific, so it measures how much a plausible
    but wrong explanation scores), random words from the job's example tokens, or none."""
    seed: int = 0
    """Seed of window choice, shuffling, fuzzing positions and baseline pairing."""

    @model_validator(mode="after")
    def _check_answer(self) -> ScorerConfig:
        if self.answer == "digit" and not self.logprobs:
            raise ValueError("scorer answer 'digit' reads the answer from logprobs: set logprobs: true")
        if self.answer == "digit" and self.examples_per_prompt not in (None, 1):
            raise ValueError(
                f"scorer answer 'digit' shows one example per prompt; examples_per_prompt is "
                f"{self.examples_per_prompt} (leave it out, or use answer: list)"
            )
        return self

    @property
    def prompt_size(self) -> int:
        """Examples per scoring prompt."""
        if self.examples_per_prompt is not None:
            return self.examples_per_prompt
        return 1 if self.answer == "digit" else 5


class AutointerpMethod(StrictModel):
    """How features are explained and scored: what the job and the serve endpoint share."""

    window_tokens: int = Field(32, ge=4, le=4096)
    """Tokens of each example shown (explainer and scorers), around its max token; BOS left out."""
    negative_pool_features: int = Field(64, gt=0)
    """Features (seeded choice among the job's) whose stored windows are the non-activating candidates."""
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    """The chat endpoint (explainer and scorer use the same one)."""
    explainer: ExplainerConfig = Field(default_factory=ExplainerConfig)
    scorer: ScorerConfig = Field(default_factory=ScorerConfig)


class AutointerpConfig(AutointerpMethod):
    """Explain every (or the listed) feature of a stored dictionary, then score the explanations."""

    dictionary_id: str
    """The dictionary whose stored feature documents are explained."""
    hook: str | None = None
    """Only the features of this hook; None: every hook of the dictionary."""
    features: list[int] | None = None
    """Only these feature indices (with ``hook``, or within every hook); None: all stored features."""
    max_features: int | None = Field(None, gt=0)
    """Stop after this many features (in (hook, index) order) — for a quick look at a big dictionary."""
    use_ray: bool = True
    """Spread features over Ray tasks; False runs everything in this process (small runs, tests)."""
    ray_workers: int = Field(4, gt=0)
    """Ray tasks working at once; the endpoint's concurrency and rate are split between them."""
    features_in_flight: int = Field(16, gt=0)
    """Features one worker (or the in-process job) handles at once."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """The MongoDB store; uri and db default to MONGO_URI and MONGO_DB."""

    @model_validator(mode="after")
    def _check(self) -> AutointerpConfig:
        if self.features is not None and not self.features:
            raise ValueError("features must list at least one index (or be left out for all)")
        if self.features is not None and any(i < 0 for i in self.features):
            raise ValueError("features must be non-negative indices")
        return self
