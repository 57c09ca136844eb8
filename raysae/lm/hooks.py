"""Hook points, named as TransformerLens names them, and where they sit in a pre-norm decoder block.

A Llama-family block (Llama, SmolLM2, Mistral, Qwen2) computes::

    resid_pre ─┬─ ln1 ── attn ── attn_out ──(+)── resid_mid ─┬─ ln2 ── mlp ── mlp_out ──(+)── resid_post
               └────────────────────────────┘                └───────────────────────────┘

| TransformerLens name                  | tensor                                                  |
|---------------------------------------|---------------------------------------------------------|
| hook_embed                            | token embeddings (= blocks.0.hook_resid_pre)            |
| blocks.L.hook_resid_pre, ln1.hook_in  | input of block L                                        |
| blocks.L.ln1.hook_normalized          | x / rms(x) before ln1's weight                          |
| blocks.L.ln1.hook_out, attn.hook_in   | ln1 output (with weight): the attention's input         |
| blocks.L.hook_attn_out, attn.hook_out | attention output after o_proj                           |
| blocks.L.hook_resid_mid, ln2.hook_in, | resid_pre + attn_out. TransformerLens also calls ln2's  |
|   hook_mlp_in                         | input hook_mlp_in (the MLP branch's entry point)        |
| blocks.L.ln2.hook_normalized          | x / rms(x) before ln2's weight                          |
| blocks.L.ln2.hook_out, mlp.hook_in    | ln2 output (with weight): the MLP's actual input        |
| blocks.L.hook_mlp_out, mlp.hook_out   | MLP output                                              |
| blocks.L.hook_resid_post              | resid_mid + mlp_out                                     |
| ln_final.hook_in / normalized / out   | input, normalised input, output of the final norm       |

Replacing a hook's value (``LanguageModel.loss_with_replacement``) changes everything downstream of
it: replacing hook_mlp_in changes only the MLP branch (as in TransformerLens), replacing
hook_resid_mid changes the residual stream too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
FINAL_SITES = {"ln_final.hook_in": "final_in", "ln_final.hook_normalized": "final_normalized"}
FINAL_SITES["ln_final.hook_out"] = "final_out"
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class HookError(ValueError):
    """A hook name that this model does not have."""


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
        if self.site.startswith("final"):
            return (self.layer, ("final_in", "final_normalized", "final_out").index(self.site))
        return (self.layer, SITE_ORDER.index(self.site))


def parse_hook(name: str, n_layers: int | None = None) -> HookPoint:
    """Parse a TransformerLens hook name; with ``n_layers``, also check the layer exists."""
    if name == "hook_embed":
        return HookPoint(name, -1, "embed")
    if name in FINAL_SITES:
        if n_layers is None:
            raise HookError(f"{name}: the final norm's layer needs n_layers")
        return HookPoint(name, n_layers, FINAL_SITES[name])
    m = _BLOCK_RE.match(name)
    if not m or m.group(2) not in BLOCK_SITES:
        raise HookError(
            f"unknown hook point {name!r}; known: hook_embed, ln_final.hook_{{in,normalized,out}}, "
            f"blocks.L.{{{', '.join(BLOCK_SITES)}}}"
        )
    layer = int(m.group(1))
    if n_layers is not None and layer >= n_layers:
        raise HookError(f"hook point {name!r}: the model has layers 0..{n_layers - 1}")
    return HookPoint(name, layer, BLOCK_SITES[m.group(2)])


def all_hook_names(n_layers: int) -> list[str]:
    """Every hook name a model with ``n_layers`` blocks accepts (aliases included), in forward order."""
    names = ["hook_embed"]
    for layer in range(n_layers):
        names.extend(f"blocks.{layer}.{alias}" for alias in BLOCK_SITES)
    names.extend(FINAL_SITES)
    return names


def stop_layer(hooks: list[str], n_layers: int) -> int:
    """The last block the forward pass must run to produce every hook in ``hooks`` (-1: embeddings only)."""
    points = [parse_hook(h, n_layers) for h in hooks]
    return max(min(p.layer, n_layers - 1) if p.site.startswith("final") else p.layer for p in points)
