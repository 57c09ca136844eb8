"""The base class of every sparse dictionary, with the loss they all share.

An architecture says only how it reads its input and label out of a batch, how it encodes and
decodes, how its decoder norms are computed and scaled, and how each parameter may be sharded.
Everything else (activation norm scaling, the activation function, MSE + sparsity + AuxK loss,
decoder-norm handling) lives here once.

Shapes: ``x`` and ``y`` are ``[batch, d_model]`` for an SAE/transcoder and ``[batch, groups, d_model]``
for a CLT (groups = layers) or CrossCoder (groups = heads); latents are ``[batch, *latent_shape]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from raysae import metrics as M
from raysae.config import DictionaryConfig
from raysae.devices import resolve_device
from raysae.dictionaries.activations import Activation, build_activation
from raysae.dictionaries.sparse import SparseLatents
from raysae.errors import RaysaeError
from raysae.lm.hooks import HookError, parse_hook

Batch = Tensor | Mapping[str, Tensor]

# Named dimensions. The trainer maps LATENT to the mesh's "model" dimension; all others stay whole.
LATENT = "d_sae"


@dataclass
class LossOutput:
    """The loss of one batch and what the trainer needs for metrics (all in scaled space)."""

    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    feature_acts: Tensor | None = None
    reconstruction: Tensor | None = None
    label: Tensor | None = None
    sparse_latents: SparseLatents | None = None
    """The sparse path's latents (then ``feature_acts`` is None): densified only when read."""

    def latents(self) -> Tensor:
        """The latent activations as a dense tensor."""
        if self.feature_acts is not None:
            return self.feature_acts
        if self.sparse_latents is None:
            raise RuntimeError("the loss output holds no latent activations")
        return self.sparse_latents.dense()

    @property
    def n_rows(self) -> int:
        """Tokens in the batch (a DTensor of latents reports its global row count)."""
        if self.feature_acts is not None:
            return int(self.feature_acts.shape[0])
        if self.sparse_latents is None:
            raise RuntimeError("the loss output holds no latent activations")
        return self.sparse_latents.n_rows

    def firing_counts(self) -> Tensor:
        """Tokens each latent fired on in this batch, without densifying sparse latents."""
        if self.feature_acts is None and self.sparse_latents is not None:
            return self.sparse_latents.firing_counts()
        return M.firing_counts(self.latents())


def resolve_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def factory_kwargs(cfg: DictionaryConfig, device: str | torch.device | None) -> dict[str, Any]:
    """``dtype``/``device`` keywords for a dictionary's tensors: the dtype is identity (in ``cfg``), the
    device is placement (given at build time; None is CPU, "auto" is CUDA when present)."""
    return {"dtype": resolve_dtype(cfg.dtype), "device": resolve_device("cpu" if device is None else device)}


class DictionaryCompatibilityError(RaysaeError, ValueError):
    """A dictionary does not fit a language model: another width, or hooks the model lacks."""


class SparseDictionary(nn.Module, ABC):
    """Encode activations into sparse latents and decode them back (or into another hook)."""

    architecture: ClassVar[str]
    """Registry name of the class; ``@register`` files the class under it (and ``aliases``)."""
    aliases: ClassVar[tuple[str, ...]] = ()
    """Further registry names served by the same class (a transcoder is an SAE with another label)."""

    def __init__(self, cfg: DictionaryConfig, latent_shape: tuple[int, ...], scale_shape: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.d_model = cfg.d_model
        self.d_sae = cfg.latent_count
        self.latent_shape = latent_shape
        self.activation: Activation = build_activation(cfg, latent_shape)
        # Dataset-wide activation norm scaling: x_scaled = x * input_scale, y_scaled = y * output_scale.
        self.register_buffer("input_scale", torch.ones(scale_shape))
        self.register_buffer("output_scale", torch.ones(scale_shape))

    # ---- what each architecture defines -------------------------------------------------------
    @property
    @abstractmethod
    def hooks_in(self) -> list[str]:
        """Hook points read as input, in group order."""

    @property
    @abstractmethod
    def hooks_out(self) -> list[str]:
        """Hook points predicted as output, in group order."""

    @abstractmethod
    def encode_pre(self, x: Tensor) -> Tensor:
        """Pre-activations ``[batch, *latent_shape]`` of scaled input ``x``."""

    @abstractmethod
    def decode_scaled(self, z: Tensor) -> Tensor:
        """Scaled reconstruction of the label from latents ``z``."""

    @abstractmethod
    def decoder_norms(self) -> Tensor:
        """Norm of each latent's whole decoder (all groups it writes to), shape ``latent_shape``."""

    @abstractmethod
    def scale_decoder_(self, factor: Tensor) -> None:
        """Multiply each latent's decoder by ``factor`` (shape ``latent_shape``), in place."""

    @abstractmethod
    def project_decoder_grad_(self) -> None:
        """Remove from each latent's decoder gradient its component parallel to the decoder."""

    def tie_encoder_to_decoder_(self) -> None:
        """Set each encoder to the transpose of its decoder (per head/layer)."""
        raise NotImplementedError(f"{type(self).__name__} cannot tie its encoder to its decoder")

    @abstractmethod
    def fold_scales_(self) -> None:
        """Fold input/output scales into the weights so the dictionary works on raw activations."""

    @classmethod
    @abstractmethod
    def param_dims(cls) -> dict[str, tuple[str, ...]]:
        """Named dimensions of every parameter and buffer; ``LATENT`` marks the shardable one."""

    # ---- batches ------------------------------------------------------------------------------
    def _stack(self, batch: Batch, hooks: list[str]) -> Tensor:
        if isinstance(batch, Tensor):
            return batch
        missing = [h for h in hooks if h not in batch]
        if missing:
            raise KeyError(f"batch lacks hook(s) {missing}; it has {sorted(batch)}")
        if len(hooks) == 1 and not self.grouped:
            return batch[hooks[0]]
        return torch.stack([batch[h] for h in hooks], dim=1)

    @property
    def grouped(self) -> bool:
        """True when activations carry a group dim (CLT layers, CrossCoder heads)."""
        return len(self.latent_shape) > 1 or self.input_scale.dim() > 0

    def prepare_input(self, batch: Batch) -> Tensor:
        """Raw input activations from a tensor or a ``{hook: tensor}`` mapping."""
        return self._stack(batch, self.hooks_in)

    def prepare_label(self, batch: Batch) -> Tensor:
        """Raw label activations; a bare tensor is its own label (an SAE or a CrossCoder)."""
        if isinstance(batch, Tensor):
            if self.hooks_in != self.hooks_out:
                raise ValueError(
                    f"{self.cfg.architecture} needs a {{hook: tensor}} batch with {self.hooks_out}"
                )
            return batch
        return self._stack(batch, self.hooks_out)

    def _scale(self, t: Tensor, scale: Tensor) -> Tensor:
        return t * (scale[..., None] if scale.dim() else scale)

    # ---- inference on raw activations ---------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Latent activations of raw input ``x``."""
        return self.activation(self.encode_pre(self._scale(x, self.input_scale)))

    def decode(self, z: Tensor) -> Tensor:
        """Raw-space reconstruction from latents."""
        return self._scale(self.decode_scaled(z), 1 / self.output_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    # ---- features, as analysis and serving number them ------------------------------------------
    # Every feature has one flat index g = group * d_sae + index. A group is a set of d_sae latents that
    # read one place: a CLT layer; the whole dictionary otherwise.
    @property
    def n_groups(self) -> int:
        """Latent groups (CLT layers); 1 for dictionaries with one latent space."""
        return 1

    @property
    def n_features(self) -> int:
        """Features under the flat numbering: ``n_groups * d_sae``."""
        return self.n_groups * self.d_sae

    def _check_group(self, group: int) -> None:
        if not 0 <= group < self.n_groups:
            raise IndexError(f"group {group} out of range: {type(self).__name__} has {self.n_groups}")

    def group_hook(self, group: int) -> str:
        """The stored ``hook`` of ``group``'s features (part of a feature's identity in the store)."""
        self._check_group(group)
        return self.hooks_in[group]

    def group_layer(self, group: int) -> int | None:
        """The layer of ``group`` (position in ``hooks_in``) for layered dictionaries; None otherwise."""
        self._check_group(group)
        return None

    def feature_hooks(self) -> list[str]:
        """Every stored hook of this dictionary, in group order."""
        return [self.group_hook(g) for g in range(self.n_groups)]

    def encode_flat(self, acts: Mapping[str, Tensor]) -> Tensor:
        """Latents ``[N, n_features]`` of raw activation rows ``{hook: [N, d_model]}``, without autograd.

        Rows are moved to the dictionary's device and dtype; hooks it does not read are ignored.
        """
        ref = self.input_scale
        x = self.prepare_input({h: acts[h].to(device=ref.device, dtype=ref.dtype) for h in self.hooks_in})
        with torch.inference_mode():
            z = self.encode(x)
        return z.reshape(z.shape[0], -1)

    @abstractmethod
    def write_directions(self, group: int, index: Tensor, n_layers: int | None = None) -> Tensor:
        """Raw-space residual-stream directions ``[len(index), d_model]`` that features write (for DLA).

        ``n_layers`` is the model's depth, needed to order final-norm hooks.
        """

    def check_model_compatible(self, model_name: str, d_model: int, n_layers: int) -> None:
        """Raise ``DictionaryCompatibilityError`` unless a model of this width and depth has every hook
        this dictionary reads (what encoding the model's activations needs)."""
        if d_model != self.d_model:
            raise DictionaryCompatibilityError(
                f"the dictionary reads d_model={self.d_model} activations but {model_name} has "
                f"d_model={d_model}"
            )
        for hook in self.hooks_in:
            try:
                parse_hook(hook, n_layers)
            except HookError as err:
                raise DictionaryCompatibilityError(
                    f"the dictionary's hook {hook!r} does not fit {model_name} ({n_layers} layers): {err}"
                ) from err

    # ---- the shared loss ----------------------------------------------------------------------
    def compute_loss(
        self,
        batch: Batch,
        sparsity_coefficient: float | None = None,
        dead_mask: Tensor | None = None,
        aux_k: int | None = None,
        aux_k_coefficient: float = 0.0,
    ) -> LossOutput:
        """MSE (summed over features and groups, mean over tokens) + sparsity term + AuxK loss."""
        x = self._scale(self.prepare_input(batch).to(self.input_scale.dtype), self.input_scale)
        y = self._scale(self.prepare_label(batch).to(self.output_scale.dtype), self.output_scale)
        pre = self.encode_pre(x)
        z = self.activation(pre)
        y_hat = self.decode_scaled(z)
        mse = (y_hat - y).pow(2).flatten(1).sum(-1).mean()
        parts = {"mse": mse}
        loss = mse
        coef = self.cfg.sparsity_coefficient if sparsity_coefficient is None else sparsity_coefficient
        if self.cfg.act_fn in ("relu", "jumprelu") and coef > 0:
            sparsity = self.sparsity_loss(pre, z)
            parts["sparsity"] = sparsity
            loss = loss + coef * sparsity
        if dead_mask is not None and aux_k_coefficient > 0 and self.cfg.act_fn in ("topk", "batchtopk"):
            aux = self.aux_k_loss(pre, y - y_hat.detach(), dead_mask, aux_k or self.d_model // 2)
            parts["aux_k"] = aux
            loss = loss + aux_k_coefficient * aux
        parts = {k: v.detach() for k, v in parts.items()}
        return LossOutput(loss, parts, z, y_hat, y)

    @property
    def supports_sparse_loss(self) -> bool:
        """Whether ``compute_sparse_loss`` exists for this dictionary and activation (see
        ``raysae.dictionaries.sparse``); the dense ``compute_loss`` is always there."""
        return False

    def compute_sparse_loss(self, batch: Batch, **kwargs: Any) -> LossOutput:
        """``compute_loss`` with sparse decode and gradients, where ``supports_sparse_loss``."""
        raise NotImplementedError(f"{type(self).__name__} has no sparse loss")

    def sparsity_loss(self, pre: Tensor, z: Tensor) -> Tensor:
        """Per-token sparsity term, averaged over the batch."""
        norms = self.decoder_norms()
        if self.cfg.sparsity_penalty == "l1":
            per_latent = z * norms
        elif self.cfg.sparsity_penalty == "tanh":
            per_latent = torch.tanh(self.cfg.tanh_scale * z * norms)
        else:
            per_latent = self.activation.l0_surrogate(pre)
        return per_latent.flatten(1).sum(-1).mean()

    def aux_k_loss(self, pre: Tensor, residual: Tensor, dead_mask: Tensor, k_aux: int) -> Tensor:
        """AuxK (Gao et al., 2024): the top-k_aux dead latents reconstruct the residual, scaled by
        min(dead / k_aux, 1) as SAELens does. ``dead_mask`` has shape ``latent_shape``."""
        n_dead = int(dead_mask.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        k = min(k_aux, int(dead_mask.reshape(-1, dead_mask.shape[-1]).sum(-1).max()))
        dead_pre = torch.where(dead_mask, pre, torch.full_like(pre, -torch.inf))
        kth = self.activation.kth_value(dead_pre, k)  # latent-sharded: no gather of pre
        z_aux = torch.relu(dead_pre) * (dead_pre >= kth).to(pre.dtype)
        linear = self.decode_scaled(z_aux) - self.decode_scaled(torch.zeros_like(z_aux))
        scale = min(n_dead / k_aux, 1.0)
        return scale * (linear - residual).pow(2).flatten(1).sum(-1).mean()

    # ---- decoder norm handling ------------------------------------------------------------------
    @torch.no_grad()
    def set_decoder_norm_(self, norm: float | Tensor = 1.0) -> None:
        """Rescale every latent's decoder to ``norm``."""
        self.scale_decoder_(norm / self.decoder_norms().clamp(min=1e-12))

    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to folder ``path`` (scales folded in)."""
        from raysae.dictionaries.io import save_dictionary

        return save_dictionary(self, path)

    def extra_repr(self) -> str:
        return f"architecture={self.cfg.architecture}, d_model={self.d_model}, d_sae={self.d_sae}, act_fn={self.cfg.act_fn}"
