"""Settings of the Ray Serve application: where it listens, its store, its bounds and its replicas.

``host`` and ``port`` are read by ``raysae serve`` (they become Serve's ``http_options``); under
``serve deploy`` the Serve config file's ``http_options`` decide them instead.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from raysae.config.base import StrictModel
from raysae.config.data import ModelConfig
from raysae.config.store import StoreConfig

PAGE_SIZE_CEILING = 1000  # the largest max_page_size a server may be configured with
TOP_N_CEILING = 256  # the largest max_top_n


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
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Model for text queries when a dictionary record names none; its dtype, device and threads also
    apply to the model a record names (record field `model`)."""
    text_endpoint: bool = True
    """Deploy the model-backed text → features deployment; False serves store lookups only (503 there)."""
    api_replicas: int = Field(1, ge=1)
    """Replicas of the ingress (store lookups)."""
    api_num_cpus: float = Field(0.25, ge=0)
    """CPUs reserved by each ingress replica."""
    api_max_ongoing_requests: int = Field(32, ge=1)
    """Concurrent requests one ingress replica takes (store calls run in its thread pool)."""
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

    @property
    def page_size(self) -> int:
        """The page size of a request that gives none."""
        return self.default_page_size or min(50, self.max_page_size)
