"""The transcoder side of a replacement model: one CLT or a set of per-layer transcoders, seen the same way.

A group is one covered MLP: its model layer, the site its encoder reads (``mlp_in``/``resid_mid``:
the residual before the MLP's RMSNorm; ``ln2_normalized`` or ``ln2_out``: after it) and, for the CLT,
decoders to every later covered MLP. Everything here works on raw activations: the dictionaries'
input and output scales are applied, so encoder and decoder vectors are the true linear maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from raysae.dictionaries import SparseDictionary
from raysae.errors import RaysaeError
from raysae.lm.hook_names import parse_hook

INPUT_SITES = ("mlp_in", "resid_mid", "ln2_normalized", "ln2_out")


class TranscoderError(RaysaeError, ValueError):
    """The dictionaries cannot form a replacement model (wrong hooks, overlapping layers, GLU)."""


class TranscoderSet:
    """One CLT, or per-layer transcoders, as groups in model-layer order."""

    def __init__(self, dictionaries: SparseDictionary | Sequence[SparseDictionary], n_model_layers: int):
        dicts = [dictionaries] if isinstance(dictionaries, SparseDictionary) else list(dictionaries)
        if not dicts:
            raise TranscoderError("no dictionary given: a CLT or per-layer transcoders")
        archs = {d.cfg.architecture for d in dicts}
        if "clt" in archs and len(dicts) > 1:
            raise TranscoderError("give one CLT, or only per-layer transcoders")
        if not archs <= {"clt", "transcoder"}:
            raise TranscoderError(
                f"attribution needs a CLT or transcoders, not {sorted(archs - {'clt', 'transcoder'})}"
            )
        for d in dicts:
            if d.cfg.glu_encoder:
                raise TranscoderError(
                    "a GLU encoder is not linear in its input: no attribution edges into it"
                )
        self.is_clt = archs == {"clt"}
        self.d_sae = dicts[0].d_sae
        if any(d.d_sae != self.d_sae for d in dicts):
            raise TranscoderError("per-layer transcoders must share d_sae")
        groups: list[tuple[int, str, SparseDictionary, int]] = []
        for d in dicts:
            for g, (hin, hout) in enumerate(zip(d.hooks_in, d.hooks_out, strict=True)):
                groups.append((*_check_hooks(hin, hout, n_model_layers), d, g))
        if not self.is_clt:
            groups.sort(key=lambda item: item[0])
        self.layers = [item[0] for item in groups]
        if len(set(self.layers)) != len(self.layers) or self.layers != sorted(self.layers):
            raise TranscoderError(
                f"the covered MLP layers must be distinct and increasing, got {self.layers}"
            )
        self.sites = [item[1] for item in groups]
        self._dicts = [item[2] for item in groups]
        self._sub = [item[3] for item in groups]
        self.dictionaries = dicts
        ref = dicts[0].input_scale
        self.device, self.dtype = ref.device, ref.dtype

    @property
    def n_groups(self) -> int:
        return len(self.layers)

    def group_of_layer(self, layer: int) -> int | None:
        """The group covering model layer ``layer``, or None (a pure error node)."""
        return self.layers.index(layer) if layer in self.layers else None

    def _scales(self, g: int) -> tuple[Tensor, Tensor]:
        d, sub = self._dicts[g], self._sub[g]
        s_in, s_out = d.input_scale, d.output_scale
        return (s_in[sub], s_out[sub]) if s_in.dim() else (s_in, s_out)

    @torch.no_grad()
    def encode(self, reads: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """(pre-activations, activations) ``[G, T, d_sae]`` of raw reads ``[T, d_model]`` per group."""
        x = [r.to(self.device, self.dtype) for r in reads]
        if self.is_clt:
            clt = self._dicts[0]
            pre = clt.encode_pre(clt._scale(torch.stack(x, 1), clt.input_scale))
            return pre.transpose(0, 1), clt.activation(pre).transpose(0, 1)
        pres, acts = [], []
        for d, xi in zip(self._dicts, x, strict=True):
            pre = d.encode_pre(d._scale(xi, d.input_scale))
            pres.append(pre)
            acts.append(d.activation(pre))
        return torch.stack(pres), torch.stack(acts)

    @torch.no_grad()
    def encoder_vectors(self, g: int, index: Tensor) -> Tensor:
        """``[n, d_model]``: d pre-activation / d raw input of features ``index`` of group ``g``."""
        d, sub = self._dicts[g], self._sub[g]
        w = d.W_enc[sub] if self.is_clt else d.W_enc
        return w[:, index].T * self._scales(g)[0]

    @torch.no_grad()
    def encoder_bias(self, g: int, index: Tensor) -> Tensor:
        """``[n]`` encoder biases: the pre-activation of features ``index`` of group ``g`` at zero input."""
        d, sub = self._dicts[g], self._sub[g]
        return (d.b_enc[sub] if self.is_clt else d.b_enc)[index]

    def targets_of(self, g: int) -> list[int]:
        """The groups whose MLP output group ``g``'s features write (itself; later ones for a CLT)."""
        return list(range(g, self.n_groups)) if self.is_clt else [g]

    @torch.no_grad()
    def decoder_vectors(self, g: int, j: int, index: Tensor) -> Tensor:
        """``[n, d_model]`` raw MLP-output directions that features ``index`` of group ``g`` write at ``j``."""
        if self.is_clt:
            return self._dicts[0].decoder(g, j)[index] / self._dicts[0].output_scale[j]
        if j != g:
            raise IndexError(f"a per-layer transcoder writes only its own layer ({g}), not {j}")
        return self._dicts[g].W_dec[index] / self._scales(g)[1]

    @torch.no_grad()
    def decoder_bias(self, j: int) -> Tensor:
        """``[d_model]`` raw decoder bias of group ``j``'s output."""
        d = self._dicts[j]
        return (d.b_dec[self._sub[j]] if self.is_clt else d.b_dec) / self._scales(j)[1]

    @torch.no_grad()
    def reconstruct(self, acts: Tensor) -> Tensor:
        """``[G, T, d_model]`` raw MLP outputs the features ``acts`` ``[G, T, d_sae]`` predict."""
        if self.is_clt:
            return self._dicts[0].decode(acts.transpose(0, 1)).transpose(0, 1)
        return torch.stack([d.decode(a) for d, a in zip(self._dicts, acts, strict=True)])


def _check_hooks(hook_in: str, hook_out: str, n_layers: int) -> tuple[int, str]:
    """(layer, input site) of a group that reads before an MLP and predicts that MLP's output."""
    try:
        p_in, p_out = parse_hook(hook_in, n_layers), parse_hook(hook_out, n_layers)
    except Exception as err:
        raise TranscoderError(f"transcoder hooks {hook_in!r} -> {hook_out!r}: {err}") from err
    if p_out.site != "mlp_out":
        raise TranscoderError(
            f"{hook_out!r}: a transcoder for attribution must predict blocks.L.hook_mlp_out"
        )
    if p_in.site not in INPUT_SITES or p_in.layer != p_out.layer:
        raise TranscoderError(
            f"{hook_in!r}: the input of layer {p_out.layer}'s transcoder must be blocks.{p_out.layer}."
            "{hook_mlp_in, hook_resid_mid, ln2.hook_normalized, ln2.hook_out}"
        )
    return p_in.layer, p_in.site
