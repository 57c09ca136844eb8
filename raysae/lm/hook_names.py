"""The hook vocabulary: TransformerLens hook names, their aliases and where each sits in a block.

Pure Python (no torch, no transformers) because the config layer validates hook names with it and must
stay cheap to import; ``raysae.lm.hooks`` documents the layout and adds the model-level helpers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from raysae.lm.errors import HookError

# alias -> canonical site; canonical sites are the values.
BLOCK_SITES: dict[str, str] = {
    "hook_resid_pre": "resid_pre",
    "ln1.hook_in": "resid_pre",
    "ln1.hook_normalized": "ln1_normalized",
    "ln1.hook_out": "ln1_out",
    "attn.hook_in": "ln1_out",
    "hook_attn_out": "attn_out",
    "attn.hook_out": "attn_out",
    "hook_resid_mid": "resid_mid",
    "ln2.hook_in": "resid_mid",
    "hook_mlp_in": "mlp_in",
    "ln2.hook_normalized": "ln2_normalized",
    "ln2.hook_out": "ln2_out",
    "mlp.hook_in": "ln2_out",
    "hook_mlp_out": "mlp_out",
    "mlp.hook_out": "mlp_out",
    "hook_resid_post": "resid_post",
}
# Order of the canonical sites inside a block (the forward pass computes them in this order).
SITE_ORDER = (
    "resid_pre",
    "ln1_normalized",
    "ln1_out",
    "attn_out",
    "resid_mid",
    "mlp_in",
    "ln2_normalized",
    "ln2_out",
    "mlp_out",
    "resid_post",
)
FINAL_SITES: dict[str, str] = {
    "ln_final.hook_in": "final_in",
    "ln_final.hook_normalized": "final_normalized",
    "ln_final.hook_out": "final_out",
}
FINAL_ORDER = tuple(FINAL_SITES.values())
EMBED_HOOK = "hook_embed"


def _alternatives(names: Iterable[str]) -> str:
    """A regex alternation of ``names``, longest first."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


# Every name of the vocabulary, layer numbers unchecked (the config does not know the model's depth).
HOOK_NAME_RE = re.compile(
    rf"^(?:{re.escape(EMBED_HOOK)}|{_alternatives(FINAL_SITES)}|blocks\.([0-9]+)\.({_alternatives(BLOCK_SITES)}))$"
)


@dataclass(frozen=True)
class HookPoint:
    """A parsed hook: ``layer`` is the block index (-1 for hook_embed, n_layers for ln_final)."""

    name: str
    layer: int
    site: str

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: position of the hook in the forward pass."""
        if self.site == "embed":
            return (-1, 0)
        if self.site in FINAL_ORDER:
            return (self.layer, FINAL_ORDER.index(self.site))
        return (self.layer, SITE_ORDER.index(self.site))


def is_hook_name(name: str) -> bool:
    """Whether ``name`` is in the vocabulary (syntax only: the layer is not checked against a model)."""
    return HOOK_NAME_RE.match(name) is not None


def parse_hook(name: str, n_layers: int | None = None) -> HookPoint:
    """Parse a TransformerLens hook name; with ``n_layers``, also check the layer exists."""
    if name == EMBED_HOOK:
        return HookPoint(name, -1, "embed")
    if name in FINAL_SITES:
        if n_layers is None:
            raise HookError(f"{name}: the final norm's layer needs n_layers")
        return HookPoint(name, n_layers, FINAL_SITES[name])
    m = HOOK_NAME_RE.match(name)
    if not m or m.group(1) is None:
        raise HookError(
            f"unknown hook point {name!r}; known: {EMBED_HOOK}, ln_final.hook_{{in,normalized,out}}, "
            f"blocks.L.{{{', '.join(BLOCK_SITES)}}}"
        )
    layer = int(m.group(1))
    if n_layers is not None and layer >= n_layers:
        raise HookError(f"hook point {name!r}: the model has layers 0..{n_layers - 1}")
    return HookPoint(name, layer, BLOCK_SITES[m.group(2)])
