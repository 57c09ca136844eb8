"""Helpers of the graph tests: tiny random float64 Llama models and randomly initialised transcoders for the graph tests.

Nothing is trained: the CLT and the per-layer transcoders are fresh ``build_dictionary`` objects with
their encoders scaled (and biases nudged) so that a fair share of the features fire on the prompt.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from raysae.dictionaries import build_dictionary
from raysae.lm.native import NativeLanguageModel

PROMPT = "The quick brown fox jumps over"


def tiny_llama(tokenizer, layers: int = 3, seed: int = 0) -> NativeLanguageModel:
    """A random float64 Llama (GQA, 4 heads) behind the native interface."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(cfg).to(torch.float64).eval().requires_grad_(False)
    return NativeLanguageModel(model, tokenizer, f"tiny-llama-{layers}")


def _fire(dictionary, seed: int) -> None:
    """Random encoder/decoder biases and scales so features fire and biases are non-zero (exercised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dictionary.named_parameters():
            if name.startswith("b_"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif name.startswith("W_dec"):
                p.mul_(0.5)


def random_clt(
    layers: list[int], site: str = "ln2.hook_out", act: str = "relu", seed: int = 0, d_sae: int = 24
):
    torch.manual_seed(seed)
    clt = build_dictionary(
        {
            "architecture": "clt",
            "d_model": 32,
            "d_sae": d_sae,
            "act_fn": act,
            "top_k": 4,
            "dtype": "float64",
            "hook_points_in": [f"blocks.{i}.{site}" for i in layers],
            "hook_points_out": [f"blocks.{i}.hook_mlp_out" for i in layers],
        }
    )
    _fire(clt, seed)
    with torch.no_grad():  # non-trivial norm scaling, folded into raw-space vectors by TranscoderSet
        clt.input_scale.copy_(torch.linspace(0.5, 1.5, len(layers), dtype=torch.float64))
        clt.output_scale.copy_(torch.linspace(1.2, 0.8, len(layers), dtype=torch.float64))
    return clt


def random_transcoders(layers: list[int], sites: list[str] | None = None, seed: int = 0, d_sae: int = 24):
    out = []
    for k, layer in enumerate(layers):
        torch.manual_seed(seed + k)
        site = (sites or ["ln2.hook_out"] * len(layers))[k]
        tc = build_dictionary(
            {
                "architecture": "transcoder",
                "d_model": 32,
                "d_sae": d_sae,
                "act_fn": "relu",
                "dtype": "float64",
                "hook_point_in": f"blocks.{layer}.{site}",
                "hook_point_out": f"blocks.{layer}.hook_mlp_out",
            }
        )
        _fire(tc, seed + k)
        with torch.no_grad():
            tc.input_scale.fill_(0.7 + 0.2 * k)
            tc.output_scale.fill_(1.3 - 0.1 * k)
        out.append(tc)
    return out
