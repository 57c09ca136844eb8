"""Settings of attribution graphs (`raysae graphs`): which transcoder, how the graph is built and pruned,
where the graphs go."""

from __future__ import annotations

from pydantic import Field, model_validator

from raysae.config.base import StrictModel
from raysae.config.data import ModelConfig
from raysae.config.store import StoreConfig

# The fields that change a graph's content; graph_id hashes them with the prompt and dictionary id.
GRAPH_PARAMETERS = (
    "max_n_logits",
    "desired_logit_prob",
    "max_feature_nodes",
    "bos_features",
    "node_threshold",
    "edge_threshold",
    "prepend_bos",
)


class GraphConfig(StrictModel):
    """An attribution graph per prompt through a cross-layer transcoder or per-layer transcoders."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """The language model (native backend: a Llama-family model)."""
    dictionaries: list[str] = Field(default_factory=list)
    """Saved dictionary folders: one CLT, or one transcoder per covered MLP (in any order)."""
    dictionary_id: str | None = None
    """Id of the transcoder in the store; None joins the folder names with '+'."""
    prompts: str | None = None
    """JSONL file of prompts, one object per line with the field `prompt_field` (and optionally
    `id_field`, kept in the document as `prompt_id`)."""
    prompt_field: str = "prompt"
    """Field of each JSONL line that holds the prompt text."""
    id_field: str = "id"
    """Field of each JSONL line kept as the document's `prompt_id` when present."""
    prepend_bos: bool = True
    """Put the BOS token before each prompt (the model saw BOS first in training)."""
    max_n_logits: int = Field(10, gt=0)
    """At most this many logit nodes (the most probable next tokens)."""
    desired_logit_prob: float = Field(0.95, gt=0, le=1)
    """Logit nodes are added in probability order until their total probability reaches this."""
    max_feature_nodes: int | None = Field(4096, gt=0)
    """Feature nodes kept, visited in order of influence on the logits; None keeps every active feature."""
    batch_size: int = Field(256, gt=0)
    """Targets (features or logits) attributed per backward pass, through the batch dimension."""
    update_interval: int = Field(4, gt=0)
    """Re-rank the unvisited features by their influence so far after every update_interval ×
    batch_size visits."""
    prompts_per_pass: int = Field(1, gt=0)
    """Prompts of `raysae graphs` attributed together: one frozen pass holds them all (batch_size rows
    split between them), so each backward carries targets of every one; a graph is the same as alone.
    Pays where a backward costs little more with more prompts (short prompts, small graphs, GPUs)."""
    bos_features: bool = False
    """Keep features active at the BOS position as nodes. Off (as circuit-tracer's default): their
    output goes to the BOS error node, so the replacement stays exact."""
    node_threshold: float = Field(0.8, ge=0, le=1)
    """Pruning keeps the most influential nodes that hold this fraction of all node influence."""
    edge_threshold: float = Field(0.98, ge=0, le=1)
    """Pruning keeps the most influential edges that hold this fraction of all edge influence."""
    memory_budget_gb: float = Field(8.0, gt=0)
    """Refuse a graph whose estimated memory (adjacency + retained activations) exceeds this."""
    store: StoreConfig | None = None
    """The MongoDB store graphs are upserted into; None writes no documents."""
    output_dir: str | None = None
    """Folder for a Neuronpedia-viewer JSON per graph (`{graph_id}.json`); None writes none."""
    replicas: int = Field(1, gt=0)
    """Actors (each holding the model and the transcoder) in the Ray pool."""
    cpus_per_replica: float = Field(1.0, gt=0)
    """CPUs reserved by each actor."""
    gpus_per_replica: float = Field(0.0, ge=0)
    """GPUs reserved by each actor (fractions share a GPU)."""

    @model_validator(mode="after")
    def _check(self) -> GraphConfig:
        if len(set(self.dictionaries)) != len(self.dictionaries):
            raise ValueError("dictionaries lists a folder twice")
        return self

    def parameters(self) -> dict[str, object]:
        """The settings that change a graph's content (part of its identity)."""
        return {k: getattr(self, k) for k in GRAPH_PARAMETERS}
