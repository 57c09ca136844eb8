"""Shard a sparse dictionary over a ``(data, model)`` DeviceMesh with DTensor, pure torch (no Ray).

Placements come from ``param_dims()``: the ``LATENT`` dim of a parameter or buffer is ``Shard`` on the
``model`` mesh dim, everything else (and every ``data`` mesh dim) is ``Replicate``. The training step
then runs the *same* ``SparseDictionary.compute_loss`` on DTensors:

* Batches are ``Shard(0)`` on ``data`` (each data rank reads its own rows) and ``Replicate`` on
  ``model``. Reductions over the batch are therefore global: the loss is the mean over all ranks' rows.
* DTensor does **not** all-reduce gradients over ``data``: after ``backward`` a parameter's gradient is
  ``Partial(sum)`` on ``data`` (each rank's share of the global-mean loss). Later DTensor ops stay
  correct by all-reducing it on *every* use (measured on a dp=2 SAE: decoder-grad projection, clipping
  and an Adam step issued 16 all-reduces instead of 4), and ``.item()`` on it reads only the local share. ``reduce_gradients_``
  redistributes each gradient to its parameter's placements once; call it after ``backward`` (after
  the last micro-batch; ``Partial`` gradients accumulate correctly) and before
  ``project_decoder_grad_``, clipping and ``optimizer.step()``.
* TopK/BatchTopK/AuxK select by the k-th largest value (``Activation.kth_value``).
  ``distribute_dictionary`` swaps in ``sharded_kth_value``, which all-gathers only k candidates per
  shard and row instead of the full pre-activations (see its docstring).
* Decoder-norm ops are per latent, so they run locally on each latent shard.
* Measured with torch 2.13: DTensor's own ``topk`` and ``min(dim)`` all-gather a tensor sharded on the
  reduced dim (hence ``kth_value`` here, ``amin`` in BatchTopK and ``kth_value`` in AuxK); ``amin``
  becomes a ``Partial(min)`` all-reduce. The decoder's contraction over the sharded latent dim is
  ``Partial`` on ``model``; DTensor reduce-scatters ``ŷ − y`` for the MSE and all-gathers its
  ``[batch, d_model]`` gradient in backward. No latent-sized tensor is ever gathered.

The sparse TopK/BatchTopK path (``raysae.train.sparse_sharded``) runs the same loss on local shards
with explicit collectives; this dense path stays its reference.

Scalars: ``.item()`` / ``int()`` of a ``Partial`` DTensor returns the rank's *local* part. Read metrics
with ``to_full(t)``; pass the AuxK ``dead_mask`` through ``compute_sharded_loss``, which replicates it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.placement_types import _StridedShard

from raysae.dictionaries.activations import local_kth_value
from raysae.dictionaries.base import LATENT, Batch, LossOutput, SparseDictionary
from raysae.train.mesh import DATA, MODEL, mesh_dim, mesh_size

# torch >= 2.13 renames all_gather_into_tensor (now deprecated) to all_gather_single.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

# ---- placements --------------------------------------------------------------------------------------


def param_dim_names(dictionary: SparseDictionary, name: str) -> tuple[str, ...]:
    """Named dims of parameter/buffer ``name``; list indices (``W_dec.0``) are dropped to look it up."""
    table = type(dictionary).param_dims()
    key = ".".join(part for part in name.split(".") if not part.isdigit())
    if key not in table:
        raise KeyError(
            f"{type(dictionary).__name__}.param_dims() does not describe {name!r} (looked up {key!r})"
        )
    return table[key]


def placements_for(dims: tuple[str, ...], mesh: DeviceMesh) -> tuple[Placement, ...]:
    """``Shard(LATENT's index)`` on the ``model`` mesh dim, ``Replicate()`` everywhere else."""
    latent: Placement = Shard(dims.index(LATENT)) if LATENT in dims else Replicate()
    return tuple(latent if name == MODEL else Replicate() for name in mesh.mesh_dim_names or ())


def dictionary_placements(dictionary: SparseDictionary, mesh: DeviceMesh) -> dict[str, tuple[Placement, ...]]:
    """Placements of every parameter and buffer, keyed by state-dict name; checks dims and divisibility."""
    mp = mesh_size(mesh, MODEL)
    out = {}
    for name, t in [*dictionary.named_parameters(), *dictionary.named_buffers()]:
        dims = param_dim_names(dictionary, name)
        if len(dims) != t.dim():
            raise ValueError(f"param_dims() gives {name!r} dims {dims} but it has shape {tuple(t.shape)}")
        if LATENT in dims and t.shape[dims.index(LATENT)] % mp:
            raise ValueError(
                f"{name!r}: d_sae={t.shape[dims.index(LATENT)]} is not divisible by model_parallel_size={mp}"
            )
        out[name] = placements_for(dims, mesh)
    return out


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (module.get_submodule(path) if path else module), attr


def is_distributed(dictionary: nn.Module) -> bool:
    """True when the dictionary's parameters are DTensors."""
    return any(isinstance(p, DTensor) for p in dictionary.parameters())


def dictionary_mesh(dictionary: nn.Module) -> DeviceMesh:
    """The mesh a distributed dictionary lives on."""
    for t in [*dictionary.parameters(), *dictionary.buffers()]:
        if isinstance(t, DTensor):
            return t.device_mesh
    raise ValueError("the dictionary is not distributed; call distribute_dictionary(dictionary, mesh) first")


def distribute_dictionary(dictionary: SparseDictionary, mesh: DeviceMesh) -> SparseDictionary:
    """Turn every parameter and buffer into a DTensor on ``mesh``, in place, and return the dictionary.

    Values come from rank 0 (``distribute_tensor``'s ``src_data_rank=0``), so ranks need not share a
    seed. Build the optimiser *after* this call: the parameters are new objects.
    """
    if is_distributed(dictionary):
        raise ValueError("the dictionary is already distributed")
    placements = dictionary_placements(dictionary, mesh)
    with torch.no_grad():
        for name, p in list(dictionary.named_parameters()):
            owner, attr = _owner(dictionary, name)
            dt = distribute_tensor(p.detach(), mesh, placements[name])
            setattr(owner, attr, nn.Parameter(dt, requires_grad=p.requires_grad))
        for name, b in list(dictionary.named_buffers()):
            owner, attr = _owner(dictionary, name)
            persistent = attr not in owner._non_persistent_buffers_set
            owner.register_buffer(attr, distribute_tensor(b, mesh, placements[name]), persistent=persistent)
    dictionary.activation.kth_value = sharded_kth_value
    return dictionary


# ---- top-k over a sharded latent dim ---------------------------------------------------------------


def _split_dim(p: Placement) -> int | None:
    """The tensor dim a placement splits (``Shard`` or the ``_StridedShard`` that ``flatten`` makes)."""
    if isinstance(p, Shard | _StridedShard):
        return p.dim
    return None


def _all_gather_last(t: Tensor, group: dist.ProcessGroup) -> Tensor:
    """Concatenate every rank's ``t`` (same shape on all ranks) along the last dim."""
    world = dist.get_world_size(group)
    out = t.new_empty((world * t.shape[0], *t.shape[1:]))  # the concatenated form: gloo rejects stacked
    _all_gather_single(out, t.contiguous(), group=group)
    return out.unflatten(0, (world, t.shape[0])).movedim(0, -2).flatten(-2)


def sharded_kth_value(x: Tensor, k: int) -> Tensor:
    """The k-th largest value along the last dim (keepdim), for plain tensors and DTensors.

    A plain tensor goes to ``local_kth_value``. For a DTensor, the mesh dims that split the last dim
    (``Shard`` on ``model`` for TopK/AuxK; for BatchTopK's flattened ``[batch·d_sae]`` also
    ``Shard(0)`` on ``data``, as the ``_StridedShard`` that ``flatten`` produces) are reduced by
    candidates: each rank takes its local top-k of ``x.to_local()`` and all-gathers those k values
    per row over one split mesh dim at a time (re-selecting the top k between dims); the k-th largest
    of the final candidates is the global k-th value. Traffic is at most k values per row and rank,
    never the full ``x`` (unless a shard holds fewer than k); DTensor's own ``topk`` would all-gather
    ``x``. The result is wrapped back with ``DTensor.from_local`` as ``Replicate`` on the split mesh
    dims and ``x``'s placement elsewhere (a ``data``-sharded TopK keeps its row sharding), so
    ``x >= kth`` broadcasts locally. It carries no gradient: callers only compare against it. The value
    is an element of ``x``, so it equals the unsharded reference's exactly.
    """
    if not isinstance(x, DTensor):
        return local_kth_value(x, k)
    mesh, last = x.device_mesh, x.dim() - 1
    if any(p.is_partial() for p in x.placements):
        x = x.redistribute(mesh, [Replicate() if p.is_partial() else p for p in x.placements])
    split = [i for i, p in enumerate(x.placements) if _split_dim(p) == last]
    kth = kth_value_over(x.to_local(), k, [mesh.get_group(i) for i in split if mesh.size(i) > 1])
    placements = [Replicate() if i in split else p for i, p in enumerate(x.placements)]
    shape = torch.Size((*x.shape[:-1], 1))
    return DTensor.from_local(kth, mesh, placements, run_check=False, shape=shape, stride=_contiguous(shape))


def kth_value_over(local: Tensor, k: int, groups: Sequence[dist.ProcessGroup]) -> Tensor:
    """The k-th largest value along the last dim of the tensor whose last dim is ``local`` concatenated
    over each of ``groups`` (keepdim, no gradient), by exchanging candidates: per group, each rank's top
    ``min(k, width)`` values are all-gathered and re-selected. Shards along a group have equal sizes
    (d_sae % model size == 0, equal rows per data rank), so the gathered widths agree."""
    with torch.no_grad():
        cand = local.detach()
        for group in groups:
            cand = cand.topk(min(k, cand.shape[-1]), dim=-1, sorted=False).values
            cand = _all_gather_last(cand, group)
        return local_kth_value(cand, k)


def _contiguous(shape: torch.Size) -> tuple[int, ...]:
    return torch.empty(shape, device="meta").stride()


# ---- batches and the loss --------------------------------------------------------------------------


def distribute_batch(batch: Batch, mesh: DeviceMesh, check_rows: bool = True) -> Batch:
    """Wrap this rank's rows as DTensors: ``Shard(0)`` on ``data``, ``Replicate`` on ``model``.

    Every rank of a data replica (same ``data_rank(mesh)``) must pass the same rows, and every data
    replica the same number of rows (DTensor's even sharding); ``check_rows`` verifies the latter with
    one tiny all-gather over ``data``.
    """
    placements = [Shard(0) if name == DATA else Replicate() for name in mesh.mesh_dim_names or ()]
    dp = mesh_size(mesh, DATA)

    def wrap(t: Tensor) -> Tensor:
        if isinstance(t, DTensor):
            return t
        shape = torch.Size((t.shape[0] * dp, *t.shape[1:]))
        return DTensor.from_local(
            t, mesh, placements, run_check=False, shape=shape, stride=_contiguous(shape)
        )

    tensors = [batch] if isinstance(batch, Tensor) else list(batch.values())
    check_data_rows([t for t in tensors if not isinstance(t, DTensor)], mesh, across=check_rows)
    if isinstance(batch, Tensor):
        return wrap(batch)
    return {hook: wrap(t) for hook, t in batch.items()}


def check_data_rows(tensors: Sequence[Tensor], mesh: DeviceMesh, across: bool = True) -> None:
    """Raise unless ``tensors`` (this rank's rows) agree in row count with each other and, with
    ``across``, over ``data`` (one tiny all-gather): DTensor's even sharding and the per-rank loss
    scaling of the sparse path need equal rows per data rank."""
    rows = {t.shape[0] for t in tensors}
    if len(rows) > 1:
        raise ValueError(f"the batch's tensors have different row counts {sorted(rows)}")
    if across and mesh_size(mesh, DATA) > 1 and rows:
        mine = torch.tensor([rows.pop()], device=tensors[0].device)
        every = _all_gather_last(mine, mesh.get_group(mesh_dim(mesh, DATA)))
        if (every != mine).any():
            raise ValueError(f"data-parallel ranks hold different row counts {every.tolist()}")


def replicate(t: Tensor, mesh: DeviceMesh) -> DTensor:
    """``t`` as a DTensor replicated on every mesh dim (a DTensor is gathered, a plain tensor wrapped)."""
    full = [Replicate()] * mesh.ndim
    if isinstance(t, DTensor):
        if t.dtype == torch.bool:  # gloo cannot all-gather bool
            return t.to(torch.uint8).redistribute(mesh, full).bool()
        return t.redistribute(mesh, full)
    return DTensor.from_local(t, mesh, full, run_check=False)


def compute_sharded_loss(
    dictionary: SparseDictionary,
    batch: Batch,
    dead_mask: Tensor | None = None,
    check_rows: bool = True,
    **loss_kwargs: Any,
) -> LossOutput:
    """``dictionary.compute_loss`` on a distributed dictionary with this rank's rows of ``batch``.

    ``dead_mask`` (plain, the same on every rank, or a DTensor) is replicated: AuxK counts dead latents
    with ``int()``, which on a sharded mask would count only this rank's latents. The returned
    ``parts`` are replicated too (one scalar all-reduce each), so ``.item()`` on them is global; ``loss``
    is the autograd root and may be ``Partial`` (read it with ``to_full``); ``feature_acts`` and
    ``reconstruction`` stay sharded like the batch and the latents. ``check_rows``: see
    ``distribute_batch``.
    """
    mesh = dictionary_mesh(dictionary)
    batch = distribute_batch(batch, mesh, check_rows=check_rows)
    if dead_mask is not None:
        dead_mask = replicate(dead_mask, mesh)
    out = dictionary.compute_loss(batch, dead_mask=dead_mask, **loss_kwargs)
    out.parts = {name: replicate(v, mesh) for name, v in out.parts.items()}
    return out


def to_full(t: Tensor) -> Tensor:
    """A plain tensor with ``t``'s global value (a collective when ``t`` is a sharded/partial DTensor)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


# ---- gradients -------------------------------------------------------------------------------------


def reduce_gradients_(dictionary: nn.Module) -> None:
    """All-reduce gradients over ``data``: redistribute each DTensor gradient to its parameter's placements.

    After ``backward`` DTensor leaves a gradient ``Partial(sum)`` on ``data``; summing gives the
    gradient of the global-mean loss. Parameters whose gradient already matches are left alone.
    """
    for p in dictionary.parameters():
        g = p.grad
        if isinstance(p, DTensor) and isinstance(g, DTensor) and tuple(g.placements) != tuple(p.placements):
            p.grad = g.redistribute(p.device_mesh, p.placements)


def clip_grad_norm_(parameters: nn.Module | Iterable[Tensor], max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (DTensor-aware ``torch.nn.utils.clip_grad_norm_``)
    and return the norm before clipping. Reduce gradients first; call on every rank."""
    params = parameters.parameters() if isinstance(parameters, nn.Module) else parameters
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = torch.nn.utils.clip_grad_norm_(grads, max_norm)
    return float(to_full(total))


# ---- export and import -----------------------------------------------------------------------------


def full_state_dict(dictionary: nn.Module, rank0_only: bool = False, cpu: bool = True) -> dict[str, Tensor]:
    """Plain full tensors of the state dict. A collective: call on every rank (never inside
    ``if rank == 0``); with ``rank0_only`` the other ranks take part and get ``{}``."""
    out = {}
    for name, t in dictionary.state_dict().items():
        full = to_full(t).detach()
        out[name] = full.cpu() if cpu else full
    if rank0_only and dist.is_initialized() and dist.get_rank() != 0:
        return {}
    return out


def load_full_state_dict(dictionary: nn.Module, state: Mapping[str, Tensor], strict: bool = True) -> None:
    """Load plain full tensors into a (distributed or plain) dictionary, re-sharding them.

    A collective; every rank passes tensors of the full shapes, and rank 0's values are used.
    """
    current = dictionary.state_dict()
    for name, t in current.items():
        if name in state and tuple(state[name].shape) != tuple(t.shape):
            raise ValueError(
                f"{name!r}: state has shape {tuple(state[name].shape)}, dictionary {tuple(t.shape)}"
            )
    sharded = dict(state)
    for name, cur in current.items():  # the dictionary's order, the same on every rank
        if name in state and isinstance(cur, DTensor):
            src = state[name].detach().to(cur.device, cur.dtype)
            sharded[name] = distribute_tensor(src, cur.device_mesh, cur.placements)
    dictionary.load_state_dict(sharded, strict=strict)


def gather_dictionary(dictionary: SparseDictionary, rank0_only: bool = False) -> SparseDictionary | None:
    """A plain CPU copy of a distributed dictionary (for ``save`` or evaluation); a collective.

    With ``rank0_only`` the other ranks take part and get None. Keeps ``cfg`` and an annealed
    ``activation.k``; export with ``gather_dictionary(d, rank0_only=True)`` then ``.save(path)`` on rank 0.
    """
    from raysae.dictionaries.registry import build_dictionary

    state = full_state_dict(dictionary, rank0_only=rank0_only)
    if not state:
        return None
    with torch.random.fork_rng(devices=[]):
        plain = build_dictionary(dictionary.cfg, device="cpu")
    plain.load_state_dict(state)
    plain.cfg = dictionary.cfg
    if hasattr(dictionary.activation, "k"):
        plain.activation.k = dictionary.activation.k
    return plain.train(dictionary.training)
