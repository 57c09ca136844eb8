"""Training on Ray Train: activations stream from model replicas (or the cache) into TorchTrainer
workers whose dictionary is sharded with DTensor over a ``data × model`` mesh.

``train_sae`` / ``train_clt`` / ``train_crosscoder`` take the matching settings object; ``train``
takes any. The worker runs ``Trainer.fit``, the one training loop, and adds only the distributed
plumbing: rows gathered within each model-parallel group (so every shard of a replica sees the same
rows), an all-reduce per batch to agree that every rank still has data, and ``RayTrainCheckpointer``
(DCP checkpoints reported to Ray Train, resume from ``ray.train.get_checkpoint()``, the exported
final dictionary).
"""

from __future__ import annotations

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
from raysae.files import replace_dir
from raysae.train.checkpoint import DICTIONARY_DIR, load_distributed, read_state, save_distributed
from raysae.train.mesh import MODEL, build_mesh, mesh_dim
from raysae.train.metrics_sinks import JsonlSink, MetricsSink
from raysae.train.reporting import RayMetricsSink, WandbSink
from raysae.train.sharding import distribute_dictionary, gather_dictionary
from raysae.train.state import TrainState
from raysae.train.trainer import Trainer

log = logging.getLogger(__name__)
REPORT_TAKEN_TIMEOUT_S = 60.0  # longer than any poll interval; past it the worker goes on regardless


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


def _while_all_have_data(batches: Iterator[dict], device: torch.device) -> Iterator[dict]:
    """The batches while every rank still has one (a MIN all-reduce per batch, so all ranks run
    the same number of steps and no rank waits alone in a collective)."""
    while True:
        batch = next(batches, None)
        flag = torch.tensor([0 if batch is None else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if not flag.item():
            return
        yield batch


def _batches(shard, hooks: list[str], local_rows: int, mesh, device: torch.device) -> Iterator[dict]:
    for b in shard.iter_torch_batches(batch_size=local_rows, drop_last=True, device=str(device)):
        yield _gather_model_group({h: b[h].float() for h in hooks}, mesh)


class RayTrainCheckpointer:
    """``Checkpointer`` for a Ray Train worker: DCP shards reported with ``ray.train.report``.

    Resumes from ``ray.train.get_checkpoint()``. Every save is a collective (every rank writes its
    shards to its own temporary folder and reports it; Ray Train merges them). The final save adds
    the gathered dictionary (``dictionary/``), which the driver exports.
    """

    def __init__(self) -> None:
        import ray.train

        self._checkpoint = ray.train.get_checkpoint()

    @property
    def resuming(self) -> bool:
        return self._checkpoint is not None

    def restore(self, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer) -> TrainState:
        with self._checkpoint.as_directory() as folder:
            return load_distributed(folder, dictionary, optimizer)

    def save(self, dictionary, optimizer, state, metrics, *, final: bool) -> None:
        import ray.train

        prefix = "raysae-final-" if final else "raysae-ckpt-"
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            save_distributed(tmp, dictionary, optimizer, state)
            if final:
                plain = gather_dictionary(dictionary, rank0_only=True)
                if plain is not None:
                    plain.save(Path(tmp) / DICTIONARY_DIR)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if not final:
            wait_until_report_taken()


def wait_until_report_taken(timeout_s: float = REPORT_TAKEN_TIMEOUT_S) -> None:
    """Block until Ray Train's controller has taken this worker's last report.

    ``ray.train.report`` only queues a report; the controller takes it at its next poll of the worker
    (every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s) and only then registers the checkpoint. A worker
    or driver killed before that poll loses the checkpoint although it is on disk, and the run resumes
    from the one before: a whole checkpoint interval more replayed (the fault drills saw it). Waiting
    here costs at most one poll interval per checkpoint. No wait where Ray Train lacks that queue."""
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        pending = get_train_context().get_result_queue()
    except Exception:  # another Ray Train version: its report is what it is
        return
    deadline = time.monotonic() + timeout_s
    while not pending.empty() and time.monotonic() < deadline:
        time.sleep(0.02)


def worker_loop(config: dict[str, Any]) -> None:
    """The per-worker training function run by ``TorchTrainer``: wires Ray to ``Trainer.fit``."""
    import ray.train
    import ray.train.torch

    settings = train_settings_from_dict(config["settings"])
    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    r, tc = settings.ray, settings.trainer
    mesh = build_mesh(r.data_parallel_size, r.model_parallel_size, device.type)

    dictionary = build_dictionary(settings.dictionary, device=device)
    sinks: list[MetricsSink] = []
    wandb_sink = None
    if rank == 0:
        wandb_sink = WandbSink(settings.wandb, settings.model_dump(mode="json"), settings.output_dir)
        sinks = [RayMetricsSink(settings.run_name, rank), wandb_sink]
    hooks = list(dict.fromkeys([*dictionary.hooks_in, *dictionary.hooks_out]))
    local_rows = tc.batch_size // world
    data = _batches(ray.train.get_dataset_shard("train"), hooks, local_rows, mesh, device)
    model_dim = mesh_dim(mesh, MODEL)
    rows_per_step = local_rows * (mesh.size(model_dim) if model_dim is not None else 1)
    # Each rank initialises from its own rows; distribute_dictionary keeps rank 0's values.
    Trainer(tc, sinks=sinks, progress=False).fit(
        dictionary,
        _while_all_have_data(data, device),
        checkpointer=RayTrainCheckpointer(),
        distribute=lambda d: distribute_dictionary(d, mesh),
        rows_per_step=rows_per_step,
    )
    if wandb_sink is not None:
        wandb_sink.finish()


# ---- the driver side ----------------------------------------------------------------------------


def train(settings: AnyTrainSettings) -> TrainResult:
    """Run a training job on Ray (joining ``settings.ray.address`` or starting a local cluster)."""
    from raysae.data.sources import check_source
    from raysae.ray_session import ensure_ray
    from raysae.train.ray_setup import build_trainer, preflight
    from raysae.train.rerun import check_rerun

    if settings.cache_path is None:
        check_source(settings.activations.text)  # a bad corpus fails here, in one line
    check_rerun(settings)  # before Ray starts: resume only the same run
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
        replace_dir(tmp, target)
    metrics_file = out / "metrics.jsonl"
    metrics_file.unlink(missing_ok=True)
    sink = JsonlSink(metrics_file)
    for m in state.history:
        sink.log(int(m["progress/step"]), m)
    load_dictionary(target)  # fail here, not later, if the export does not open
    budget = settings.trainer.total_steps * settings.trainer.batch_size
    if state.tokens_seen < budget:
        log.warning(
            "the activation stream ended after %d of %d training tokens: the dictionary is under-trained",
            state.tokens_seen,
            budget,
        )
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
