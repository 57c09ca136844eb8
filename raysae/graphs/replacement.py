"""The frozen, linear forward pass of a Llama-family model on one prompt (the local replacement model).

On the prompt, a clean pass (``PromptState.compute``) records every RMSNorm's scale ``1/rms(x)``, every
attention pattern ``softmax(QKᵀ)`` and every MLP output. ``frozen_forward`` then runs the blocks again
with those held constant: a norm is ``w ⊙ x · scale``, attention is ``o_proj(pattern · v_proj(x))``
(V stays linear, the pattern is a constant), and each MLP's output is an input of the pass. What is
left is linear (affine, with the projections' biases) in the token embeddings and MLP outputs, which is
what makes direct effects exact (circuit-tracer: "gradients flow only through linear components").

The blocks are run here, not through ``raysae.lm.native``, because freezing needs the attention
pattern and the norm denominators as separate tensors; the layout (``input_layernorm``, ``self_attn``,
``post_attention_layernorm``, ``mlp``, ``norm``, ``lm_head``) is the one the native backend runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from raysae.errors import RaysaeError
from raysae.lm.model import LanguageModel
from raysae.lm.native import SUPPORTED_MODEL_TYPES


class ReplacementError(RaysaeError, ValueError):
    """The model cannot be frozen here (another architecture, a prompt past a sliding window)."""


def _rms_scale(norm: nn.Module, x: Tensor) -> Tensor:
    """``1/sqrt(mean(x²) + eps)`` ``[..., 1]``, computed in float32 as transformers' RMSNorm does."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    x32 = x.to(torch.float32) if x.dtype != torch.float64 else x
    return torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)


@dataclass
class LayerState:
    """What the clean pass froze in one block: norm scales ``[T, 1]``, the pattern ``[H, T, T]``, and
    the MLP's input (before and after its norm) and true output ``[T, d_model]``."""

    scale1: Tensor
    pattern: Tensor
    scale2: Tensor
    resid_mid: Tensor
    mlp_out: Tensor


@dataclass
class PromptState:
    """The clean pass of one prompt: embeddings, per-block frozen values, final scale and logits."""

    tokens: Tensor
    embed: Tensor
    layers: list[LayerState]
    final_scale: Tensor
    logits: Tensor

    @classmethod
    @torch.no_grad()
    def compute(cls, lm: LanguageModel, tokens: Tensor) -> PromptState:
        """Run ``tokens`` ``[T]`` through ``lm`` block by block, recording what the frozen pass holds."""
        hf = lm.hf_model
        model_type = getattr(hf.config, "model_type", "?")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ReplacementError(
                f"attribution graphs freeze Llama-family models ({', '.join(SUPPORTED_MODEL_TYPES)}), "
                f"not {model_type!r}"
            )
        body = hf.model
        tokens = tokens.to(lm.device).reshape(-1)
        n = tokens.shape[0]
        h = body.embed_tokens(tokens[None])
        embed = h[0].clone()
        position_ids = torch.arange(n, device=h.device)[None]
        cos, sin = body.rotary_emb(h, position_ids=position_ids)
        states = []
        for layer in body.layers[: lm.n_layers]:
            attn = layer.self_attn
            window = getattr(attn, "sliding_window", None)
            if model_type == "mistral":
                window = getattr(hf.config, "sliding_window", None)
            if window is not None and n > window:
                raise ReplacementError(f"the prompt has {n} tokens, past the sliding window ({window})")
            s1 = _rms_scale(layer.input_layernorm, h)
            x = layer.input_layernorm.weight * (h * s1)
            pattern = _pattern(attn, x, cos, sin)
            h = h + _attention(attn, x, pattern)
            s2 = _rms_scale(layer.post_attention_layernorm, h)
            mlp = layer.mlp(layer.post_attention_layernorm.weight * (h * s2))
            states.append(LayerState(s1[0], pattern, s2[0], h[0].clone(), mlp[0].clone()))
            h = h + mlp
        sf = _rms_scale(body.norm, h)
        logits = hf.lm_head(body.norm.weight * (h * sf))[0]
        return cls(tokens, embed, states, sf[0], logits)


def _pattern(attn: nn.Module, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The causal attention pattern ``[H, T, T]`` of one unpadded prompt (batch 1), as eager attention
    computes it (softmax in float32)."""
    rope = importlib.import_module(type(attn).__module__).apply_rotary_pos_emb
    shape = (*x.shape[:-1], -1, attn.head_dim)
    q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
    if hasattr(attn, "q_norm"):  # Qwen3 normalises queries and keys per head
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    k = k.repeat_interleave(attn.num_key_value_groups, dim=1)
    scores = (q @ k.transpose(2, 3)) * attn.scaling
    n = x.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(x.dtype)[0]


Pattern = Tensor | list[tuple[int, int, Tensor]]
"""A prompt's pattern ``[H, T, T]``, or per row segment ``(start, stop, pattern)`` of a shared pass."""


def _attention(attn: nn.Module, x: Tensor, pattern: Pattern) -> Tensor:
    """``o_proj(pattern · v_proj(x))`` for ``x`` ``[B, T, d]`` and a constant pattern ``[H, T, T]``.

    The batch is folded into the value width (``[H, T, B·head_dim]``) so the pattern is never expanded
    to ``[B, H, T, T]``: one bmm per block whatever the number of targets in the batch. A shared pass
    (rows of several prompts) gives one pattern per segment of rows: one bmm per prompt."""
    if isinstance(pattern, list):
        return torch.cat([_attention(attn, x[a:b], p) for a, b, p in pattern])
    b, n, _ = x.shape
    v = attn.v_proj(x).view(b, n, -1, attn.head_dim)  # [B, T, Hkv, hd]
    v = v.repeat_interleave(attn.num_key_value_groups, dim=2)
    heads = v.shape[2]
    v = v.permute(2, 1, 0, 3).reshape(heads, n, b * attn.head_dim)
    out = (pattern @ v).view(heads, n, b, attn.head_dim).permute(2, 1, 0, 3).reshape(b, n, -1)
    return attn.o_proj(out)


@dataclass
class StackedLayer:
    """One block's frozen values for a shared pass: scales ``[B, T, 1]``, a pattern per row segment."""

    scale1: Tensor
    pattern: Pattern
    scale2: Tensor


@dataclass
class StackedState:
    """The frozen values of several prompts for one pass whose batch rows are split between them
    (``rows[i]`` rows for prompt i, in order); prompts are right-padded to the longest. A padded
    position has zero embedding, zero MLP output, zero scales and a zero pattern row and column, and
    causal attention never reads it from a real position, so it changes no real position's value."""

    layers: list[StackedLayer]
    final_scale: Tensor
    n_pos: int

    @classmethod
    def stack(cls, states: list[PromptState], rows: list[int]) -> StackedState:
        n = max(s.tokens.shape[0] for s in states)
        starts = [sum(rows[:i]) for i in range(len(rows))]

        def scales(per_prompt: list[Tensor]) -> Tensor:  # [T_i, 1] per prompt → [B, T, 1]
            return torch.cat(
                [pad_positions(t, n).expand(r, n, 1) for t, r in zip(per_prompt, rows, strict=True)]
            )

        layers = []
        for i in range(len(states[0].layers)):
            frozen = [s.layers[i] for s in states]
            patterns = [
                (a, a + r, nn.functional.pad(f.pattern, (0, n - f.pattern.shape[-1]) * 2))
                for a, r, f in zip(starts, rows, frozen, strict=True)
            ]
            layers.append(
                StackedLayer(scales([f.scale1 for f in frozen]), patterns, scales([f.scale2 for f in frozen]))
            )
        return cls(layers, scales([s.final_scale for s in states]), n)


def pad_positions(t: Tensor, n: int) -> Tensor:
    """``t`` ``[T, ...]`` with zeros appended along positions up to ``n``."""
    return torch.cat([t, t.new_zeros(n - t.shape[0], *t.shape[1:])]) if t.shape[0] < n else t


@dataclass
class FrozenPass:
    """One frozen forward: the reads ``{layer: [B, T, d]}`` at the transcoders' input sites, the final
    norm's output ``[B, T, d]`` and the logits of the last position ``[B, vocab]``."""

    reads: dict[int, Tensor]
    final_out: Tensor

    def logits(self, lm: LanguageModel) -> Tensor:
        return lm.hf_model.lm_head(self.final_out)


def frozen_forward(
    lm: LanguageModel,
    state: PromptState | StackedState,
    embed: Tensor,
    mlp_outs: list[Tensor],
    read_sites: dict[int, str],
) -> FrozenPass:
    """Run the frozen model on sources: ``embed`` ``[B, T, d]`` and one ``[B, T, d]`` MLP output per layer.

    ``read_sites`` maps a layer to the site read there (``mlp_in``/``resid_mid``, ``ln2_normalized``,
    ``ln2_out``). Every operation is affine in the sources; gradients flow through it unchanged."""
    body = lm.hf_model.model
    h = embed
    reads: dict[int, Tensor] = {}
    for i, (layer, frozen) in enumerate(zip(body.layers[: lm.n_layers], state.layers, strict=True)):
        x = layer.input_layernorm.weight * (h * frozen.scale1)
        h = h + _attention(layer.self_attn, x, frozen.pattern)
        site = read_sites.get(i)
        if site in ("mlp_in", "resid_mid"):
            reads[i] = h
        elif site == "ln2_normalized":
            reads[i] = h * frozen.scale2
        elif site == "ln2_out":
            reads[i] = layer.post_attention_layernorm.weight * (h * frozen.scale2)
        h = h + mlp_outs[i]
    return FrozenPass(reads, body.norm.weight * (h * state.final_scale))


def read_clean(lm: LanguageModel, state: PromptState, layer: int, site: str) -> Tensor:
    """The clean value ``[T, d]`` at a transcoder input site of ``layer``."""
    frozen = state.layers[layer]
    if site in ("mlp_in", "resid_mid"):
        return frozen.resid_mid
    if site == "ln2_normalized":
        return frozen.resid_mid * frozen.scale2
    weight = lm.hf_model.model.layers[layer].post_attention_layernorm.weight
    return weight * (frozen.resid_mid * frozen.scale2)
