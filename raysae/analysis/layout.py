"""Which features a dictionary has, how they are numbered during analysis, and their decoder directions.

Analysis numbers every feature of a dictionary with one flat index ``g``: an SAE, a transcoder and a
CrossCoder have ``d_sae`` features (``g`` = latent index); a CLT with ``L`` layers has ``L * d_sae``, and
``g = layer * d_sae + index``. A feature's stored identity is (dictionary_id, hook, index) with ``hook``
the SAE's ``hook_point_in``, the CLT layer's input hook, or ``"+".join(hooks_in)`` for a CrossCoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from raysae.dictionaries import SparseDictionary
from raysae.lm.hooks import parse_hook


@dataclass(frozen=True)
class FeatureLayout:
    """The flat feature numbering of one dictionary."""

    architecture: str
    hooks_in: tuple[str, ...]
    hooks_out: tuple[str, ...]
    d_sae: int
    groups: int

    @classmethod
    def of(cls, dictionary: SparseDictionary) -> FeatureLayout:
        arch = dictionary.cfg.architecture
        groups = dictionary.latent_shape[0] if len(dictionary.latent_shape) > 1 else 1
        return cls(arch, tuple(dictionary.hooks_in), tuple(dictionary.hooks_out), dictionary.d_sae, groups)

    @property
    def n_features(self) -> int:
        return self.groups * self.d_sae

    def hook(self, group: int) -> str:
        """The stored ``hook`` of the features of ``group`` (a CLT layer; 0 otherwise)."""
        if self.architecture == "clt":
            return self.hooks_in[group]
        if self.architecture == "crosscoder":
            return "+".join(self.hooks_in)
        return self.hooks_in[0]

    def layer(self, group: int) -> int | None:
        """The CLT layer (position in hooks_in) of ``group``; None for other architectures."""
        return group if self.architecture == "clt" else None

    def hooks(self) -> list[str]:
        """Every stored hook of this dictionary, in group order."""
        return [self.hook(g) for g in range(self.groups)]


def encode_rows(dictionary: SparseDictionary, acts: Mapping[str, Tensor]) -> Tensor:
    """Latent activations ``[N, n_features]`` of activation rows ``{hook: [N, d_model]}`` (raw space)."""
    dtype = dictionary.input_scale.dtype
    device = dictionary.input_scale.device
    x = dictionary.prepare_input({h: acts[h].to(device=device, dtype=dtype) for h in dictionary.hooks_in})
    with torch.inference_mode():
        z = dictionary.encode(x)
    return z.reshape(z.shape[0], -1)


@torch.no_grad()
def decoder_directions(
    dictionary: SparseDictionary, group: int, index: Tensor, n_layers: int | None = None
) -> Tensor:
    """Raw-space residual-stream directions ``[len(index), d_model]`` that features write, for DLA.

    SAE/transcoder: the decoder row (it writes ``hook_point_out``). CLT: the sum of the feature's decoders
    to every layer j >= its own, since each layer's output is added to the residual stream. CrossCoder:
    the decoder of the head whose hook comes last in the forward pass (nearest the unembedding).
    """
    arch = dictionary.cfg.architecture
    out_scale = dictionary.output_scale
    if arch == "clt":
        n = dictionary.latent_shape[0]
        parts = [dictionary.decoder(group, j)[index] / out_scale[j] for j in range(group, n)]  # type: ignore[operator]
        return torch.stack(parts).sum(0)
    if arch == "crosscoder":
        hooks = dictionary.hooks_in
        head = max(range(len(hooks)), key=lambda h: parse_hook(hooks[h], n_layers).order)
        return dictionary.W_dec[head][index] / out_scale[head]
    return dictionary.W_dec[index] / out_scale
