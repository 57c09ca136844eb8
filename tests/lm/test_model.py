"""The hooked SmolLM2: hook values against HF's own forward, early stop, loss, replacement, unembedding."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

TEXT = "The quick brown fox jumps over the lazy dog. It was a sunny day, and the children played outside."


@pytest.fixture(scope="module")
def tokens(smollm):
    return smollm.to_tokens(TEXT)


def hf_reference(smollm, tokens, layer):
    """Activations of block ``layer`` from plain forward hooks on HF's own full forward pass."""
    got = {}
    block = smollm.hf_model.model.layers[layer]
    handles = [
        block.register_forward_pre_hook(
            lambda m, a, kw: got.__setitem__("resid_pre", a[0] if a else kw["hidden_states"]),
            with_kwargs=True,
        ),
        block.register_forward_hook(
            lambda m, a, o: got.__setitem__("resid_post", o[0] if isinstance(o, tuple) else o)
        ),
        block.self_attn.register_forward_hook(lambda m, a, o: got.__setitem__("attn_out", o[0])),
        block.post_attention_layernorm.register_forward_pre_hook(
            lambda m, a: got.__setitem__("resid_mid", a[0])
        ),
        block.post_attention_layernorm.register_forward_hook(lambda m, a, o: got.__setitem__("ln2_out", o)),
        block.mlp.register_forward_hook(lambda m, a, o: got.__setitem__("mlp_out", o)),
    ]
    try:
        with torch.inference_mode():
            logits = smollm.hf_model(tokens).logits
    finally:
        for h in handles:
            h.remove()
    return got, logits


def test_hooks_match_hf_forward(smollm, tokens):
    ref, ref_logits = hf_reference(smollm, tokens, 2)
    names = {
        "resid_pre": "blocks.2.hook_resid_pre",
        "attn_out": "blocks.2.hook_attn_out",
        "resid_mid": "blocks.2.hook_resid_mid",
        "ln2_out": "blocks.2.ln2.hook_out",
        "mlp_out": "blocks.2.hook_mlp_out",
        "resid_post": "blocks.2.hook_resid_post",
    }
    with torch.inference_mode():
        logits, cache = smollm.forward(
            tokens, capture=[*names.values(), "blocks.2.hook_mlp_in", "blocks.2.mlp.hook_in"]
        )
    for site, hook in names.items():
        assert torch.equal(cache[hook], ref[site]), hook
    assert torch.equal(cache["blocks.2.hook_mlp_in"], ref["resid_mid"])
    assert torch.equal(cache["blocks.2.mlp.hook_in"], ref["ln2_out"])
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    assert cache["blocks.2.hook_resid_post"].shape == (1, tokens.shape[1], smollm.d_model)


def test_normalized_hooks(smollm, tokens):
    cache = smollm.run_with_hooks(
        tokens, ["blocks.2.hook_resid_mid", "blocks.2.ln2.hook_normalized", "blocks.2.ln2.hook_out"]
    )
    x = cache["blocks.2.hook_resid_mid"]
    normalized = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + smollm.hf_model.config.rms_norm_eps)
    torch.testing.assert_close(cache["blocks.2.ln2.hook_normalized"], normalized)
    ln2 = smollm.hf_model.model.layers[2].post_attention_layernorm
    torch.testing.assert_close(cache["blocks.2.ln2.hook_out"], ln2.weight * normalized)


def test_forward_stops_after_the_deepest_hook(smollm, tokens):
    calls = {i: 0 for i in range(4)}
    layers = smollm.hf_model.model.layers
    handles = [
        layers[i].mlp.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i in range(4)
    ]
    try:
        cache = smollm.run_with_hooks(tokens, ["blocks.1.hook_resid_post", "blocks.2.hook_attn_out"])
    finally:
        for h in handles:
            h.remove()
    assert set(cache) == {"blocks.1.hook_resid_post", "blocks.2.hook_attn_out"}
    assert calls == {0: 1, 1: 1, 2: 0, 3: 0}  # block 2 stops before its MLP


def test_model_is_sane(smollm):
    logits = smollm.forward(smollm.to_tokens("The capital of France is"))[0]
    assert smollm.tokenizer.decode(int(logits[0, -1].argmax())) == " Paris"
    loss = smollm.loss(smollm.to_tokens(TEXT))
    assert 1.0 < loss.mean().item() < 4.0


def test_loss_matches_hf_and_replacement(smollm, tokens):
    loss = smollm.loss(tokens)
    assert loss.shape == (1, tokens.shape[1] - 1)
    with torch.inference_mode():
        hf_loss = smollm.hf_model(tokens, labels=tokens).loss
    torch.testing.assert_close(loss.mean(), hf_loss, rtol=1e-5, atol=1e-5)

    same, logits = smollm.loss_with_replacement(tokens, "blocks.3.hook_resid_post", lambda x: x)
    torch.testing.assert_close(same, loss)
    assert logits.shape == (1, tokens.shape[1], smollm.d_vocab)
    ablated, _ = smollm.loss_with_replacement(tokens, "blocks.3.hook_mlp_out", torch.zeros_like)
    assert ablated.mean() > loss.mean() + 0.05
    # Replacing the MLP branch's input (hook_mlp_in) leaves the residual stream alone, unlike resid_mid.
    _, cache = smollm.forward(
        tokens, capture=["blocks.3.hook_resid_post"], replace={"blocks.3.hook_mlp_in": torch.zeros_like}
    )
    _, ref = smollm.forward(tokens, capture=["blocks.3.hook_resid_mid", "blocks.3.hook_resid_post"])
    mlp_of_zero = smollm.hf_model.model.layers[3].mlp(torch.zeros_like(ref["blocks.3.hook_resid_mid"]))
    torch.testing.assert_close(
        cache["blocks.3.hook_resid_post"], ref["blocks.3.hook_resid_mid"] + mlp_of_zero
    )


def test_unembed_gives_the_logits(smollm, tokens):
    logits, cache = smollm.forward(tokens, capture=["ln_final.hook_in"])
    u = smollm.unembed
    assert u.W_U.shape == (smollm.d_model, smollm.d_vocab)
    torch.testing.assert_close(u(cache["ln_final.hook_in"]), logits, rtol=1e-5, atol=1e-4)


def test_names_agree_with_transformer_lens(smollm, tokens):
    """Our hook names give the same tensors as TransformerLens 4's TransformerBridge."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        hf_model=smollm.hf_model,
        tokenizer=smollm.tokenizer,
        device="cpu",
    )
    names = [
        "hook_embed",
        *(
            f"blocks.1.{s}"
            for s in ("hook_resid_pre", "ln1.hook_normalized", "ln1.hook_out", "hook_attn_out")
        ),
        *(
            f"blocks.1.{s}"
            for s in (
                "hook_resid_mid",
                "ln2.hook_normalized",
                "mlp.hook_in",
                "hook_mlp_out",
                "hook_resid_post",
            )
        ),
        "ln_final.hook_normalized",
    ]
    _, tl_cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    ours = smollm.run_with_hooks(tokens, names)
    for name in names:
        torch.testing.assert_close(ours[name], tl_cache[name], rtol=0, atol=1e-6, msg=name)
