"""Hook points, named as TransformerLens names them, and where they sit in a pre-norm decoder block.

The vocabulary itself (tables and parser) lives in ``raysae.lm.hook_names``, which the config layer
imports too; this module re-exports it and adds the model-level helpers.

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

Aliases name one tensor: replacing any of them (``LanguageModel.loss_with_replacement``) changes
everything downstream of it, in both backends. Replacing hook_mlp_in changes only the MLP branch (as
in TransformerLens); replacing hook_resid_mid (or its alias ln2.hook_in) changes the residual stream
too, and replacing ln1.hook_in changes the block's input like hook_resid_pre.
"""

from __future__ import annotations

from raysae.lm.errors import HookError
from raysae.lm.hook_names import (
    BLOCK_SITES,
    EMBED_HOOK,
    FINAL_ORDER,
    FINAL_SITES,
    HOOK_NAME_RE,
    SITE_ORDER,
    HookPoint,
    is_hook_name,
    parse_hook,
)

__all__ = [
    "BLOCK_SITES",
    "EMBED_HOOK",
    "FINAL_ORDER",
    "FINAL_SITES",
    "HOOK_NAME_RE",
    "SITE_ORDER",
    "HookError",
    "HookPoint",
    "all_hook_names",
    "is_hook_name",
    "parse_hook",
    "stop_layer",
]


def all_hook_names(n_layers: int) -> list[str]:
    """Every hook name a model with ``n_layers`` blocks accepts (aliases included), in forward order."""
    names = [EMBED_HOOK]
    for layer in range(n_layers):
        names.extend(f"blocks.{layer}.{alias}" for alias in BLOCK_SITES)
    names.extend(FINAL_SITES)
    return names


def stop_layer(hooks: list[str], n_layers: int) -> int:
    """The last block the forward pass must run to produce every hook in ``hooks`` (-1: embeddings only)."""
    points = [parse_hook(h, n_layers) for h in hooks]
    return max(min(p.layer, n_layers - 1) if p.site in FINAL_ORDER else p.layer for p in points)
