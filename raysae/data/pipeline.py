"""The streaming activation pipeline on Ray Data (the one copy: caching, training and analysis).

One read task tokenises and packs the text (a single task, so the stream is deterministic) → a fixed
actor pool (``ActorPoolStrategy``), one model replica per actor, maps window batches with a callable
class: activation rows (``ActivationExtractor``) or, for analysis, partial feature statistics. Ray Data's streaming executor bounds what sits in the object store,
so a run never holds the whole dataset. Rows: a float column per hook ([d_model]) and int64 token_id, doc_id, position, window_id.

Ray Data hands the read task's output on in blocks of up to ``target_max_block_size`` (128 MiB, about
5M tokens), so the first activations appear once that much text (or the whole budget) is tokenised;
tokens are ~1 % of the bytes of their activations, so the activations are what streaming bounds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray.data import ActorPoolStrategy, DataContext, Dataset
from tqdm.auto import tqdm

from raysae.config.data import ActivationsConfig
from raysae.data.ray_plan import TokenWindowDatasource, replica_class
from raysae.data.resources import ResourcePlan, cluster_plan
from raysae.data.sources import check_source
from raysae.lm.bundled import model_source

if TYPE_CHECKING:  # the driver of a pipeline never loads torch or transformers (3 s of CPU) for it
    from torch import Tensor

log = logging.getLogger(__name__)

EXTRACTOR = "raysae.data.extract:ActivationExtractor"
"""The activation pipeline's map class, by path: only its actors import it."""

CPU_REPLICA_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Environment of CPU model replicas beside train workers, besides their thread count. Their torch
threads share cores with the workers: an OpenMP thread that spins at a barrier while the thread it
waits for is preempted wastes the core it holds, so waiting threads sleep instead (streaming training:
2 passive threads 3,750 tokens/s steady against 3,450 for 1 thread). Replicas alone on their cores
(caching, analysis) keep OpenMP's default, a short spin, since waking sleeping threads cost them: the
extractor's forwards in a Ray task ran at 5,830 and 5,580 tokens/s passive against 6,110 and 6,120
with the default."""


def replica_env(plan: ResourcePlan, model_threads: int | None = None) -> dict[str, str]:
    """Environment variables of a model replica's process: ``OMP_NUM_THREADS`` its torch threads
    (``model_threads``, the model config's override, or the plan's), plus ``CPU_REPLICA_ENV`` on CPU
    beside train workers.

    Ray sets ``OMP_NUM_THREADS`` to the floor of an actor's CPU reservation (1 for 1.75 CPU), and Ray
    Data calls the map class in a thread of its own. ``torch.set_num_threads`` in the constructor
    reaches that thread only through torch's lazy per-thread set-up, which a matrix product alone does
    not trigger: a [1024, 576] × [576, 1536] product as the thread's first work took 10.5 ms against
    5.8 ms on 2 cores (the model's forward happened to trigger it first). With the variable set, every
    thread of the replica starts from its thread count."""
    env = {"OMP_NUM_THREADS": str(model_threads or plan.torch_threads)}
    if not plan.gpus_per_replica and plan.train_workers:
        env.update(CPU_REPLICA_ENV)
    return env


def read_blocks(cfg: ActivationsConfig, windows_per_task: int) -> int | None:
    """How many blocks Ray Data should cut the token stream into, so each replica task gets about
    ``windows_per_task`` windows (and never two blocks, so never twice that); None: Ray's
    default when the budget is unknown.

    Ray Data merges what one read task yields into blocks of up to ``target_max_block_size`` before
    passing them on, and splits each such block into ``override_num_blocks`` pieces (with one read
    task). Without the split one replica would get every window at once.
    """
    if cfg.total_tokens is None:
        return None
    t = cfg.tokens.context_size
    windows = math.ceil(cfg.total_tokens / max(1, t - 1))
    window_bytes = t * (3 * 8 + 1) + 8  # tokens, doc_ids, positions (int64), keep (bool), window_id
    per_block = max(1, (DataContext.get_current().target_max_block_size or 2**27) // window_bytes)
    # floor: blocks of at least per_task windows, so a task never bundles two blocks (which gave
    # tasks of nearly twice the windows asked for and a short forward batch in each)
    return max(1, min(100_000, min(windows, per_block) // windows_per_task))


def window_map_dataset(
    cfg: ActivationsConfig,
    map_class: type | str,
    map_kwargs: Mapping[str, Any],
    *,
    windows_per_task: int | None = None,
    plan: ResourcePlan | None = None,
    skip_windows: int = 0,
    preserve_order: bool = False,
) -> Dataset:
    """The one pipeline: the token windows of ``cfg`` mapped by an actor pool of ``map_class``.

    ``map_class`` is a callable class for ``Dataset.map_batches``, or its "module:Class" path (one model
    replica per actor: ``ActivationExtractor`` for activation rows, the analysis' ``FeatureAnalyzer`` for
    partial statistics); it is built as ``map_class(model=cfg.model, num_threads=..., **map_kwargs)``. Each
    call gets ``windows_per_task`` windows (default ``cfg.forward_passes_per_task`` forward batches of
    ``cfg.batch_windows``). ``plan`` defaults to
    ``cluster_plan(cfg.resources, cfg.model.device)``; ``preserve_order`` keeps window order.
    The text source is checked here, in the driver, so a bad one fails in one line, not in a task.
    """
    check_source(cfg.text)
    plan = plan or cluster_plan(cfg.resources, cfg.model.device)
    model_source(cfg.model)  # dequantise the bundled model once here, not in every replica
    replica = replica_class(map_class, replica_env(plan, cfg.model.num_threads))  # see ray_plan
    log.info("activation pipeline (%s): %s", replica.__name__, plan.describe())
    per_task = windows_per_task or cfg.forward_passes_per_task * cfg.batch_windows
    windows = ray.data.read_datasource(
        TokenWindowDatasource(cfg, skip_windows),
        num_cpus=plan.read_cpus,
        override_num_blocks=read_blocks(cfg, per_task),
    )
    ds = windows.map_batches(
        replica,
        fn_constructor_kwargs={"model": cfg.model, "num_threads": plan.torch_threads, **map_kwargs},
        batch_size=per_task,
        batch_format="numpy",
        compute=ActorPoolStrategy(
            size=plan.replicas, max_tasks_in_flight_per_actor=plan.max_tasks_in_flight_per_replica
        ),
        num_cpus=plan.cpus_per_replica,
        num_gpus=plan.gpus_per_replica or None,
    )
    ds.context.execution_options.preserve_order = preserve_order
    return ds


def activation_dataset(
    cfg: ActivationsConfig,
    plan: ResourcePlan | None = None,
    skip_windows: int = 0,
    preserve_order: bool = False,
) -> Dataset:
    """A lazy Ray Dataset of activation rows for ``cfg`` (Ray must be initialised).

    ``plan`` defaults to ``cluster_plan(cfg.resources, cfg.model.device)``; pass one computed with
    train workers set aside when a Ray Train job consumes the rows. ``preserve_order`` keeps the rows
    in window order (the cache writer needs it); otherwise replicas' outputs interleave.
    """
    return window_map_dataset(
        cfg,
        EXTRACTOR,
        {"hooks": list(cfg.hooks), "forward_windows": cfg.batch_windows},
        plan=plan,
        skip_windows=skip_windows,
        preserve_order=preserve_order,
    )


def iter_row_chunks(
    ds: Dataset, progress: bool = True, total: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Stream a dataset's blocks as numpy column dicts, with a terminal progress bar counting rows."""
    bar = tqdm(total=total, unit="tok", desc="activations", disable=not progress, dynamic_ncols=True)
    try:
        for chunk in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            n = len(chunk["token_id"]) if "token_id" in chunk else len(next(iter(chunk.values())))
            bar.update(n)
            yield chunk
    finally:
        bar.close()


def pipeline_batches(
    cfg: ActivationsConfig,
    batch_size: int,
    plan: ResourcePlan | None = None,
    drop_last: bool = False,
    meta: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> Iterator[dict[str, Tensor]]:
    """Training batches {hook: [batch_size, d]} streamed from the Ray pipeline to this process."""
    from raysae.data.batching import rebatch

    ds = activation_dataset(cfg, plan)
    chunks = iter_row_chunks(ds, progress=progress, total=cfg.total_tokens)
    return rebatch(chunks, batch_size, cfg.hooks, drop_last=drop_last, meta=meta, device=device)
