"""The language-model wrapper: hook capture, early stop, activation replacement, loss and unembedding.

One backend: a transformers Llama-family model whose decoder blocks are run one by one here, so every
TransformerLens hook point (see ``raysae.lm.hooks``) is a plain tensor we can record or replace, and the
forward pass returns as soon as the deepest requested hook is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_causal_mask

from raysae.config.data import ModelConfig
from raysae.lm.errors import ModelLoadError
from raysae.lm.hooks import HookPoint, all_hook_names, parse_hook
from raysae.lm.loader import load_model

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
HookFn = Callable[[Tensor], Tensor]


class _Stop(Exception):
    """Raised inside the forward pass once every requested hook has been recorded."""


@dataclass
class Unembed:
    """The model's head: final RMSNorm then ``W_U`` ([d_model, d_vocab]); for direct logit attribution."""

    final_norm: nn.Module
    W_U: Tensor
    b_U: Tensor | None

    def __call__(self, resid: Tensor, apply_norm: bool = True) -> Tensor:
        """Logits of a residual-stream tensor [..., d_model]."""
        x = self.final_norm(resid) if apply_norm else resid
        out = x @ self.W_U
        return out + self.b_U if self.b_U is not None else out


class LanguageModel:
    """A causal LM behind raysae's interface; tokens are int tensors [batch, seq]."""

    def __init__(self, hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = ""):
        model_type = getattr(hf_model.config, "model_type", "?")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(
                f"model type {model_type!r} is not supported (pre-norm decoders: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.name = name or getattr(hf_model.config, "_name_or_path", model_type)
        self._body = hf_model.model
        self.n_layers: int = hf_model.config.num_hidden_layers
        self.d_model: int = hf_model.config.hidden_size
        self.d_vocab: int = hf_model.config.vocab_size
        bos = tokenizer.bos_token_id
        if bos is None:
            raise ModelLoadError(f"{self.name}: the tokenizer has no BOS token")
        self.bos_token_id: int = bos
        self.pad_token_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> LanguageModel:
        """Load the model named by ``cfg`` (see ``raysae.lm.loader.load_model``)."""
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        model, tokenizer = load_model(cfg)
        return cls(model, tokenizer, cfg.name)

    @property
    def device(self) -> torch.device:
        return self.hf_model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hf_model.lm_head.weight.dtype

    def hook_names(self) -> list[str]:
        """Every hook point of this model, aliases included, in forward order."""
        return all_hook_names(self.n_layers)

    def check_hooks(self, hooks: Iterable[str]) -> list[HookPoint]:
        """Parse hook names against this model's depth; raises ``HookError`` naming a bad one."""
        return [parse_hook(h, self.n_layers) for h in hooks]

    @property
    def unembed(self) -> Unembed:
        """Final norm and ``W_U`` (tied to the embeddings for SmolLM2)."""
        head = self.hf_model.lm_head
        return Unembed(self._body.norm, head.weight.T, getattr(head, "bias", None))

    def to_tokens(self, text: str | list[str], prepend_bos: bool = True) -> Tensor:
        """Tokenise one text ([1, T]) or several equal-length ones; BOS first unless told otherwise."""
        texts = [text] if isinstance(text, str) else text
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        if prepend_bos:
            ids = [[self.bos_token_id, *x] for x in ids]
        if len({len(x) for x in ids}) != 1:
            raise ValueError("texts tokenise to different lengths; tokenise and pad them yourself")
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def run_with_hooks(
        self, tokens: Tensor, hooks: Iterable[str], replace: Mapping[str, HookFn] | None = None
    ) -> dict[str, Tensor]:
        """Activations {hook: [B, T, d_model]} of ``hooks``; the forward pass stops after the deepest one."""
        with torch.inference_mode():
            _, cache = self.forward(tokens, capture=hooks, replace=replace, return_logits=False)
        return cache

    def forward(
        self,
        tokens: Tensor,
        capture: Iterable[str] = (),
        replace: Mapping[str, HookFn] | None = None,
        return_logits: bool = True,
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Run the model: (logits [B, T, vocab] or None, {hook: activation}).

        ``replace`` maps hook names to functions of the activation [B, T, d_model] whose result flows
        on instead; a captured hook records the value that flows on. Without logits the pass stops once
        every captured hook is computed. Gradients are not disabled here.
        """
        capture = list(dict.fromkeys(capture))
        replace = dict(replace or {})
        points = self.check_hooks([*capture, *replace])
        by_site: dict[tuple[int, str], list[str]] = {}
        for p in points:
            names = by_site.setdefault((p.layer, p.site), [])
            if p.name not in names:
                names.append(p.name)
        wanted = set(capture)
        cache: dict[str, Tensor] = {}

        def site(layer: int, name: str, value: Tensor) -> Tensor:
            for hook in by_site.get((layer, name), ()):
                if hook in replace:
                    value = replace[hook](value)
                if hook in wanted:
                    cache[hook] = value
            if not return_logits and len(cache) == len(wanted):
                raise _Stop
            return value

        tokens = tokens.to(self.device)
        try:
            logits = self._run(tokens, site, by_site)
        except _Stop:
            logits = None
        return logits, cache

    def loss(self, tokens: Tensor) -> Tensor:
        """Per-token next-token cross-entropy [B, T-1] (nats) of the unmodified model."""
        with torch.inference_mode():
            logits, _ = self.forward(tokens)
        return _next_token_loss(logits, tokens)  # type: ignore[arg-type]

    def loss_with_replacement(self, tokens: Tensor, hook: str, fn: HookFn) -> tuple[Tensor, Tensor]:
        """(per-token CE [B, T-1], logits [B, T, vocab]) with ``hook``'s activation replaced by fn(activation)."""
        with torch.inference_mode():
            logits, _ = self.forward(tokens, replace={hook: fn})
        return _next_token_loss(logits, tokens), logits  # type: ignore[arg-type]

    def _run(self, tokens: Tensor, site: Callable[[int, str, Tensor], Tensor], by_site: dict) -> Tensor:
        body = self._body
        h = site(-1, "embed", body.embed_tokens(tokens))
        position_ids = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        mask = create_causal_mask(
            config=body.config, inputs_embeds=h, attention_mask=None, cache=None, position_ids=position_ids
        )
        rope = body.rotary_emb(h, position_ids=position_ids)
        for i, layer in enumerate(body.layers[: self.n_layers]):
            h = site(i, "resid_pre", h)
            x = _norm(layer.input_layernorm, h, i, "ln1", site, by_site)
            x = site(i, "ln1_out", x)
            attn, _ = layer.self_attn(
                hidden_states=x, attention_mask=mask, position_ids=position_ids, position_embeddings=rope
            )
            h = h + site(i, "attn_out", attn)
            h = site(i, "resid_mid", h)
            x = site(i, "mlp_in", h)
            x = _norm(layer.post_attention_layernorm, x, i, "ln2", site, by_site)
            x = site(i, "ln2_out", x)
            h = h + site(i, "mlp_out", layer.mlp(x))
            h = site(i, "resid_post", h)
        n = self.n_layers
        h = site(n, "final_in", h)
        h = _norm(body.norm, h, n, "final", site, by_site)
        h = site(n, "final_out", h)
        return self.hf_model.lm_head(h)


def _norm(module: nn.Module, x: Tensor, layer: int, prefix: str, site: Callable, by_site: dict) -> Tensor:
    """Apply an RMSNorm; split into normalise and scale when its ``*_normalized`` hook is in use."""
    if (layer, f"{prefix}_normalized") not in by_site:
        return module(x)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    x32 = x.to(torch.float32)
    normalized = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    normalized = site(layer, f"{prefix}_normalized", normalized)
    return module.weight * normalized


def _next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Cross-entropy of predicting tokens[:, 1:] from logits[:, :-1], per token, in float32."""
    pred = logits[:, :-1].float()
    target = tokens[:, 1:].to(pred.device)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none").view(
        target.shape
    )
