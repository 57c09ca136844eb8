"""``compute_graph``: one prompt → a pruned, scored attribution ``Graph`` (the call a deployment makes)."""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from raysae.config.graphs import GraphConfig
from raysae.dictionaries import SparseDictionary
from raysae.errors import RaysaeError
from raysae.graphs.attribution import AttributionContext, SharedPass, Targets
from raysae.graphs.graph import (
    Graph,
    GraphMemoryError,
    MemoryEstimate,
    check_memory,
    estimate_memory,
    graph_id,
)
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


Plan = Generator[Targets, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]


def attribution_plan(ctx: AttributionContext, cfg: GraphConfig, n_visit: int, batch: int) -> Plan:
    """The targets of one prompt, ``batch`` at a time: yields a chunk of targets, receives its rows;
    returns (token ids, probabilities, visited feature indices, rows ``[n_logits + n_visit,
    n_columns]``, logit rows first, then features in visiting order). A generator, so that several
    prompts' chunks can share one backward (``attribute_many``)."""
    ids, probs, logit_targets = ctx.logit_targets(cfg.max_n_logits, cfg.desired_logit_prob)
    n_logits = len(ids)
    rows = torch.zeros(n_logits + n_visit, ctx.n_columns, dtype=ctx.lm.dtype, device=ctx.lm.device)
    row_nodes = torch.zeros(n_logits + n_visit, dtype=torch.long, device=ctx.lm.device)
    for s in range(0, n_logits, batch):
        chunk = logit_targets[s : min(s + batch, n_logits)]
        rows[s : s + len(chunk)] = yield chunk
    filled, visited = n_logits, torch.zeros(ctx.n_active, dtype=torch.bool, device=ctx.lm.device)
    while filled - n_logits < n_visit:
        left = n_visit - (filled - n_logits)
        if n_visit == ctx.n_active:
            pending = (~visited).nonzero().squeeze(1)[:left]
        else:
            influence = partial_influence(rows[:filled], row_nodes[:filled], n_logits, probs)
            rank = influence[: ctx.n_active].argsort(descending=True, stable=True)
            # re-ranked every update_interval × batch_size visits, whatever the rows per backward: a
            # prompt sharing a pass visits the features it would visit alone
            pending = rank[~visited[rank]][: min(cfg.update_interval * cfg.batch_size, left)]
        for s in range(0, len(pending), batch):
            index = pending[s : s + batch]
            rows[filled : filled + len(index)] = yield ctx.feature_targets(index)
            row_nodes[filled : filled + len(index)] = index
            visited[index] = True
            filled += len(index)
    return ids, probs, row_nodes[n_logits:], rows


def attribute_many(
    contexts: list[AttributionContext], plans: list[Plan], rows: list[int]
) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Run the plans of several prompts on one shared pass (``rows[i]`` batch rows for prompt i): each
    backward carries the next chunk of every unfinished prompt. The pass is released at the end."""
    shared = SharedPass(contexts, rows)
    results: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
    pending: dict[int, Targets] = {}
    for i, plan in enumerate(plans):
        try:
            pending[i] = next(plan)
        except StopIteration as done:
            results[i] = done.value
    while pending:
        answers = shared.rows(pending)
        for i, got in answers.items():
            try:
                pending[i] = plans[i].send(got)
            except StopIteration as done:
                results[i] = done.value
                del pending[i]
    return [results[i] for i in range(len(plans))]


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


@dataclass
class _Prepared:
    """One prompt ready to attribute: its text, context, feature budget and set-up timings."""

    text: str
    ctx: AttributionContext
    n_visit: int
    started: float
    timings: dict[str, float] = field(default_factory=dict)


def _prepare(lm: LanguageModel, tc: TranscoderSet, prompt: str | Tensor, cfg: GraphConfig) -> _Prepared:
    start = time.perf_counter()
    tokens = lm.to_tokens(prompt, prepend_bos=cfg.prepend_bos)[0] if isinstance(prompt, str) else prompt
    text = prompt if isinstance(prompt, str) else lm.tokenizer.decode(tokens.tolist())
    ctx = AttributionContext(lm, tc, tokens, cfg.bos_features)
    n_visit = ctx.n_active if cfg.max_feature_nodes is None else min(cfg.max_feature_nodes, ctx.n_active)
    return _Prepared(text, ctx, n_visit, start, {"setup": time.perf_counter() - start})


def _estimate(lm: LanguageModel, cfg: GraphConfig, n_visit: int, n_pos: int, batch: int) -> MemoryEstimate:
    hf_cfg = lm.hf_model.config
    n_heads = hf_cfg.num_attention_heads
    return estimate_memory(
        n_features=n_visit,
        n_layers=lm.n_layers,
        n_pos=n_pos,
        n_logits=cfg.max_n_logits,
        d_model=lm.d_model,
        n_heads=n_heads,
        head_dim=getattr(hf_cfg, "head_dim", None) or lm.d_model // n_heads,
        batch=batch,
        dtype=lm.dtype,
    )


def _pass_rows(cfg: GraphConfig, prepared: list[_Prepared]) -> list[int]:
    """Batch rows of each prompt in a shared pass: ``batch_size`` split evenly, no more than it uses."""
    share = max(1, cfg.batch_size // len(prepared))
    return [min(share, max(p.n_visit, cfg.max_n_logits)) for p in prepared]


def _fits(lm: LanguageModel, cfg: GraphConfig, prepared: list[_Prepared], rows: list[int]) -> MemoryEstimate:
    """The shared pass's estimate (every prompt's adjacency, the pass at the longest prompt), checked
    against ``memory_budget_gb`` (``GraphMemoryError`` when over)."""
    n_pos = max(p.ctx.n_pos for p in prepared)
    parts = [_estimate(lm, cfg, p.n_visit, n_pos, r) for p, r in zip(prepared, rows, strict=True)]
    estimate = MemoryEstimate(
        sum(e.n_nodes for e in parts),
        sum(e.adjacency_bytes for e in parts),
        sum(e.activation_bytes for e in parts),
    )
    check_memory(estimate, cfg.memory_budget_gb)
    return estimate


def compute_graphs(
    lm: LanguageModel,
    transcoder: Transcoder,
    prompts: Sequence[str | Tensor],
    cfg: GraphConfig,
    dictionary_id: str = "",
) -> list[Graph | RaysaeError]:
    """The graph of each prompt (or the user error that stopped it: a prompt the model cannot freeze,
    a graph over ``cfg.memory_budget_gb``). The prompts share one pass, ``batch_size`` rows split
    between them, so each backward carries targets of all of them; each graph is the one
    ``compute_graph`` gives alone. Prompts whose shared pass would exceed the budget run one by one."""
    tc = as_transcoder_set(transcoder, lm)
    out: list[Graph | RaysaeError | None] = [None] * len(prompts)
    ready: list[tuple[int, _Prepared]] = []
    for i, prompt in enumerate(prompts):
        try:
            ready.append((i, _prepare(lm, tc, prompt, cfg)))
        except RaysaeError as err:
            out[i] = err
    groups = [ready] if ready else []
    if len(ready) > 1:
        try:
            _fits(lm, cfg, [p for _, p in ready], _pass_rows(cfg, [p for _, p in ready]))
        except GraphMemoryError:
            groups = [[item] for item in ready]
    for group in groups:
        prepared = [p for _, p in group]
        rows = _pass_rows(cfg, prepared)
        try:
            estimate = _fits(lm, cfg, prepared, rows)
        except GraphMemoryError as err:
            for i, _ in group:
                out[i] = err
            continue
        t = time.perf_counter()
        plans = [attribution_plan(p.ctx, cfg, p.n_visit, r) for p, r in zip(prepared, rows, strict=True)]
        results = attribute_many([p.ctx for p in prepared], plans, rows)
        shared_s = time.perf_counter() - t
        for (i, p), r, got in zip(group, rows, results, strict=True):
            p.timings["attribution"] = shared_s
            graph = _finish(lm, tc, cfg, dictionary_id, p, got)
            graph.scores["memory_estimate_bytes"] = float(estimate.total_bytes)
            graph.scores["prompts_in_pass"] = float(len(group))
            graph.scores["rows_in_pass"] = float(r)
            out[i] = graph
    return out  # type: ignore[return-value]


def compute_graph(
    lm: LanguageModel,
    transcoder: Transcoder,
    prompt: str | Tensor,
    cfg: GraphConfig,
    dictionary_id: str = "",
) -> Graph:
    """The attribution graph of ``prompt`` (text, or token ids ``[T]``) through ``transcoder``, pruned
    and scored; raises ``GraphMemoryError`` before attributing when over ``cfg.memory_budget_gb``."""
    (got,) = compute_graphs(lm, transcoder, [prompt], cfg, dictionary_id)
    if isinstance(got, RaysaeError):
        raise got
    return got


def _finish(
    lm: LanguageModel,
    tc: TranscoderSet,
    cfg: GraphConfig,
    dictionary_id: str,
    p: _Prepared,
    attributed: tuple[Tensor, Tensor, Tensor, Tensor],
) -> Graph:
    ids, probs, visit_order, rows = attributed
    ctx = p.ctx
    selected, adjacency = assemble(ctx, rows, visit_order, len(ids))
    act = ctx.active.clone()
    act[:, 0] = torch.tensor(tc.layers, device=act.device)[act[:, 0]]
    graph = Graph(
        prompt=p.text,
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
        timings=p.timings,
    )
    graph.graph_id = graph_id(p.text, dictionary_id, graph.parameters)
    t = time.perf_counter()
    prune_and_score(graph, cfg.node_threshold, cfg.edge_threshold)
    p.timings["prune"] = time.perf_counter() - t
    graph.seconds = time.perf_counter() - p.started
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
