"""Training on Ray Train: activations stream from model replicas (or the cache) into TorchTrainer
workers whose dictionary is sharded with DTensor over a ``data × model`` mesh.

``train_sae`` / ``train_clt`` / ``train_crosscoder`` take the matching settings object; ``train``
takes any. The worker loop reuses ``Trainer.step`` unchanged; what it adds is the distributed
plumbing: rows gathered within each model-parallel group (so every shard of a replica sees the same
rows), an all-reduce each step to agree that every rank still has data, DCP checkpoints reported to
Ray Train, resume from ``ray.train.get_checkpoint()``, and the export of the final dictionary.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from raysae.config.run import (
    AnyTrainSettings,
    TrainCLTSettings,
    TrainCrossCoderSettings,
    TrainSAESettings,
    train_settings_from_dict,
)
from raysae.dictionaries.base import SparseDictionary
from raysae.dictionaries.io import load_dictionary
from raysae.dictionaries.registry import build_dictionary
from raysae.train.dist_checkpoint import DICTIONARY_DIR, load_distributed, read_state, save_distributed
from raysae.train.mesh import MODEL, build_mesh, mesh_dim
from raysae.train.metrics_sinks import JsonlSink, MetricsSink
from raysae.train.reporting import RayMetricsSink, WandbSink
from raysae.train.sharding import distribute_dictionary, gather_dictionary
from raysae.train.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where a finished run left its outputs."""

    dictionary_path: Path
    checkpoint_path: str
    metrics: dict[str, float]
    steps: int
    tokens: int


# ---- the worker side ----------------------------------------------------------------------------


def _gather_model_group(batch: dict[str, torch.Tensor], mesh) -> dict[str, torch.Tensor]:
    """Concatenate the rows of every rank in this rank's model-parallel group (same order on all)."""
    dim = mesh_dim(mesh, MODEL)
    if dim is None or mesh.size(dim) == 1:
        return batch
    group = mesh.get_group(dim)
    out = {}
    for hook, t in batch.items():
        t = t.contiguous()
        full = t.new_empty((t.shape[0] * mesh.size(dim), *t.shape[1:]))
        dist.all_gather_into_tensor(full, t, group=group)
        out[hook] = full
    return out


def _all_have_data(has: bool, device: torch.device) -> bool:
    """True only if every rank has another batch (a MIN all-reduce, so no rank waits alone)."""
    flag = torch.tensor([1 if has else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _batches(shard, hooks: list[str], local_rows: int, mesh, device: torch.device) -> Iterator[dict]:
    for b in shard.iter_torch_batches(batch_size=local_rows, drop_last=True, device=str(device)):
        yield _gather_model_group({h: b[h].float() for h in hooks}, mesh)


def _local_bytes(tensors) -> int:
    return sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in tensors)


def local_memory(dictionary: SparseDictionary, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Bytes of parameters and of optimiser state held by this worker (its shards only)."""
    states = [v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return {
        "memory/param_bytes_per_worker": float(_local_bytes(dictionary.parameters())),
        "memory/optimizer_bytes_per_worker": float(_local_bytes(states)),
    }


def _report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def worker_loop(config: dict[str, Any]) -> None:
    """The per-worker training function run by ``TorchTrainer``."""
    import ray.train
    import ray.train.torch

    settings = train_settings_from_dict(config["settings"])
    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    r, tc = settings.ray, settings.trainer
    mesh = build_mesh(r.data_parallel_size, r.model_parallel_size, device.type)

    dictionary = build_dictionary(settings.dictionary.model_copy(update={"device": str(device)}))
    sinks: list[MetricsSink] = []
    wandb_sink = None
    if rank == 0:
        wandb_sink = WandbSink(settings.wandb, settings.model_dump(mode="json"), settings.output_dir)
        sinks = [RayMetricsSink(settings.run_name, rank), wandb_sink]
    trainer = Trainer(tc, sinks=sinks, progress=False)
    hooks = list(dict.fromkeys([*dictionary.hooks_in, *dictionary.hooks_out]))
    data = _batches(ray.train.get_dataset_shard("train"), hooks, tc.batch_size // world, mesh, device)

    checkpoint = ray.train.get_checkpoint()
    pending: list[dict] = []
    if checkpoint is None:
        trainer.setup(dictionary)
        for b in data:
            pending.append(b)
            if len(pending) == tc.initializer.init_batches:
                break
        if not _all_have_data(bool(pending), device):
            raise RuntimeError("no activation rows reached a train worker: the data source is empty")
        trainer.initialize(pending)  # each rank initialises; distribute_dictionary keeps rank 0's values
    distribute_dictionary(dictionary, mesh)
    trainer.setup(dictionary)  # a new optimiser over the DTensor parameters
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.state = load_distributed(folder, dictionary, trainer.optimizer)
        for _ in range(trainer.state.step):  # skip what the checkpoint already trained on
            next(data, None)
    stream = itertools.chain(pending, data)  # lazily: never materialise the stream

    total, out, metrics = tc.total_steps, None, {}
    while trainer.state.step < total:
        t0 = time.perf_counter()
        batch = next(stream, None)
        trainer.add_data_wait(time.perf_counter() - t0)
        if not _all_have_data(batch is not None, device):
            break
        out = trainer.step(batch)
        step = trainer.state.step
        is_log = step % tc.log_every_steps == 0 or step == total
        is_ckpt = tc.checkpoint_every_steps is not None and step % tc.checkpoint_every_steps == 0
        if is_log or is_ckpt:
            metrics = trainer.metrics(out) | local_memory(dictionary, trainer.optimizer)  # a collective
            trainer.state.history.append(metrics)
            for sink in sinks:
                sink.log(step, metrics)
        if is_ckpt and step < total:
            with tempfile.TemporaryDirectory(prefix="raysae-ckpt-") as tmp:
                save_distributed(tmp, dictionary, trainer.optimizer, trainer.state)
                _report(metrics, Path(tmp))
        elif is_log:
            _report(metrics, None)
    if out is None and trainer.state.step == 0:
        raise RuntimeError("training ran no step: the data source yielded fewer rows than one batch")
    if out is None:  # resumed a run that had already finished: export it again
        metrics = trainer.state.history[-1] if trainer.state.history else {}
    elif not metrics or metrics.get("progress/step") != trainer.state.step:
        metrics = trainer.metrics(out) | local_memory(dictionary, trainer.optimizer)
        trainer.state.history.append(metrics)
    with tempfile.TemporaryDirectory(prefix="raysae-final-") as tmp:
        save_distributed(tmp, dictionary, trainer.optimizer, trainer.state)
        plain = gather_dictionary(dictionary, rank0_only=True)
        if plain is not None:
            plain.save(Path(tmp) / DICTIONARY_DIR)
        _report(metrics, Path(tmp))
    if wandb_sink is not None:
        wandb_sink.finish()


# ---- the driver side ----------------------------------------------------------------------------


def train(settings: AnyTrainSettings) -> TrainResult:
    """Run a training job on Ray (joining ``settings.ray.address`` or starting a local cluster)."""
    from raysae.ray_session import ensure_ray
    from raysae.train.ray_setup import build_trainer, preflight

    ensure_ray(settings.ray.address)
    plan = preflight(settings)
    trainer = build_trainer(settings, plan, worker_loop)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint: {result.error}")
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as folder:
        state = read_state(folder)
        target = out / DICTIONARY_DIR
        tmp = out / f".{DICTIONARY_DIR}.incoming"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(folder) / DICTIONARY_DIR, tmp)
        from raysae.dictionaries.io import replace_dir

        replace_dir(tmp, target)
    metrics_file = out / "metrics.jsonl"
    metrics_file.unlink(missing_ok=True)
    sink = JsonlSink(metrics_file)
    for m in state.history:
        sink.log(int(m["progress/step"]), m)
    load_dictionary(target)  # fail here, not later, if the export does not open
    return TrainResult(
        dictionary_path=target,
        checkpoint_path=result.checkpoint.path,
        metrics=state.history[-1] if state.history else {},
        steps=state.step,
        tokens=state.tokens_seen,
    )


def train_sae(settings: TrainSAESettings) -> TrainResult:
    """Train an SAE or transcoder on Ray."""
    return train(settings)


def train_clt(settings: TrainCLTSettings) -> TrainResult:
    """Train a cross-layer transcoder on Ray."""
    return train(settings)


def train_crosscoder(settings: TrainCrossCoderSettings) -> TrainResult:
    """Train a CrossCoder on Ray."""
    return train(settings)


def load_result_dictionary(result: TrainResult) -> SparseDictionary:
    """The exported dictionary of a finished run."""
    return load_dictionary(result.dictionary_path)
