"""``compute_graph``: one prompt → a pruned, scored attribution ``Graph`` (the call a deployment makes)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor

from raysae.config.graphs import GraphConfig
from raysae.dictionaries import SparseDictionary
from raysae.graphs.attribution import AttributionContext
from raysae.graphs.graph import Graph, check_memory, estimate_memory, graph_id
from raysae.graphs.prune import graph_scores, normalize_rows, prune
from raysae.graphs.transcoders import TranscoderSet
from raysae.lm.model import LanguageModel

Transcoder = TranscoderSet | SparseDictionary | Sequence[SparseDictionary]


def as_transcoder_set(transcoder: Transcoder, lm: LanguageModel) -> TranscoderSet:
    return transcoder if isinstance(transcoder, TranscoderSet) else TranscoderSet(transcoder, lm.n_layers)


def partial_influence(rows: Tensor, row_nodes: Tensor, n_logits: int, probabilities: Tensor) -> Tensor:
    """Influence on the logits of every source column through the rows computed so far (logit rows
    first; ``row_nodes[r]`` is the column of row r's feature). Features without a row yet end a path."""
    normalized = normalize_rows(rows)
    weights = torch.zeros(len(rows), dtype=rows.dtype, device=rows.device)
    weights[:n_logits] = probabilities.to(rows)
    total = torch.zeros(rows.shape[1], dtype=rows.dtype, device=rows.device)
    for _ in range(len(rows) + 1):
        column = weights @ normalized
        if not column.any():
            break
        total += column
        weights = torch.zeros_like(weights)
        weights[n_logits:] = column[row_nodes[n_logits:]]
    return total


def attribute(
    ctx: AttributionContext, cfg: GraphConfig, n_visit: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(token ids, probabilities, visited feature indices, rows ``[n_logits + n_visit, n_columns]``,
    logit rows first, then features in visiting order)."""
    ids, probs, logit_targets = ctx.logit_targets(cfg.max_n_logits, cfg.desired_logit_prob)
    n_logits, bs = len(ids), cfg.batch_size
    rows = torch.zeros(n_logits + n_visit, ctx.n_columns, dtype=ctx.lm.dtype, device=ctx.lm.device)
    row_nodes = torch.zeros(n_logits + n_visit, dtype=torch.long, device=ctx.lm.device)
    for s in range(0, n_logits, bs):
        chunk = logit_targets[s : min(s + bs, n_logits)]
        rows[s : s + len(chunk)] = ctx.rows(chunk, retain=True)
    filled, visited = n_logits, torch.zeros(ctx.n_active, dtype=torch.bool, device=ctx.lm.device)
    while filled - n_logits < n_visit:
        left = n_visit - (filled - n_logits)
        if n_visit == ctx.n_active:
            pending = (~visited).nonzero().squeeze(1)[:left]
        else:
            influence = partial_influence(rows[:filled], row_nodes[:filled], n_logits, probs)
            rank = influence[: ctx.n_active].argsort(descending=True, stable=True)
            pending = rank[~visited[rank]][: min(cfg.update_interval * bs, left)]
        for s in range(0, len(pending), bs):
            index = pending[s : s + bs]
            last = filled + len(index) - n_logits >= n_visit
            rows[filled : filled + len(index)] = ctx.rows(ctx.feature_targets(index), retain=not last)
            row_nodes[filled : filled + len(index)] = index
            visited[index] = True
            filled += len(index)
    return ids, probs, row_nodes[n_logits:], rows


def assemble(
    ctx: AttributionContext, rows: Tensor, visit_order: Tensor, n_logits: int
) -> tuple[Tensor, Tensor]:
    """(selected feature indices in node order, square adjacency ``[N, N]``) from the attributed rows."""
    selected = visit_order.sort().values
    order = visit_order.argsort()
    feature_rows = rows[n_logits:][order]
    columns = torch.cat([selected, torch.arange(ctx.n_active, ctx.n_columns, device=selected.device)])
    n_sel = len(selected)
    n = n_sel + (ctx.n_layers + 1) * ctx.n_pos + n_logits
    adjacency = torch.zeros(n, n, dtype=rows.dtype, device=rows.device)
    adjacency[:n_sel, : len(columns)] = feature_rows[:, columns]
    adjacency[n - n_logits :, : len(columns)] = rows[:n_logits][:, columns]
    return selected, adjacency


def compute_graph(
    lm: LanguageModel,
    transcoder: Transcoder,
    prompt: str | Tensor,
    cfg: GraphConfig,
    dictionary_id: str = "",
) -> Graph:
    """The attribution graph of ``prompt`` (text, or token ids ``[T]``) through ``transcoder``, pruned
    and scored; raises ``GraphMemoryError`` before attributing when over ``cfg.memory_budget_gb``."""
    start = time.perf_counter()
    tc = as_transcoder_set(transcoder, lm)
    tokens = lm.to_tokens(prompt, prepend_bos=cfg.prepend_bos)[0] if isinstance(prompt, str) else prompt
    text = prompt if isinstance(prompt, str) else lm.tokenizer.decode(tokens.tolist())
    timings: dict[str, float] = {}
    ctx = AttributionContext(lm, tc, tokens, cfg.bos_features)
    n_visit = ctx.n_active if cfg.max_feature_nodes is None else min(cfg.max_feature_nodes, ctx.n_active)
    hf_cfg = lm.hf_model.config
    n_heads = hf_cfg.num_attention_heads
    batch = min(cfg.batch_size, max(n_visit, cfg.max_n_logits))
    estimate = estimate_memory(
        n_features=n_visit,
        n_layers=lm.n_layers,
        n_pos=ctx.n_pos,
        n_logits=cfg.max_n_logits,
        d_model=lm.d_model,
        n_heads=n_heads,
        head_dim=getattr(hf_cfg, "head_dim", None) or lm.d_model // n_heads,
        batch=batch,
        dtype=lm.dtype,
    )
    check_memory(estimate, cfg.memory_budget_gb)
    timings["setup"] = time.perf_counter() - start
    ctx.build_pass(batch)
    ids, probs, visit_order, rows = attribute(ctx, cfg, n_visit)
    ctx.pass_ = None  # release the retained graph
    timings["attribution"] = time.perf_counter() - start - timings["setup"]
    selected, adjacency = assemble(ctx, rows, visit_order, len(ids))
    act = ctx.active.clone()
    act[:, 0] = torch.tensor(tc.layers, device=act.device)[act[:, 0]]
    graph = Graph(
        prompt=text,
        tokens=ctx.state.tokens,
        n_layers=lm.n_layers,
        covered_layers=list(tc.layers),
        active_features=act,
        activation_values=ctx.values,
        selected_features=selected,
        logit_tokens=ids,
        logit_probabilities=probs,
        adjacency=adjacency,
        parameters={**cfg.parameters(), "prepend_bos": cfg.prepend_bos},
        dictionary_id=dictionary_id,
        model_name=lm.name,
        timings=timings,
    )
    graph.graph_id = graph_id(text, dictionary_id, graph.parameters)
    t = time.perf_counter()
    prune_and_score(graph, cfg.node_threshold, cfg.edge_threshold)
    timings["prune"] = time.perf_counter() - t
    graph.seconds = time.perf_counter() - start
    graph.scores["memory_estimate_bytes"] = float(estimate.total_bytes)
    return graph


def prune_and_score(graph: Graph, node_threshold: float, edge_threshold: float) -> None:
    """Prune ``graph`` and set its full and pruned replacement and completeness scores."""
    a, layout, p = graph.adjacency, graph.layout, graph.logit_probabilities
    result = prune(a, layout, p, node_threshold, edge_threshold)
    graph.prune_result = result
    full = graph_scores(a, layout, p)
    pruned = graph_scores(a * result.edge_mask, layout, p)
    graph.scores.update(
        replacement_score=full[0],
        completeness_score=full[1],
        pruned_replacement_score=pruned[0],
        pruned_completeness_score=pruned[1],
    )
