"""Edges are the frozen model's direct effects: they sum to each target, match an explicit Jacobian,
and do not depend on how many targets share a backward pass."""

from __future__ import annotations

import pytest
import torch
from graph_helpers import PROMPT, random_clt, random_transcoders
from torch.autograd.functional import jacobian

from raysae.config.graphs import GraphConfig
from raysae.graphs.attribution import AttributionContext
from raysae.graphs.compute import compute_graph, compute_graphs
from raysae.graphs.graph import GraphMemoryError
from raysae.graphs.replacement import frozen_forward
from raysae.graphs.transcoders import TranscoderSet

EXACT = 1e-10  # float64 throughout the frozen pass


def _transcoder(kind: str, n_layers: int):
    layers = list(range(n_layers))
    if kind == "clt":
        return random_clt(layers)
    if kind == "clt_mlp_in_topk":
        return random_clt(layers, site="hook_mlp_in", act="topk")
    if kind == "clt_normalized":
        return random_clt(layers, site="ln2.hook_normalized")
    if kind == "partial_clt":
        return random_clt(layers[1:])
    return random_transcoders(layers)


def _graph_and_context(lm, kind, **cfg):
    settings = GraphConfig(max_feature_nodes=None, batch_size=16, **cfg)
    tc = TranscoderSet(_transcoder(kind, lm.n_layers), lm.n_layers)
    graph = compute_graph(lm, tc, PROMPT, settings, "test")
    ctx = AttributionContext(lm, tc, graph.tokens, settings.bos_features)
    return graph, ctx


@pytest.mark.parametrize("kind", ["clt", "clt_mlp_in_topk", "clt_normalized", "partial_clt", "transcoders"])
def test_incoming_edges_plus_bias_are_the_target(lm3, kind):
    """For every feature: Σ incoming edges + the zero-source value == its pre-activation (the
    dictionary's own encode_pre); for every logit: == logit − mean logit (the model's logits)."""
    graph, ctx = _graph_and_context(lm3, kind)
    layout = graph.layout
    assert layout.n_features == ctx.n_active > 10
    feats = ctx.feature_targets(torch.arange(ctx.n_active))
    got = graph.adjacency[: layout.n_features].sum(1) + ctx.bias_values(feats)
    torch.testing.assert_close(got, ctx.target_values(feats), atol=EXACT, rtol=0)
    ids, _, logits = ctx.logit_targets(10, 0.95)
    assert torch.equal(ids, graph.logit_tokens)
    got = graph.adjacency[-layout.n_logits :].sum(1) + ctx.bias_values(logits)
    torch.testing.assert_close(got, ctx.target_values(logits), atol=1e-6, rtol=0)  # HF norm: float32
    assert (
        graph.adjacency[layout.n_features : -layout.n_logits].abs().sum() == 0
    )  # no rows into errors/tokens


def test_bos_features_are_off_by_default(lm3):
    graph, _ = _graph_and_context(lm3, "clt")
    assert (graph.active_features[:, 1] > 0).all()
    with_bos, _ = _graph_and_context(lm3, "clt", bos_features=True)
    assert (with_bos.active_features[:, 1] == 0).any()


def _brute_force(lm, ctx: AttributionContext, graph) -> torch.Tensor:
    """The adjacency from the Jacobian of the frozen model's targets w.r.t. every source location."""
    tc, state = ctx.tc, ctx.state
    sites = dict(zip(tc.layers, tc.sites, strict=True))
    feats = ctx.feature_targets(graph.selected_features)
    _, _, logits = ctx.logit_targets(10, 0.95)
    n_layers, n_pos, d = lm.n_layers, ctx.n_pos, lm.d_model

    def targets(embed, mlp):
        fp = frozen_forward(lm, state, embed[None], [m[None] for m in mlp], sites)
        out = [
            fp.reads[tc.layers[g]][0, p] @ v
            for g, p, v in zip(feats.groups, feats.positions, feats.vectors, strict=True)
        ]
        out += [fp.final_out[0, -1] @ v for v in logits.vectors]
        return torch.stack(out)

    mlp = torch.stack([s.mlp_out for s in state.layers])
    j_embed, j_mlp = jacobian(targets, (state.embed, mlp))  # [n_t, T, d], [n_t, L, T, d]
    layout = graph.layout
    cols = torch.zeros(j_embed.shape[0], layout.n_nodes - layout.n_logits, dtype=torch.float64)
    for s, (layer, pos, index) in enumerate(graph.feature_nodes().tolist()):
        g, a = tc.group_of_layer(layer), graph.activation_values[graph.selected_features[s]]
        for j in tc.targets_of(g):
            dec = tc.decoder_vectors(g, j, torch.tensor([index]))[0]
            cols[:, s] += a * (j_mlp[:, tc.layers[j], pos] @ dec)
    errs = torch.einsum("nltd,ltd->nlt", j_mlp, ctx.errors).reshape(len(cols), -1)
    cols[:, layout.n_features : layout.n_features + n_layers * n_pos] = errs
    cols[:, layout.n_features + n_layers * n_pos :] = torch.einsum("ntd,td->nt", j_embed, state.embed)
    assert d == state.embed.shape[1]
    return cols


@pytest.mark.parametrize("kind", ["clt", "transcoders"])
def test_edges_equal_an_explicit_jacobian(lm2, kind):
    graph, ctx = _graph_and_context(lm2, kind)
    brute = _brute_force(lm2, ctx, graph)
    layout = graph.layout
    n_src = layout.n_nodes - layout.n_logits
    torch.testing.assert_close(
        graph.adjacency[: layout.n_features, :n_src], brute[: layout.n_features], atol=EXACT, rtol=0
    )
    torch.testing.assert_close(
        graph.adjacency[-layout.n_logits :, :n_src], brute[layout.n_features :], atol=EXACT, rtol=0
    )
    assert (brute[: layout.n_features] != 0).sum() > 20  # edges exist: the test can fail


def test_batched_targets_equal_one_per_backward(lm3):
    tc = TranscoderSet(random_clt([0, 1, 2]), 3)
    ctx = AttributionContext(lm3, tc, lm3.to_tokens(PROMPT)[0], False)
    _, _, logits = ctx.logit_targets(3, 1.0)
    index = torch.arange(0, ctx.n_active, max(1, ctx.n_active // 9))[:9]
    ctx.build_pass(12)
    mixed = ctx.feature_targets(index)
    from raysae.graphs.attribution import Targets

    both = Targets(
        *(
            torch.cat([a, b])
            for a, b in zip(
                (mixed.groups, mixed.positions, mixed.vectors, mixed.ids),
                (logits.groups, logits.positions, logits.vectors, logits.ids),
                strict=True,
            )
        )
    )
    batched = ctx.rows(both)
    ctx.build_pass(1)
    single = torch.cat([ctx.rows(both[i : i + 1]) for i in range(len(both))])
    torch.testing.assert_close(batched, single, atol=1e-13, rtol=0)
    with pytest.raises(ValueError, match="the pass holds 1"):
        ctx.rows(both)


def test_feature_budget_keeps_the_most_influential_and_the_same_edges(lm3):
    """With max_feature_nodes below the active count, the kept features' edges are the full graph's."""
    full, ctx = _graph_and_context(lm3, "clt")
    cfg = GraphConfig(max_feature_nodes=20, batch_size=4, update_interval=1)
    small = compute_graph(lm3, ctx.tc, PROMPT, cfg, "test")
    assert small.layout.n_features == 20 and full.layout.n_features > 20
    sel = small.selected_features
    keep = torch.cat([sel, torch.arange(full.layout.n_features, full.layout.n_nodes)])
    torch.testing.assert_close(small.adjacency, full.adjacency[keep][:, keep], atol=EXACT, rtol=0)
    # the logits' strongest direct feature source is among the first visited
    direct = full.adjacency[-full.layout.n_logits :, : full.layout.n_features].abs()
    weights = full.logit_probabilities[:, None] / direct.sum(1, keepdim=True)
    top = int((direct * weights).sum(0).argmax())
    assert top in sel.tolist()


SHARED_PROMPTS = [PROMPT, "A cat", "One two three four five six seven eight"]


def test_prompts_sharing_a_pass_get_the_graphs_they_get_alone(lm3):
    """Three prompts of different lengths on one pass (batch_size split between them, padded to the
    longest): each graph — visited features, adjacency, pruning, scores — is the one computed alone."""
    tc = TranscoderSet(random_clt([0, 1, 2]), 3)
    cfg = GraphConfig(max_feature_nodes=14, batch_size=9, update_interval=1, max_n_logits=4)
    shared = compute_graphs(lm3, tc, SHARED_PROMPTS, cfg, "test")
    assert len({int(lm3.to_tokens(p).shape[1]) for p in SHARED_PROMPTS}) == 3
    for prompt, got in zip(SHARED_PROMPTS, shared, strict=True):
        alone = compute_graph(lm3, tc, prompt, cfg, "test")
        assert got.scores["prompts_in_pass"] == 3 and got.scores["rows_in_pass"] == 3
        assert alone.scores["prompts_in_pass"] == 1 and alone.scores["rows_in_pass"] == 9
        assert got.graph_id == alone.graph_id and got.layout.n_features == alone.layout.n_features
        assert torch.equal(got.selected_features, alone.selected_features)
        torch.testing.assert_close(got.adjacency, alone.adjacency, atol=EXACT, rtol=0)
        assert torch.equal(got.prune_result.edge_mask, alone.prune_result.edge_mask)
        for key in ("replacement_score", "completeness_score", "pruned_replacement_score"):
            assert got.scores[key] == pytest.approx(alone.scores[key], abs=1e-9)


def test_shared_pass_over_budget_runs_prompts_alone_and_reports_each_error(lm3):
    tc = TranscoderSet(random_clt([0, 1, 2]), 3)
    cfg = GraphConfig(max_feature_nodes=8, batch_size=8)
    solo = [compute_graph(lm3, tc, p, cfg, "test") for p in SHARED_PROMPTS[:2]]
    budget = max(g.scores["memory_estimate_bytes"] for g in solo) * 1.001 / 1024**3
    tight = cfg.model_copy(update={"memory_budget_gb": budget})
    got = compute_graphs(lm3, tc, SHARED_PROMPTS[:2], tight, "test")
    assert [g.scores["prompts_in_pass"] for g in got] == [1, 1]  # together they would not fit
    for g, s in zip(got, solo, strict=True):
        torch.testing.assert_close(g.adjacency, s.adjacency, atol=EXACT, rtol=0)
    over = compute_graphs(lm3, tc, SHARED_PROMPTS, tight, "test")  # the longest prompt alone is over
    assert isinstance(over[2], GraphMemoryError) and "memory_budget_gb" in str(over[2])
    assert [g.graph_id for g in over[:2]] == [s.graph_id for s in solo]
