"""The native backend: a transformers Llama-family model whose decoder blocks are run one by one here.

Every TransformerLens hook point (see ``raysae.lm.hooks``) is then a plain tensor we can record or
replace, and the forward pass returns as soon as the deepest requested hook is computed, which makes
this the fastest backend for activation extraction. It relies on the block layout of the pre-norm
decoders it names (``SUPPORTED_MODEL_TYPES``); other architectures go through the TransformerLens
bridge (``raysae.lm.bridge``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_causal_mask

from raysae.lm.errors import ModelLoadError
from raysae.lm.model import HookRouter, LanguageModel, Unembed

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class NativeLanguageModel(LanguageModel):
    """A Llama-family causal LM run block by block (``ModelConfig.backend = "native"``)."""

    backend: ClassVar[str] = "native"
    batch_fork: ClassVar[bool] = True

    def __init__(self, hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = ""):
        model_type = getattr(hf_model.config, "model_type", "?")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(
                f"model type {model_type!r} is not supported (pre-norm decoders: {', '.join(SUPPORTED_MODEL_TYPES)}); "
                'the backend "transformer_lens" runs other architectures'
            )
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.name = name or getattr(hf_model.config, "_name_or_path", model_type)
        self._body = hf_model.model
        self.n_layers = hf_model.config.num_hidden_layers
        self.d_model = hf_model.config.hidden_size
        self.d_vocab = hf_model.config.vocab_size
        self._set_tokens(tokenizer)

    @property
    def device(self) -> torch.device:
        return self.hf_model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.lm_head.weight.dtype

    @property
    def unembed(self) -> Unembed:
        """Final norm and ``W_U`` (tied to the embeddings for SmolLM2)."""
        head = self.hf_model.lm_head
        return Unembed(self._body.norm, head.weight.T, getattr(head, "bias", None))

    def _run(self, tokens: Tensor, router: HookRouter, return_logits: bool) -> Tensor:
        body = self._body
        site = router
        h = site(-1, "embed", body.embed_tokens(tokens))
        position_ids = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        # mask and rotary tables from one row: they broadcast over any batch, so a replacement may grow
        # the batch mid-pass (forward_variants)
        mask = create_causal_mask(
            config=body.config,
            inputs_embeds=h[:1],
            attention_mask=None,
            cache=None,
            position_ids=position_ids,
        )
        rope = body.rotary_emb(h[:1], position_ids=position_ids)
        for i, layer in enumerate(body.layers[: self.n_layers]):
            h = site(i, "resid_pre", h)
            x = _norm(layer.input_layernorm, h, i, "ln1", router)
            x = site(i, "ln1_out", x)
            attn, _ = layer.self_attn(
                hidden_states=x, attention_mask=mask, position_ids=position_ids, position_embeddings=rope
            )
            h = _add(h, site(i, "attn_out", attn))
            h = site(i, "resid_mid", h)
            x = site(i, "mlp_in", h)
            x = _norm(layer.post_attention_layernorm, x, i, "ln2", router)
            x = site(i, "ln2_out", x)
            h = _add(h, site(i, "mlp_out", layer.mlp(x)))
            h = site(i, "resid_post", h)
        n = self.n_layers
        h = site(n, "final_in", h)
        h = _norm(body.norm, h, n, "final", router)
        h = site(n, "final_out", h)
        return self.hf_model.lm_head(h)


def _add(h: Tensor, branch: Tensor) -> Tensor:
    """``h + branch``; when a replacement grew the branch's batch k-fold (forward_variants), the
    residual is repeated to match (the variants are stacked along the batch)."""
    if branch.shape[0] != h.shape[0]:
        h = h.repeat(branch.shape[0] // h.shape[0], *([1] * (h.dim() - 1)))
    return h + branch


def _norm(module: nn.Module, x: Tensor, layer: int, prefix: str, router: HookRouter) -> Tensor:
    """Apply an RMSNorm; split into normalise and scale when its ``*_normalized`` hook is in use."""
    if (layer, f"{prefix}_normalized") not in router:
        return module(x)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    x32 = x.to(torch.float32)
    normalized = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    normalized = router(layer, f"{prefix}_normalized", normalized)
    return module.weight * normalized
