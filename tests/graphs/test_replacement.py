"""The frozen pass reproduces the model on its prompt, and is affine in the sources."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from graph_helpers import PROMPT, random_clt, random_transcoders

from raysae.graphs.attribution import AttributionContext
from raysae.graphs.replacement import PromptState, ReplacementError, frozen_forward
from raysae.graphs.transcoders import TranscoderSet

# transformers' RMSNorm computes in float32 even for a float64 model: the clean pass agrees to ~1e-7.
HF_TOL = 1e-6


def _hf_logits(lm, tokens):
    logits, _ = lm.forward(tokens)
    return logits[0]


def test_clean_pass_matches_the_model(lm3):
    tokens = lm3.to_tokens(PROMPT)
    state = PromptState.compute(lm3, tokens[0])
    torch.testing.assert_close(state.logits, _hf_logits(lm3, tokens), atol=HF_TOL, rtol=0)
    _, cache = lm3.forward(tokens, capture=["blocks.1.hook_mlp_out", "blocks.2.hook_resid_mid"])
    torch.testing.assert_close(
        state.layers[1].mlp_out, cache["blocks.1.hook_mlp_out"][0], atol=HF_TOL, rtol=0
    )
    torch.testing.assert_close(
        state.layers[2].resid_mid, cache["blocks.2.hook_resid_mid"][0], atol=HF_TOL, rtol=0
    )


@pytest.mark.parametrize("kind", ["clt", "transcoders", "partial_clt"])
def test_replacement_with_error_nodes_reproduces_logits(lm3, kind):
    """Features' decoders + decoder bias + error node at every MLP, through the frozen pass, give the
    model's logits; a layer the transcoder does not cover is all error."""
    if kind == "clt":
        tc = TranscoderSet(random_clt([0, 1, 2]), 3)
    elif kind == "transcoders":
        tc = TranscoderSet(
            random_transcoders([2, 0, 1], ["ln2.hook_out", "hook_mlp_in", "ln2.hook_normalized"]), 3
        )
    else:
        tc = TranscoderSet(random_clt([1, 2]), 3)
    tokens = lm3.to_tokens(PROMPT)
    ctx = AttributionContext(lm3, tc, tokens[0], bos_features=True)
    assert ctx.n_active > 0
    mlp = ctx.errors.clone()
    for g, layer in enumerate(tc.layers):
        assert not torch.allclose(ctx.errors[layer], ctx.state.layers[layer].mlp_out)
        mlp[layer] += ctx.recon[g]
    if kind == "partial_clt":
        torch.testing.assert_close(ctx.errors[0], ctx.state.layers[0].mlp_out, atol=0, rtol=0)
    sites = dict(zip(tc.layers, tc.sites, strict=True))
    fp = frozen_forward(lm3, ctx.state, ctx.state.embed[None], [m[None] for m in mlp], sites)
    torch.testing.assert_close(fp.logits(lm3)[0], _hf_logits(lm3, tokens), atol=HF_TOL, rtol=0)


def test_frozen_pass_is_affine(lm3):
    """f(a x + b y) = a f(x) + b f(y) when a + b = 1 (biases carried once): the map is linear."""
    state = PromptState.compute(lm3, lm3.to_tokens(PROMPT)[0])
    g = torch.Generator().manual_seed(0)
    shape = (1, *state.embed.shape)
    x = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(lm3.n_layers + 1)]
    y = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(lm3.n_layers + 1)]
    sites = {1: "ln2_out"}

    def run(srcs):
        fp = frozen_forward(lm3, state, srcs[0], srcs[1:], sites)
        return torch.cat([fp.final_out.flatten(), fp.reads[1].flatten()])

    mix = [0.3 * a + 0.7 * b for a, b in zip(x, y, strict=True)]
    torch.testing.assert_close(run(mix), 0.3 * run(x) + 0.7 * run(y), atol=1e-12, rtol=0)


def test_other_architectures_are_refused():
    fake = SimpleNamespace(hf_model=SimpleNamespace(config=SimpleNamespace(model_type="gpt2")))
    with pytest.raises(ReplacementError, match="gpt2"):
        PromptState.compute(fake, torch.tensor([1, 2]))  # type: ignore[arg-type]


@pytest.mark.slow
def test_smollm_replacement_and_linearity(smollm):
    """On the real SmolLM2 (float32): the replacement with error nodes gives the model's logits, and a
    random CLT on layers 2 and 5 (the rest pure error) has edges that sum to their targets."""
    from raysae.dictionaries import build_dictionary

    torch.manual_seed(0)
    clt = build_dictionary(
        {
            "architecture": "clt",
            "d_model": 576,
            "d_sae": 256,
            "act_fn": "topk",
            "top_k": 8,
            "hook_points_in": ["blocks.2.ln2.hook_out", "blocks.5.hook_mlp_in"],
            "hook_points_out": ["blocks.2.hook_mlp_out", "blocks.5.hook_mlp_out"],
        }
    )
    tc = TranscoderSet(clt, smollm.n_layers)
    tokens = smollm.to_tokens(PROMPT)
    ctx = AttributionContext(smollm, tc, tokens[0], bos_features=False)
    mlp = ctx.errors.clone()
    for g, layer in enumerate(tc.layers):
        mlp[layer] += ctx.recon[g]
    sites = dict(zip(tc.layers, tc.sites, strict=True))
    fp = frozen_forward(smollm, ctx.state, ctx.state.embed[None], [m[None] for m in mlp], sites)
    torch.testing.assert_close(fp.logits(smollm)[0], _hf_logits(smollm, tokens), atol=2e-3, rtol=1e-4)
    ctx.build_pass(16)
    targets = ctx.feature_targets(torch.arange(0, ctx.n_active, ctx.n_active // 16)[:16])
    got = ctx.rows(targets).sum(1) + ctx.bias_values(targets)
    torch.testing.assert_close(got, ctx.target_values(targets), atol=1e-3, rtol=1e-3)
