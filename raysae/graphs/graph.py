"""The attribution graph of one prompt, its identity, and the memory it needs.

Node order (circuit-tracer's ``Graph``): ``[selected features, error nodes (layer-major: layer 0
positions 0..T-1, layer 1, …, one per model layer, covered or not), token embeddings (T), logits]``.
``adjacency[t, s]`` is the direct effect of source ``s`` on target ``t``: on a feature's
pre-activation, or on a logit minus the mean logit. Rows of errors and tokens are zero (nothing is
attributed into them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from raysae.errors import RaysaeError
from raysae.graphs.prune import Layout, PruneResult


class GraphMemoryError(RaysaeError, MemoryError):
    """A graph would need more memory than ``memory_budget_gb`` allows; the message has the estimate."""


@dataclass
class Graph:
    """One prompt's attribution graph (full, unpruned adjacency) with its pruning and scores."""

    prompt: str
    tokens: Tensor
    """``[T]`` token ids (BOS first when prepended)."""
    n_layers: int
    covered_layers: list[int]
    active_features: Tensor
    """``[n_active, 3]``: (model layer, position, feature index) of every active feature."""
    activation_values: Tensor
    """``[n_active]`` activations of ``active_features``."""
    selected_features: Tensor
    """``[n_features]`` indices into ``active_features`` of the feature nodes, in node order."""
    logit_tokens: Tensor
    logit_probabilities: Tensor
    adjacency: Tensor
    """``[N, N]`` rows = targets, columns = sources (see the module doc)."""
    prune_result: PruneResult | None = None
    scores: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    dictionary_id: str = ""
    model_name: str = ""
    graph_id: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def layout(self) -> Layout:
        return Layout(
            len(self.selected_features), self.n_layers * self.n_pos, self.n_pos, len(self.logit_tokens)
        )

    def feature_nodes(self) -> Tensor:
        """``[n_features, 3]`` (layer, position, index) of the feature nodes, in node order."""
        return self.active_features[self.selected_features]

    def error_node(self, layer: int, pos: int) -> int:
        """The node index of the error node of (layer, position)."""
        return len(self.selected_features) + layer * self.n_pos + pos

    def token_node(self, pos: int) -> int:
        return len(self.selected_features) + self.n_layers * self.n_pos + pos


def graph_id(prompt: str, dictionary_id: str, parameters: dict[str, Any]) -> str:
    """The identity of a graph: a hash of the prompt, the dictionary id and the content settings."""
    body = json.dumps(
        {"prompt": prompt, "dictionary_id": dictionary_id, "parameters": parameters}, sort_keys=True
    )
    return hashlib.sha256(body.encode()).hexdigest()[:32]


@dataclass
class MemoryEstimate:
    """Bytes a graph needs at its peak, by part."""

    n_nodes: int
    adjacency_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.adjacency_bytes + self.activation_bytes

    def describe(self) -> str:
        gib = 1024**3
        return (
            f"{self.total_bytes / gib:.2f} GiB ({self.n_nodes} nodes: adjacency and pruning "
            f"{self.adjacency_bytes / gib:.2f} GiB, retained activations {self.activation_bytes / gib:.2f} GiB)"
        )


def estimate_memory(
    *,
    n_features: int,
    n_layers: int,
    n_pos: int,
    n_logits: int,
    d_model: int,
    n_heads: int,
    head_dim: int,
    batch: int,
    dtype: torch.dtype,
) -> MemoryEstimate:
    """Peak memory of one graph: the edge rows and square adjacency plus pruning's working copies
    (about 5 N² values), and the frozen pass retained for every backward (per block: the norm, V, the
    attention output and the residual, ``[batch, T, ·]`` each) with the leaves' gradients."""
    item = torch.empty((), dtype=dtype).element_size()
    nodes = n_features + (n_layers + 1) * n_pos + n_logits
    adjacency = 5 * nodes * nodes * item
    per_block = batch * n_pos * (8 * d_model + 2 * n_heads * head_dim) * item
    leaves = 3 * batch * n_pos * d_model * (n_layers + 1) * item
    return MemoryEstimate(nodes, adjacency, n_layers * per_block + leaves)


def check_memory(estimate: MemoryEstimate, budget_gb: float) -> None:
    """Raise ``GraphMemoryError`` when the estimate is over the budget."""
    if estimate.total_bytes > budget_gb * 1024**3:
        raise GraphMemoryError(
            f"this graph needs an estimated {estimate.describe()}, over memory_budget_gb={budget_gb:g}; "
            "lower max_feature_nodes or batch_size, shorten the prompt, or raise the budget"
        )
