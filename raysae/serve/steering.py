"""Feature steering and decoder geometry: what the model deployment computes for the browser's
steering panel and its "nearest features" list.

Steering adds ``strength`` times a feature's decoder output (what one unit of its activation adds to
each output hook, biases excluded) at the dictionary's output hooks, at every position, and decodes
greedily; the unsteered text comes from the same loop without the addition, so the two differ only
by the steering. ``strength`` is in units of the feature's activation, comparable with the
``max_activation`` the analysis stored.

Nearest features rank every feature of the dictionary by the cosine between raw-space write
directions (``SparseDictionary.write_directions``: the decoder row of an SAE or transcoder, the sum
over target layers for a CLT, the last head for a CrossCoder), excluding the feature itself.
Plain functions on a loaded model and dictionary, so they are testable without Serve.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from raysae.serve.activations import RequestError


def flat_feature(dictionary: Any, hook: str, index: int) -> int:
    """The flat index (``group * d_sae + index``) of feature (hook, index); 404 naming what is wrong."""
    hooks = dictionary.feature_hooks()
    if hook not in hooks:
        raise RequestError(404, f"hook {hook!r} is not one of the dictionary's feature hooks {hooks}")
    if not 0 <= index < dictionary.d_sae:
        raise RequestError(404, f"index {index} is out of range: the dictionary has d_sae={dictionary.d_sae}")
    return hooks.index(hook) * dictionary.d_sae + index


def decoder_output(dictionary: Any, flat: int) -> dict[str, Tensor]:
    """{output hook: raw-space vector [d_model]} that one unit of feature ``flat`` adds to the
    reconstruction: decode(one-hot) − decode(0), so input/output scales are applied and the decoder
    bias cancels. Hooks the feature does not write (a CLT's earlier layers) are left out."""
    ref = next(dictionary.parameters())
    z = torch.zeros(1, dictionary.n_features, device=ref.device, dtype=ref.dtype)
    z[0, flat] = 1.0
    z = z.view(1, *dictionary.latent_shape)
    with torch.inference_mode():
        delta = dictionary.decode(z) - dictionary.decode(torch.zeros_like(z))
    rows = delta.reshape(-1, delta.shape[-1])
    hooks = dictionary.hooks_out
    if rows.shape[0] != len(hooks):
        raise RuntimeError(f"decode gave {rows.shape[0]} output rows for {len(hooks)} output hooks")
    out: dict[str, Tensor] = {}
    for hook, row in zip(hooks, rows, strict=True):
        if bool(row.any()):
            out[hook] = out[hook] + row if hook in out else row
    return out


def _add(direction: Tensor, x: Tensor) -> Tensor:
    return x + direction.to(device=x.device, dtype=x.dtype)


def steering_hooks(directions: dict[str, Tensor], strength: float) -> dict[str, Any]:
    """``LanguageModel.forward`` replacements adding ``strength`` × each direction at every position."""
    return {hook: partial(_add, strength * d) for hook, d in directions.items()}


def greedy_generate(
    model: Any, tokens: Tensor, max_new_tokens: int, replace: dict[str, Any] | None = None
) -> list[int]:
    """Greedy continuation ids of ``tokens`` ([1, T]); stops at the tokenizer's EOS (not returned).
    Each step reruns the whole sequence: the hooks must see every position, and n is small."""
    eos = model.tokenizer.eos_token_id
    ids = tokens
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits, _ = model.forward(ids, replace=replace)
            nxt = int(logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]], dtype=ids.dtype, device=ids.device)], dim=1)
    return out


def continuation(model: Any, ids: list[int]) -> dict[str, Any]:
    """Generated ids as the response shows them: the whole text and each token's text."""
    decode = partial(model.tokenizer.decode, clean_up_tokenization_spaces=False)
    return {"text": decode(ids), "tokens": [decode([i]) for i in ids], "token_ids": ids}


def unit_write_directions(dictionary: Any, n_layers: int) -> Tensor:
    """Unit-norm write directions of every feature, in flat order: ``[n_features, d_model]`` float32
    (a dead feature's zero row stays zero, so its cosines are 0)."""
    ref = next(dictionary.parameters())
    index = torch.arange(dictionary.d_sae, device=ref.device)
    with torch.inference_mode():
        rows = [dictionary.write_directions(g, index, n_layers) for g in range(dictionary.n_groups)]
        matrix = torch.cat(rows).float()
        return matrix / matrix.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def nearest_by_cosine(unit: Tensor, flat: int, k: int) -> list[tuple[int, float]]:
    """The ``k`` features (flat index, cosine) whose write directions are closest to feature
    ``flat``'s, most similar first; the feature itself is never among them."""
    with torch.inference_mode():
        sims = unit @ unit[flat]
        sims[flat] = -torch.inf
        values, indices = sims.topk(min(k, unit.shape[0] - 1))
    return [(int(i), float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
