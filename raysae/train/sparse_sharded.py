"""The sparse TopK/BatchTopK step on a DTensor-sharded SAE: local shards, explicit collectives.

``compute_sharded_loss`` runs the dense loss on DTensors. DTensor has no sparse CSR ops, so this module
runs ``raysae.dictionaries.sparse``'s autograd functions on each rank's *local* tensors and writes the
few collectives out; the result equals the dense sharded path (and the unsharded one) in loss, latents,
gradients and, after ``reduce_gradients_``, optimiser steps:

* Parameters enter through ``to_local(grad_placements=...)`` with ``Partial`` on ``data``: a rank's
  gradient is its share of the global-mean loss and ``reduce_gradients_`` all-reduces it once, as on
  the dense path. The share is the mean over this rank's rows divided by the data size (equal rows
  per data rank, checked).
* Selection: the k-th value per row over the model group (TopK, AuxK) or over the flattened global
  batch, data and model groups (BatchTopK), from k candidates per shard (``kth_value_over``, what
  ``sharded_kth_value`` exchanges). The local active set is every local entry at or above it, the
  dense path's ``pre >= kth``, ties included; so a row holds a different count on each model shard.
* Decode: ``sparse_decode`` on the local ``W_dec`` rows gives a partial ``[rows, d_model]``, summed
  over the model group with an *identity* backward (Megatron's "reduce from the model-parallel
  region"): every model rank computes the same loss on the summed output, so an all-reduce in backward
  would multiply every gradient by the model size. Conversely the ``b_dec`` an SAE subtracts before
  encoding enters with identity forward and all-reduce backward ("copy to the region"): its encoder
  gradient is a sum over latents, split over the model ranks. AuxK's decode shares the forward
  all-reduce. Nothing latent-sized is gathered.
* Metrics: ``ShardedSparseLatents`` presents the local pattern as DTensors (latents ``Shard`` on both
  mesh dims, firing counts ``Partial`` on ``data``), so ``to_full`` reads global values as on the
  dense path; ``loss`` and ``parts`` are plain tensors holding the global values (one scalar
  all-reduce over ``data``), and ``loss`` backpropagates this rank's share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Placement, Replicate, Shard

from raysae.dictionaries.activations import BatchTopK
from raysae.dictionaries.base import Batch, LossOutput, SparseDictionary
from raysae.dictionaries.sae import SparseAutoencoder
from raysae.dictionaries.sparse import Pattern, SparseLatents, gather_active, sparse_decode
from raysae.train.mesh import DATA, MODEL, mesh_dim, mesh_size
from raysae.train.sharding import (
    _contiguous,
    check_data_rows,
    dictionary_mesh,
    kth_value_over,
    replicate,
)


def supports_sharded_sparse_loss(dictionary: SparseDictionary) -> bool:
    """Whether ``compute_sharded_sparse_loss`` serves this dictionary: an SAE/transcoder whose
    unsharded sparse path exists (TopK or BatchTopK, no GLU gate)."""
    return isinstance(dictionary, SparseAutoencoder) and dictionary.supports_sparse_loss


# ---- the two model-parallel region functions ---------------------------------------------------------


def _group(mesh: DeviceMesh, name: str) -> dist.ProcessGroup | None:
    """The process group of mesh dim ``name``, or None when it has one rank (no collective needed)."""
    i = mesh_dim(mesh, name)
    return None if i is None or mesh.size(i) == 1 else mesh.get_group(i)


class _SumOverModel(torch.autograd.Function):
    """All-reduce (sum) forward, identity backward: the summed output feeds a loss every model rank
    computes identically, so each rank's gradient of its partial sum is the output's gradient."""

    @staticmethod
    def forward(ctx, t: Tensor, group: dist.ProcessGroup) -> Tensor:  # type: ignore[override]
        out = t.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None


class _CopyToModel(torch.autograd.Function):
    """Identity forward, all-reduce (sum) backward: a replicated input used by every model rank's
    local latents gets the sum of their gradient contributions."""

    @staticmethod
    def forward(ctx, t: Tensor, group: dist.ProcessGroup) -> Tensor:  # type: ignore[override]
        ctx.group = group
        return t.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sum_over_model(t: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """Sum the model ranks' partial ``t``; identity backward (see ``_SumOverModel``)."""
    return t if group is None else _SumOverModel.apply(t, group)


def copy_to_model(t: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """``t`` itself; backward sums the model ranks' gradients (see ``_CopyToModel``)."""
    return t if group is None else _CopyToModel.apply(t, group)


# ---- metrics on the global batch ------------------------------------------------------------------


@dataclass(frozen=True)
class ShardedSparseLatents(SparseLatents):
    """This rank's rows and latent slice of the sparse latents, read as global DTensors."""

    mesh: DeviceMesh

    def _placements(self, data: Placement, model: Placement) -> list[Placement]:
        names = self.mesh.mesh_dim_names or ()
        return [data if n == DATA else model if n == MODEL else Replicate() for n in names]

    @property
    def n_rows(self) -> int:
        return self.pattern.shape[0] * mesh_size(self.mesh, DATA)

    @property
    def d_sae(self) -> int:
        return self.pattern.shape[1] * mesh_size(self.mesh, MODEL)

    def dense(self) -> Tensor:
        """``[batch, d_sae]`` as a DTensor: rows ``Shard`` on ``data``, latents on ``model``."""
        shape = torch.Size((self.n_rows, self.d_sae))
        local, placements = super().dense(), self._placements(Shard(0), Shard(1))
        return DTensor.from_local(
            local, self.mesh, placements, run_check=False, shape=shape, stride=_contiguous(shape)
        )

    def firing_counts(self) -> Tensor:
        """Counts per latent: ``Partial(sum)`` over the data ranks' rows, ``Shard`` on ``model``."""
        shape = torch.Size((self.d_sae,))
        local, placements = super().firing_counts(), self._placements(Partial(), Shard(0))
        return DTensor.from_local(local, self.mesh, placements, run_check=False, shape=shape, stride=(1,))


# ---- the loss --------------------------------------------------------------------------------------


def _local(t: Tensor) -> Tensor:
    """The local tensor of a parameter or buffer; a parameter's gradient comes back ``Partial`` on
    ``data`` (this rank's share) and with the parameter's own placement on ``model``."""
    if not isinstance(t, DTensor):
        return t
    if not t.requires_grad:
        return t.to_local()
    names = t.device_mesh.mesh_dim_names or ()
    grads = tuple(Partial() if n == DATA else p for n, p in zip(names, t.placements, strict=True))
    return t.to_local(grad_placements=grads)


def _at_or_above(pre: Tensor, kth: Tensor) -> Pattern:
    """The entries of ``pre`` at or above ``kth`` (broadcast), as the dense path's ``pre >= kth`` mask."""
    row, col = (pre >= kth).nonzero(as_tuple=True)
    return Pattern.from_rows(row, col, (pre.shape[0], pre.shape[1]))


def _local_dead(dead_mask: Tensor, mesh: DeviceMesh, model_rank: int) -> tuple[Tensor, int]:
    """This rank's slice of the full (or DTensor) dead mask, and the global dead count."""
    full = replicate(dead_mask, mesh).to_local() if isinstance(dead_mask, DTensor) else dead_mask
    return full.chunk(mesh_size(mesh, MODEL), dim=-1)[model_rank], int(full.sum())


@torch.no_grad()
def _update_threshold(act: BatchTopK, values: Tensor, groups: list[dist.ProcessGroup]) -> None:
    """BatchTopK's running threshold from the global smallest active value (a MIN all-reduce)."""
    positive = values[values > 0]
    smallest = torch.cat([positive, positive.new_full((1,), float("inf"))]).amin()
    for group in groups:
        dist.all_reduce(smallest, op=dist.ReduceOp.MIN, group=group)
    threshold = act.threshold
    act.move_threshold_(threshold.to_local() if isinstance(threshold, DTensor) else threshold, smallest)


def compute_sharded_sparse_loss(
    dictionary: SparseDictionary,
    batch: Batch,
    sparsity_coefficient: float | None = None,
    dead_mask: Tensor | None = None,
    aux_k: int | None = None,
    aux_k_coefficient: float = 0.0,
    encode_dtype: torch.dtype | None = None,
    check_rows: bool = True,
) -> LossOutput:
    """``compute_sharded_loss`` with sparse decode and gradients, for ``supports_sharded_sparse_loss``
    dictionaries; ``batch`` holds this rank's rows (the same on every rank of a data replica).

    Arguments as ``SparseAutoencoder.compute_sparse_loss``; ``dead_mask`` is full-size (plain, the same
    on every rank, or a DTensor). ``sparsity_coefficient`` is unused, as on the dense path for these
    activations. Returns ``feature_acts`` None and ``sparse_latents`` a ``ShardedSparseLatents``;
    ``reconstruction`` and ``label`` are DTensors (rows ``Shard`` on ``data``).
    """
    d = dictionary
    if not isinstance(d, SparseAutoencoder) or not supports_sharded_sparse_loss(d):
        raise ValueError(f"no sharded sparse loss for {type(d).__name__} with act_fn={d.cfg.act_fn!r}")
    mesh = dictionary_mesh(d)
    dp, data, model = mesh_size(mesh, DATA), _group(mesh, DATA), _group(mesh, MODEL)
    model_rank = 0 if model is None else mesh.get_local_rank(MODEL)
    if not isinstance(batch, Tensor):
        batch = {h: t.to_local() if isinstance(t, DTensor) else t for h, t in batch.items()}
    elif isinstance(batch, DTensor):
        batch = batch.to_local()
    x, y = d.prepare_input(batch), d.prepare_label(batch)
    check_data_rows([x, y], mesh, across=check_rows)
    W_enc, b_enc, W_dec, b_dec = (_local(p) for p in (d.W_enc, d.b_enc, d.W_dec, d.b_dec))
    s_in, s_out = _local(d.input_scale), _local(d.output_scale)
    x, y = x.to(s_in.dtype) * s_in, y.to(s_out.dtype) * s_out
    b_sub = copy_to_model(b_dec, model) if d.subtracts_b_dec else None
    with torch.no_grad():
        x_in = x - b_sub if b_sub is not None else x
        if encode_dtype is None or encode_dtype == W_enc.dtype:
            pre = torch.addmm(b_enc, x_in, W_enc)
        else:  # selection in low precision as the unsharded path; upcast values compare identically
            pre = torch.addmm(b_enc.to(encode_dtype), x_in.to(encode_dtype), W_enc.to(encode_dtype))
            pre = pre.to(W_enc.dtype)
    act, model_groups = d.activation, [model] if model is not None else []
    every_group = [g for g in (data, model) if g is not None]
    if isinstance(act, BatchTopK):  # the k·batch largest of the global [batch, d_sae]
        n = min(act.k * x.shape[0] * dp, pre.numel() * dp * mesh_size(mesh, MODEL))
        pattern = _at_or_above(pre, kth_value_over(pre.reshape(-1), n, every_group))
    else:
        pattern = _at_or_above(pre, kth_value_over(pre, act.k, model_groups))
    values = torch.relu(gather_active(x_in, W_enc, b_enc, b_sub, pre, pattern))
    if isinstance(act, BatchTopK):
        _update_threshold(act, values.detach(), every_group)
    partials = [sparse_decode(values, W_dec, pattern)]
    aux_scale = None
    if dead_mask is not None and aux_k_coefficient > 0:
        k_aux = aux_k or d.d_model // 2
        dead, n_dead = _local_dead(dead_mask, mesh, model_rank)
        if n_dead:
            dead_pre = pre.masked_fill(~dead.to(pre.device), -torch.inf)
            kth = kth_value_over(dead_pre, min(k_aux, n_dead), model_groups)
            aux_pattern = _at_or_above(dead_pre, kth)
            aux_values = torch.relu(gather_active(x_in, W_enc, b_enc, b_sub, pre, aux_pattern))
            partials.append(sparse_decode(aux_values, W_dec, aux_pattern))
        aux_scale = min(n_dead / k_aux, 1.0)
    decoded = sum_over_model(torch.cat(partials, dim=-1), model).split(d.d_model, dim=-1)
    y_hat = decoded[0] + b_dec
    share = (y_hat - y).pow(2).sum(-1).mean() / dp  # this rank's part of the global mean
    shares = {"mse": share}
    if aux_scale is not None:
        aux = y.new_zeros(())
        if len(decoded) > 1:
            aux = aux_scale * (decoded[1] - (y - y_hat.detach())).pow(2).sum(-1).mean() / dp
        shares["aux_k"] = aux
        share = share + aux_k_coefficient * aux
    totals = torch.stack([v.detach() for v in shares.values()])
    if data is not None:
        dist.all_reduce(totals, group=data)
    parts = dict(zip(shares, totals.unbind(), strict=True))
    total = parts["mse"] + aux_k_coefficient * parts["aux_k"] if "aux_k" in parts else parts["mse"]
    # The global value (the same on every rank) with the gradient of this rank's share.
    loss = share + (total - share).detach()
    latents = ShardedSparseLatents(pattern, values.detach(), mesh)
    recon, label = (_rows(t.detach(), mesh, dp) for t in (y_hat, y))
    return LossOutput(loss, parts, None, recon, label, sparse_latents=latents)


def _rows(t: Tensor, mesh: DeviceMesh, dp: int) -> DTensor:
    """This rank's rows of a batch-sized tensor as a DTensor: ``Shard(0)`` on data, else replicated."""
    placements = [Shard(0) if n == DATA else Replicate() for n in mesh.mesh_dim_names or ()]
    shape = torch.Size((t.shape[0] * dp, *t.shape[1:]))
    return DTensor.from_local(t, mesh, placements, run_check=False, shape=shape, stride=_contiguous(shape))
