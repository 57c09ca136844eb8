"""The language-model interface: hook capture, activation replacement, loss and unembedding.

``LanguageModel`` is the abstract base; a backend only runs the forward pass and routes each hook site
through a ``HookRouter``. Two backends exist (``ModelConfig.backend``):

* ``"native"`` (``raysae.lm.native.NativeLanguageModel``): runs a Llama-family transformers model's
  decoder blocks one by one, so every hook is a plain tensor and the pass stops after the deepest
  captured hook. The fastest, and the default.
* ``"transformer_lens"`` (``raysae.lm.bridge.BridgeLanguageModel``): TransformerLens 4's
  ``TransformerBridge`` around the same transformers model, for every architecture TransformerLens
  supports (GPT-2, Pythia, Gemma, Qwen, Llama, ...).

``LanguageModel(hf_model, tokenizer, name)`` still builds the native backend, and
``LanguageModel.from_config(cfg)`` picks the backend that ``cfg.backend`` names.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from raysae.config.data import ModelConfig
from raysae.lm.errors import HookError, ModelLoadError
from raysae.lm.hooks import HookPoint, all_hook_names, parse_hook
from raysae.lm.loader import load_model
from raysae.malloc import keep_freed_memory

HookFn = Callable[[Tensor], Tensor]
# backend name (ModelConfig.backend) -> "module:class"; imported on use, so the native backend never
# imports transformer_lens.
BACKENDS = {
    "native": "raysae.lm.native:NativeLanguageModel",
    "transformer_lens": "raysae.lm.bridge:BridgeLanguageModel",
}


class StopForward(Exception):
    """Raised inside the forward pass once every requested hook has been recorded."""


@dataclass
class Unembed:
    """The model's head: final norm then ``W_U`` ([d_model, d_vocab]); for direct logit attribution."""

    final_norm: nn.Module
    W_U: Tensor
    b_U: Tensor | None

    def __call__(self, resid: Tensor, apply_norm: bool = True) -> Tensor:
        """Logits of a residual-stream tensor [..., d_model]."""
        x = self.final_norm(resid) if apply_norm else resid
        out = x @ self.W_U
        return out + self.b_U if self.b_U is not None else out


class HookRouter:
    """What one forward pass does at each canonical site (layer, site): replace, then record.

    Every replacement of a site is applied first (in the order given), then every captured name of the
    site records the value that flows on, so aliases of one tensor always agree. With ``stop`` set the
    router raises ``StopForward`` once every captured hook is recorded.
    """

    def __init__(self, points: list[HookPoint], capture: list[str], replace: dict[str, HookFn], stop: bool):
        self.by_site: dict[tuple[int, str], list[str]] = {}
        for p in points:
            names = self.by_site.setdefault((p.layer, p.site), [])
            if p.name not in names:
                names.append(p.name)
        self.capture = set(capture)
        self.replacements = replace
        self.stop = stop
        self.cache: dict[str, Tensor] = {}

    def __contains__(self, key: tuple[int, str]) -> bool:
        return key in self.by_site

    def replaces(self, layer: int, site: str) -> bool:
        """Whether some hook of this site is replaced."""
        return any(h in self.replacements for h in self.by_site.get((layer, site), ()))

    def replace(self, layer: int, site: str, value: Tensor) -> Tensor:
        """The value after every replacement of this site."""
        for hook in self.by_site.get((layer, site), ()):
            if hook in self.replacements:
                value = self.replacements[hook](value)
        return value

    def record(self, layer: int, site: str, value: Tensor) -> Tensor:
        """Record ``value`` under every captured name of this site; stop the pass when all are in."""
        for hook in self.by_site.get((layer, site), ()):
            if hook in self.capture:
                self.cache[hook] = value
        if self.stop and len(self.cache) == len(self.capture):
            raise StopForward
        return value

    def __call__(self, layer: int, site: str, value: Tensor) -> Tensor:
        """Replace, then record: the value that flows on."""
        if (layer, site) not in self.by_site:
            return value
        return self.record(layer, site, self.replace(layer, site, value))


def backend_class(backend: str) -> type[LanguageModel]:
    """The ``LanguageModel`` subclass of a ``ModelConfig.backend`` name."""
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown model backend {backend!r}; known: {', '.join(BACKENDS)}")
    module, name = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), name)


class LanguageModel(abc.ABC):
    """A causal LM behind raysae's interface; tokens are int tensors [batch, seq].

    Subclasses set ``backend``, ``hf_model``, ``tokenizer``, ``name``, ``n_layers``, ``d_model``,
    ``d_vocab``, ``bos_token_id`` and ``pad_token_id`` (``_set_tokens`` sets the last two), and
    implement ``_run``, ``unembed``, ``device`` and ``dtype``.
    """

    backend: ClassVar[str]
    batch_fork: ClassVar[bool] = False
    """Whether a replacement may return a larger batch than it got (the rest of the pass follows it)."""
    hf_model: Any
    tokenizer: PreTrainedTokenizerBase
    name: str
    n_layers: int
    d_model: int
    d_vocab: int
    bos_token_id: int
    pad_token_id: int

    def __new__(cls, *args: Any, **kwargs: Any) -> LanguageModel:
        # ``LanguageModel(hf_model, tokenizer, name)`` predates the backends: it means the native one.
        if cls is LanguageModel:
            cls = backend_class("native")
        return super().__new__(cls)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> LanguageModel:
        """Load the model named by ``cfg`` (``raysae.lm.loader.load_model``) behind ``cfg.backend``.

        Called on a backend class, ``cfg.backend`` must name that backend (a silent switch would hide
        a config mistake).
        """
        target = backend_class(cfg.backend)
        if cls is not LanguageModel and not issubclass(target, cls):
            raise ModelLoadError(
                f"{cls.__name__}.from_config got backend {cfg.backend!r}; LanguageModel.from_config follows it"
            )
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        keep_freed_memory()
        model, tokenizer = load_model(cfg)
        return target(model, tokenizer, cfg.name)

    def _set_tokens(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """BOS (required: every window starts with it) and the pad token (BOS when there is none)."""
        bos = tokenizer.bos_token_id
        if bos is None:
            raise ModelLoadError(f"{self.name}: the tokenizer has no BOS token")
        self.bos_token_id = bos
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where the weights (and the tokens of a forward pass) live."""

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        """Compute dtype; activations are returned in it."""

    @property
    @abc.abstractmethod
    def unembed(self) -> Unembed:
        """Final norm and ``W_U``."""

    @abc.abstractmethod
    def _run(self, tokens: Tensor, router: HookRouter, return_logits: bool) -> Tensor | None:
        """One forward pass routing every hook site through ``router``; the logits [B, T, vocab]."""

    def has_site(self, point: HookPoint) -> bool:
        """Whether this model computes the tensor ``point`` names (not every architecture has each)."""
        return True

    def hook_names(self) -> list[str]:
        """Every hook point of this model, aliases included, in forward order."""
        names = all_hook_names(self.n_layers)
        return [n for n in names if self.has_site(parse_hook(n, self.n_layers))]

    def check_hooks(self, hooks: Iterable[str]) -> list[HookPoint]:
        """Parse hook names against this model's depth; raises ``HookError`` naming a bad one."""
        points = [parse_hook(h, self.n_layers) for h in hooks]
        for p in points:
            if not self.has_site(p):
                raise HookError(
                    f"hook point {p.name!r}: {self.name} ({self.backend} backend) has no such tensor"
                )
        return points

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
        router = HookRouter(points, capture, replace, stop=not return_logits)
        try:
            logits = self._run(tokens.to(self.device), router, return_logits)
        except StopForward:
            logits = None
        return logits, router.cache

    def forward_variants(
        self,
        tokens: Tensor,
        hook: str,
        variants: Callable[[Tensor, dict[str, Tensor]], list[Tensor]],
        capture: Iterable[str] = (),
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Logits of several runs that are the same up to ``hook`` and differ there: ``variants(a,
        captured)`` gives the hook's value in each run from its clean value ``a`` ``[B, T, d]`` (and the
        ``capture`` hooks recorded so far, which must come before ``hook``). Returns (logits per variant,
        captured). A backend that can grow the batch mid-pass (``batch_fork``) runs the shared prefix
        once and the rest on the variants stacked along the batch; others run one pass per variant."""
        capture = [h for h in dict.fromkeys(capture) if h != hook]
        if not self.batch_fork:
            _, cache = self.forward(tokens, capture=[*capture, hook], return_logits=False)
            values = variants(cache.pop(hook), cache)
            runs = [self.forward(tokens, replace={hook: lambda _, v=v: v})[0] for v in values]
            return runs, cache  # type: ignore[return-value]
        n = []
        router = HookRouter(self.check_hooks([*capture, hook]), capture, {}, stop=False)

        def fork(a: Tensor) -> Tensor:
            values = variants(a, dict(router.cache))
            n.append(len(values))
            return torch.cat(values)

        router.replacements = {hook: fork}
        logits = self._run(tokens.to(self.device), router, True)
        return list(logits.chunk(n[0])), router.cache  # type: ignore[union-attr]

    def loss(self, tokens: Tensor) -> Tensor:
        """Per-token next-token cross-entropy [B, T-1] (nats) of the unmodified model."""
        with torch.inference_mode():
            logits, _ = self.forward(tokens)
        return next_token_loss(logits, tokens)  # type: ignore[arg-type]

    def loss_with_replacement(self, tokens: Tensor, hook: str, fn: HookFn) -> tuple[Tensor, Tensor]:
        """(per-token CE [B, T-1], logits [B, T, vocab]) with ``hook``'s activation replaced by fn(activation)."""
        with torch.inference_mode():
            logits, _ = self.forward(tokens, replace={hook: fn})
        return next_token_loss(logits, tokens), logits  # type: ignore[arg-type]


def next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Cross-entropy of predicting tokens[:, 1:] from logits[:, :-1], per token, in float32."""
    pred = logits[:, :-1].float()
    target = tokens[:, 1:].to(pred.device)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none").view(
        target.shape
    )
