"""Settings of the Ray Serve application: where it listens, its store, its bounds and its replicas.

``host`` and ``port`` are read by ``raysae serve`` (they become Serve's ``http_options``); under
``serve deploy`` the Serve config file's ``http_options`` decide them instead.
"""

from __future__ import annotations

import os

from pydantic import Field, SecretStr, field_validator, model_validator

from raysae.config.autointerp import LOCAL_CHAT_ROUTE, AutointerpMethod
from raysae.config.base import StrictModel
from raysae.config.data import ModelConfig
from raysae.config.graphs import GraphConfig
from raysae.config.store import StoreConfig

TOKEN_ENV = "RAYSAE_API_TOKEN"

PAGE_SIZE_CEILING = 1000  # the largest max_page_size a server may be configured with
TOP_N_CEILING = 256  # the largest max_top_n
DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # 1 MiB: a max_text_chars text with room to spare
API_CPUS_PER_REPLICA = 4  # cluster CPUs per ingress replica when api_replicas is None
API_MAX_AUTO_REPLICAS = 8  # the most ingress replicas api_replicas=None gives


class ServeConfig(StrictModel):
    """The feature-browser service: a FastAPI ingress over the store and a model deployment for text."""

    host: str = "127.0.0.1"
    """Address the HTTP proxy listens on. Keep 127.0.0.1 on a shared machine; "0.0.0.0" exposes it."""
    port: int = Field(8000, ge=1, le=65535)
    """HTTP port of the proxy."""
    app_name: str = Field("raysae", min_length=1)
    """Name of the Serve application (what `serve status` lists)."""
    route_prefix: str = "/"
    """URL prefix of the application; every endpoint lives below it."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """The MongoDB the endpoints read (MONGO_URI / MONGO_DB apply when uri/db are unset)."""
    max_page_size: int = Field(100, ge=1, le=PAGE_SIZE_CEILING)
    """Largest `limit`/`page_size` a request may ask for; larger ones are rejected with 422."""
    default_page_size: int | None = Field(None, ge=1, le=PAGE_SIZE_CEILING)
    """Page size when a request gives none; None: 50, or max_page_size when that is smaller."""
    max_text_chars: int = Field(4000, ge=1, le=1_000_000)
    """Longest text (characters) the text → features endpoint accepts; longer ones get 413."""
    max_text_tokens: int = Field(256, ge=1, le=32_768)
    """Most tokens (BOS excluded) the text → features endpoint runs through the model; more get 413."""
    max_top_n: int = Field(32, ge=1, le=TOP_N_CEILING)
    """Largest number of features per token a text query may ask for."""
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, le=1024**3)
    """Largest request body (bytes) the service reads; larger ones get 413 before any parsing, so a huge
    JSON body costs no parse time. Raise it with max_text_chars (a character is up to 6 bytes of JSON)."""
    store_timeout_ms: int = Field(2000, gt=0, le=120_000)
    """How long a request waits for an unreachable store before its 503: the ingress's store calls make
    one attempt each, with this server-selection and connect timeout (store's, when shorter).
    store.retries still applies to jobs and to the graph deployment, which write after minutes of work."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Model for text queries when a dictionary record names none; its dtype, device and threads also
    apply to the model a record names (record field `model`)."""
    text_endpoint: bool = True
    """Deploy the model-backed text → features deployment; False serves store lookups only (503 there)."""
    api_replicas: int | None = Field(None, ge=1)
    """Replicas of the ingress (store lookups); None sizes them from the cluster's CPUs: one per
    API_CPUS_PER_REPLICA (4), at least 1 and at most API_MAX_AUTO_REPLICAS (8). One replica keeps about
    one core busy (its Python holds the GIL), and Serve's HTTP proxy, the store and the model replicas
    need the others."""
    api_num_cpus: float = Field(0.25, ge=0)
    """CPUs reserved by each ingress replica."""
    api_max_ongoing_requests: int = Field(256, ge=1)
    """Concurrent requests one ingress replica takes (store calls run in its thread pool). Keep it above
    the concurrency you expect: Serve's router holds the requests over it and retries them with a
    backoff of up to 1 s (RequestRouter.backoff_sequence_s); measured with 100 clients, a limit of 32
    cut lookups from 40 to 8 requests/s. A request waiting inside the replica costs a coroutine."""
    record_ttl_s: float = Field(1.0, ge=0, le=3600)
    """How long an ingress replica reuses a dictionary record it read. The record's analysis_id and
    updated_at key the replica's feature caches (analysis writes the record after the features), so a
    re-analysis shows within this time, and so do new explanations and scores of a feature; 0 reads
    them on every request."""
    page_cache_features: int = Field(200_000, ge=0, le=10_000_000)
    """Feature summaries (the fields of a page) each ingress replica keeps, all dictionaries together
    (~0.5 KB each): pages, totals and in-dictionary token searches are then answered from memory. A
    dictionary with more features is paged by the store; 0 turns this cache off."""
    feature_cache_mb: float = Field(256.0, ge=0, le=1024**2)
    """Rendered feature documents (JSON, ~200 KB for 20 top and 25 quantile examples of 128 tokens) each
    ingress replica keeps, least recently used dropped first; 0 turns this cache off. A feature's
    explanations and scores (the explain endpoint adds to them) are reused for record_ttl_s."""
    model_replicas: int = Field(1, ge=1)
    """Replicas of the model deployment (each holds its own model and dictionary caches)."""
    model_num_cpus: float = Field(0.5, ge=0)
    """CPUs reserved by each model replica; also its torch threads (at least 1) unless model.num_threads."""
    model_num_gpus: float = Field(0, ge=0)
    """GPUs reserved by each model replica (set model.device to "cuda" or "auto" to use them)."""
    model_max_ongoing_requests: int = Field(4, ge=1)
    """Concurrent requests one model replica takes; forward passes run one at a time."""
    max_cached_dictionaries: int = Field(4, ge=1)
    """Loaded dictionaries kept per model replica (least recently used dropped first)."""
    max_cached_models: int = Field(1, ge=1)
    """Loaded language models kept per model replica (least recently used dropped first)."""

    api_token: SecretStr | None = None
    """Bearer token of the endpoints that write the store or spend compute (graphs, explain); None
    reads $RAYSAE_API_TOKEN. With neither, those endpoints answer 401 to everyone."""
    graph_endpoint: bool = True
    """Deploy the attribution-graph deployment (model + transcoders) behind POST /api/graphs."""
    graph_replicas: int = Field(1, ge=1)
    """Replicas of the graph deployment (each holds the model and its transcoders)."""
    graph_num_cpus: float = Field(0.5, ge=0)
    """CPUs reserved by each graph replica."""
    graph_num_gpus: float = Field(0, ge=0)
    """GPUs reserved by each graph replica."""
    graph_max_ongoing_requests: int = Field(2, ge=1)
    """Graphs one replica takes at once (they run one at a time; the rest wait in its queue)."""
    graph_max_prompt_tokens: int = Field(64, ge=1, le=4096)
    """Longest prompt (tokens, BOS excluded) a graph request may have; longer ones get 413."""
    graph_wait_s: float = Field(30.0, ge=0)
    """How long POST /api/graphs waits for the graph before answering 202 (poll GET /api/graphs/{id})."""
    graph_defaults: GraphConfig = Field(default_factory=lambda: GraphConfig(max_feature_nodes=1024))
    """Graph parameters a request does not give, and the memory budget (graph_defaults.memory_budget_gb)."""
    autointerp: AutointerpMethod = Field(default_factory=AutointerpMethod)
    """How POST .../explain explains and scores; endpoint.base_url None: the bundled chat deployment."""
    chat_endpoint: bool = True
    """Deploy the bundled chat model (OpenAI-compatible, at {route_prefix}/llm/v1) when
    autointerp.endpoint.base_url is None."""
    chat_replicas: int = Field(1, ge=1)
    """Replicas of the chat deployment."""
    chat_num_cpus: float = Field(0.5, ge=0)
    """CPUs reserved by each chat replica."""

    @field_validator("route_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/") or (len(value) > 1 and value.endswith("/")):
            raise ValueError(f"route_prefix must start with '/' and not end with one, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_pages(self) -> ServeConfig:
        if self.default_page_size is not None and self.default_page_size > self.max_page_size:
            raise ValueError(
                f"default_page_size ({self.default_page_size}) exceeds max_page_size ({self.max_page_size})"
            )
        if self.max_page_size > self.store.max_page_size:
            raise ValueError(
                f"max_page_size ({self.max_page_size}) exceeds store.max_page_size ({self.store.max_page_size})"
            )
        return self

    def token(self) -> str | None:
        """The bearer token write endpoints require (config, else $RAYSAE_API_TOKEN); None: none set."""
        if self.api_token is not None and self.api_token.get_secret_value():
            return self.api_token.get_secret_value()
        return os.environ.get(TOKEN_ENV, "").strip() or None

    @property
    def deploys_chat(self) -> bool:
        """Whether the bundled chat model is deployed (asked for, and no other endpoint configured)."""
        return self.chat_endpoint and self.autointerp.endpoint.base_url is None

    def chat_url(self) -> str:
        """The chat endpoint the explain route calls: the configured one, else the bundled deployment."""
        if self.autointerp.endpoint.base_url:
            return self.autointerp.endpoint.base_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        prefix = "" if self.route_prefix == "/" else self.route_prefix
        return f"http://{host}:{self.port}{prefix}{LOCAL_CHAT_ROUTE}/v1"

    def request_store(self) -> StoreConfig:
        """The store settings of the service's requests: one attempt, within ``store_timeout_ms``, so
        that a request to a service whose store is down answers 503 at once instead of after the
        retries (4 attempts of 5 s by default)."""
        s = self.store
        return s.model_copy(
            update={
                "retries": 0,
                "server_selection_timeout_ms": min(s.server_selection_timeout_ms, self.store_timeout_ms),
                "connect_timeout_ms": min(s.connect_timeout_ms, self.store_timeout_ms),
            }
        )

    def ingress_replicas(self, cluster_cpus: float | None) -> int:
        """Replicas of the ingress: ``api_replicas``, else one per API_CPUS_PER_REPLICA cluster CPUs
        (1 when the CPUs are unknown), at most API_MAX_AUTO_REPLICAS."""
        if self.api_replicas is not None:
            return self.api_replicas
        if not cluster_cpus or cluster_cpus < 0:
            return 1
        return max(1, min(API_MAX_AUTO_REPLICAS, int(cluster_cpus // API_CPUS_PER_REPLICA)))

    @property
    def page_size(self) -> int:
        """The page size of a request that gives none."""
        return self.default_page_size or min(50, self.max_page_size)
