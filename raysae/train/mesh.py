"""The ``(data, model)`` DeviceMesh the trainer shards dictionaries over.

``data`` ranks hold whole replicas of the dictionary and read different rows; ``model`` ranks each hold
a slice of the latent dimension. Pure torch: Ray Train (or ``torch.multiprocessing``) initialises the
process group, this module only arranges its ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

DATA = "data"
MODEL = "model"
MESH_DIMS = (DATA, MODEL)


def default_device_type() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_mesh(
    data_parallel_size: int, model_parallel_size: int, device_type: str | None = None
) -> DeviceMesh:
    """A ``(data_parallel_size, model_parallel_size)`` mesh named ``("data", "model")`` over all ranks.

    Consecutive ranks share a data replica (they are the model-parallel group), so model-parallel
    traffic stays on one node when ranks are packed per node. A world of one with no process group
    yet gets a private single-process gloo group, so the same code runs in a notebook.
    """
    dp, mp = data_parallel_size, model_parallel_size
    if dp < 1 or mp < 1:
        raise ValueError(f"mesh sizes must be >= 1, got data_parallel_size={dp}, model_parallel_size={mp}")
    device_type = device_type or default_device_type()
    if not dist.is_initialized():
        if dp * mp != 1:
            raise RuntimeError(
                f"a {dp}x{mp} mesh needs torch.distributed initialised with world size {dp * mp} "
                "(Ray Train's TorchTrainer or init_process_group does it)"
            )
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    world = dist.get_world_size()
    if dp * mp != world:
        raise ValueError(
            f"mesh data_parallel_size x model_parallel_size = {dp} x {mp} = {dp * mp} does not match the "
            f"world size {world}; choose sizes whose product is {world}"
        )
    return init_device_mesh(device_type, (dp, mp), mesh_dim_names=MESH_DIMS)


def mesh_dim(mesh: DeviceMesh, name: str) -> int | None:
    """Index of the mesh dimension called ``name``, or None when the mesh has none."""
    names = mesh.mesh_dim_names or ()
    return names.index(name) if name in names else None


def mesh_size(mesh: DeviceMesh, name: str) -> int:
    """Size of the named mesh dimension (1 when the mesh lacks it)."""
    i = mesh_dim(mesh, name)
    return 1 if i is None else mesh.size(i)


def data_rank(mesh: DeviceMesh) -> int:
    """This rank's index along ``data``: which rows of the global batch it reads (0 without the dim)."""
    return 0 if mesh_dim(mesh, DATA) is None else mesh.get_local_rank(DATA)
