"""The TransformerLens backend: TransformerLens 4's ``TransformerBridge`` around a transformers model.

The bridge wraps each submodule of the model with hook points named as TransformerLens names them, for
every architecture TransformerLens supports (GPT-2, Pythia/GPT-NeoX, Gemma, Qwen, Llama, ...), so this
backend reaches models the native block runner (``raysae.lm.native``) cannot. Each canonical site of
raysae's vocabulary (``raysae.lm.hook_names``) is served by one bridge hook point, with the same
meaning as in the native backend:

* aliases of one tensor share one point: ``ln1.hook_in`` is the block's input (``hook_resid_pre``),
  ``attn.hook_in`` is ``ln1.hook_out``, ``mlp.hook_in`` is ``ln2.hook_out``;
* ``hook_mlp_in`` is the MLP branch's entry (``hook_resid_mid``, or ln2's input in a parallel block);
* replacing ``hook_resid_mid`` changes the residual stream too: TransformerLens' ``hook_resid_mid``
  is ln2's input, which feeds only the MLP, so the residual is moved at ``hook_attn_out`` instead
  (attn_out' = f(resid_pre + attn_out) - resid_pre; exact for the MLP, the residual to rounding).

A site the architecture lacks (``hook_resid_mid`` of a parallel block, ``ln2`` of GPT-J) is a
``HookError``. Early stop is supported as in the native backend (the pass is aborted after the last
captured hook fires), but the bridge still runs the model's own forward up to that point.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from raysae.lm.errors import ModelLoadError
from raysae.lm.hook_names import HookPoint
from raysae.lm.model import HookRouter, LanguageModel, Unembed

Site = tuple[int, str]
# canonical block site -> bridge hook names inside ``blocks.L.``, first one the bridge has wins.
BLOCK_POINTS: dict[str, tuple[str, ...]] = {
    "resid_pre": ("hook_resid_pre",),
    "ln1_normalized": ("ln1.hook_normalized",),
    "ln1_out": ("ln1.hook_out",),
    "attn_out": ("hook_attn_out",),
    "resid_mid": ("hook_resid_mid",),
    "mlp_in": ("hook_resid_mid", "ln2.hook_in"),
    "ln2_normalized": ("ln2.hook_normalized",),
    "ln2_out": ("ln2.hook_out",),
    "mlp_out": ("hook_mlp_out",),
    "resid_post": ("hook_resid_post",),
}
FINAL_POINTS = {
    "final_in": "ln_final.hook_in",
    "final_normalized": "ln_final.hook_normalized",
    "final_out": "ln_final.hook_out",
}
# Replacing hook_normalized makes the bridge rebuild the norm's output and warn; that is what we asked.
_EDIT_WARNING = r".*edited hook_scale/hook_normalized.*"


def _order(site: Site) -> tuple[int, int]:
    return HookPoint("", *site).order


class BridgeLanguageModel(LanguageModel):
    """A causal LM run through TransformerLens' TransformerBridge (``ModelConfig.backend = "transformer_lens"``).

    Built offline from an already loaded model: ``boot_transformers`` with ``hf_model`` takes the
    adapter's settings from ``hf_model.config`` and loads nothing. TransformerLens modifies
    ``hf_model`` in place (its submodules become hooked wrappers, attention becomes eager), so do not
    share one model object with a native ``LanguageModel``.
    """

    backend: ClassVar[str] = "transformer_lens"

    def __init__(self, hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = ""):
        from transformer_lens.model_bridge import TransformerBridge

        config = hf_model.config
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.name = name or getattr(config, "_name_or_path", "") or config.model_type
        self._set_tokens(tokenizer)
        weight = next(hf_model.parameters())
        try:
            # A copy of the tokenizer: TransformerLens normalises the one it gets (pad, BOS settings).
            self.bridge = TransformerBridge.boot_transformers(
                self.name,
                hf_model=hf_model,
                tokenizer=copy.deepcopy(tokenizer),
                device=weight.device,
                dtype=weight.dtype,
            )
        except (ValueError, NotImplementedError) as err:
            raise ModelLoadError(
                f"TransformerLens cannot bridge {self.name!r} (model type {config.model_type!r}): {err}"
            ) from err
        cfg = self.bridge.cfg
        self.n_layers = int(cfg.n_layers)
        self.d_model = int(cfg.d_model)
        self.d_vocab = int(self.bridge.W_U.shape[1])
        self._points, self._point_ids = self._find_points()

    def _find_points(self) -> tuple[dict[Site, str], dict[Site, int]]:
        """Bridge hook name (and its HookPoint's identity) of every site this architecture has."""
        hook_dict = self.bridge.hook_dict
        wanted: dict[Site, tuple[str, ...]] = {(-1, "embed"): ("hook_embed",)}
        for layer in range(self.n_layers):
            for site, names in BLOCK_POINTS.items():
                wanted[(layer, site)] = tuple(f"blocks.{layer}.{n}" for n in names)
        for site, name in FINAL_POINTS.items():
            wanted[(self.n_layers, site)] = (name,)
        points: dict[Site, str] = {}
        ids: dict[Site, int] = {}
        for site, names in wanted.items():
            found = next((n for n in names if n in hook_dict), None)
            if found is not None:
                points[site], ids[site] = found, id(hook_dict[found])
        return points, ids

    @property
    def device(self) -> torch.device:
        return self.bridge.W_U.device

    @property
    def dtype(self) -> torch.dtype:
        return self.bridge.W_U.dtype

    @property
    def unembed(self) -> Unembed:
        """The bridge's final norm and ``W_U`` (logit soft-capping, as in Gemma 2, is not applied)."""
        norm = getattr(self.bridge, "ln_final", None)
        head = self.bridge.unembed.original_component
        bias = getattr(head, "bias", None)
        return Unembed(norm if isinstance(norm, nn.Module) else nn.Identity(), self.bridge.W_U, bias)

    def has_site(self, point: HookPoint) -> bool:
        return (point.layer, point.site) in self._points

    def _run(self, tokens: Tensor, router: HookRouter, return_logits: bool) -> Tensor:
        with self.bridge.hooks(fwd_hooks=self._hooks(router)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_EDIT_WARNING)
            return self.bridge(tokens, return_type="logits")

    def _hooks(self, router: HookRouter) -> list[tuple[str, Callable[..., Any]]]:
        """One bridge hook per hook point in use, handling its sites in forward order."""
        moved = {
            layer for layer, site in router.by_site if site == "resid_mid" and router.replaces(layer, site)
        }
        sites = set(router.by_site)
        sites |= {(layer, s) for layer in moved for s in ("resid_pre", "attn_out")}
        groups: dict[int, list[Site]] = {}
        for site in sorted(sites, key=_order):
            groups.setdefault(self._point_ids[site], []).append(site)
        state: dict[tuple[str, int], Tensor] = {}  # resid_pre and the new resid_mid of moved layers
        return [
            (self._points[keys[0]], self._handler(keys, router, moved, state)) for keys in groups.values()
        ]

    @staticmethod
    def _handler(
        keys: list[Site], router: HookRouter, moved: set[int], state: dict[tuple[str, int], Tensor]
    ) -> Callable[..., Tensor | None]:
        def run(value: Tensor, hook: Any) -> Tensor | None:
            out = value
            for layer, site in keys:
                if layer not in moved:
                    out = router(layer, site, out)
                elif site == "resid_pre":
                    out = router(layer, site, out)
                    state[("pre", layer)] = out
                elif site == "attn_out":
                    out = router(layer, site, out)
                    pre = state.pop(("pre", layer))
                    mid = router.replace(layer, "resid_mid", pre + out)
                    state[("mid", layer)] = mid
                    out = mid - pre
                elif site == "resid_mid":
                    out = router.record(layer, site, state.pop(("mid", layer), out))
                else:
                    out = router(layer, site, out)
            # None tells the bridge nothing was edited (its norms then keep HF's own output).
            return None if out is value else out

        return run
