"""Influence, pruning and the two graph scores, as circuit-tracer defines them (``circuit_tracer/graph.py``).

The adjacency ``A`` has rows = targets and columns = sources, nodes ordered
``[features, errors, tokens, logits]``. ``N = |A|`` with rows scaled to sum to 1 says what fraction of
a node's (absolute) input each source gives; the influence of the nodes on the logits is
``w (N + N² + …)`` for the logit weights ``w`` (their probabilities). The graph is acyclic, so the
series ends after at most its depth; it is summed term by term.

Pruning keeps the nodes holding ``node_threshold`` of the total influence (tokens and logits always),
then the edges holding ``edge_threshold`` of the edge influence ``N[t, s] · (influence(t) + w(t))`` in
that smaller graph, then drops, until nothing changes, features and errors left without outgoing edges
and features left without incoming ones.

Scores: the replacement score is the fraction of the tokens'-plus-errors' influence that the tokens
hold; the completeness score is the influence-weighted fraction of each node's input that does not
come from error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def normalize_rows(adjacency: Tensor) -> Tensor:
    """``|A|`` with each row divided by its sum (rows of zeros stay zero)."""
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def total_influence(normalized: Tensor, weights: Tensor) -> Tensor:
    """``w (N + N² + …)``; raises if the graph has a cycle (the series does not end)."""
    current = weights @ normalized
    total = current.clone()
    for _ in range(normalized.shape[0] + 1):
        if not current.any():
            return total
        current = current @ normalized
        total += current
    raise RuntimeError("influence did not converge: the adjacency has a cycle")


def score_threshold(scores: Tensor, fraction: float) -> Tensor:
    """The smallest score among the largest scores that together hold ``fraction`` of the total."""
    ordered = scores.flatten().sort(descending=True).values
    total = ordered.sum()
    if total <= 0:
        return ordered[-1] if fraction >= 1 else ordered[0]
    cumulative = ordered.cumsum(0) / total
    index = int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=cumulative.dtype)))
    return ordered[min(index, len(ordered) - 1)]


@dataclass
class Layout:
    """How many nodes of each kind, in the order ``[features, errors, tokens, logits]``."""

    n_features: int
    n_errors: int
    n_tokens: int
    n_logits: int

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_tokens + self.n_logits

    @property
    def error_slice(self) -> slice:
        return slice(self.n_features, self.n_features + self.n_errors)

    @property
    def token_slice(self) -> slice:
        start = self.n_features + self.n_errors
        return slice(start, start + self.n_tokens)

    @property
    def n_inner(self) -> int:
        """Features and errors: the nodes that need outgoing edges to stay."""
        return self.n_features + self.n_errors

    def logit_weights(self, probabilities: Tensor, like: Tensor) -> Tensor:
        w = torch.zeros(self.n_nodes, dtype=like.dtype, device=like.device)
        w[self.n_nodes - self.n_logits :] = probabilities.to(like)
        return w


@dataclass
class PruneResult:
    """Kept nodes ``[N]``, kept edges ``[N, N]`` (target, source) and each node's cumulative influence
    rank (the fraction of total influence held by the nodes at least as influential; viewers colour by it)."""

    node_mask: Tensor
    edge_mask: Tensor
    cumulative_scores: Tensor
    node_influence: Tensor


def prune(
    adjacency: Tensor, layout: Layout, probabilities: Tensor, node_threshold: float, edge_threshold: float
) -> PruneResult:
    """Prune by node then edge influence, then drop nodes left without edges (see the module doc)."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be within [0, 1], got {v}")
    w = layout.logit_weights(probabilities, adjacency)
    influence = total_influence(normalize_rows(adjacency), w)
    node_mask = influence >= score_threshold(influence, node_threshold)
    node_mask[layout.n_inner :] = True
    pruned = adjacency * (node_mask[:, None] & node_mask[None, :])
    normalized = normalize_rows(pruned)
    edge_scores = normalized * (total_influence(normalized, w) + w)[:, None]
    edge_mask = edge_scores >= score_threshold(edge_scores, edge_threshold)
    edge_mask &= pruned != 0
    while True:
        before = node_mask.clone()
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        node_mask[: layout.n_inner] &= edge_mask[:, : layout.n_inner].any(0)
        node_mask[: layout.n_features] &= edge_mask[: layout.n_features].any(1)
        if torch.equal(before, node_mask):
            break
    order = influence.sort(descending=True)
    cumulative = torch.zeros_like(influence)
    total = influence.sum()
    cumulative[order.indices] = order.values.cumsum(0) / (total if total > 0 else 1)
    return PruneResult(node_mask, edge_mask, cumulative, influence)


def graph_scores(adjacency: Tensor, layout: Layout, probabilities: Tensor) -> tuple[float, float]:
    """(replacement score, completeness score) of ``adjacency`` (see the module doc)."""
    w = layout.logit_weights(probabilities, adjacency)
    normalized = normalize_rows(adjacency)
    influence = total_influence(normalized, w)
    tokens = influence[layout.token_slice].sum()
    errors = influence[layout.error_slice].sum()
    replacement = tokens / (tokens + errors) if tokens + errors > 0 else tokens.new_zeros(())
    non_error = 1 - normalized[:, layout.error_slice].sum(1)
    weight = influence + w
    completeness = (non_error * weight).sum() / weight.sum()
    return float(replacement), float(completeness)
