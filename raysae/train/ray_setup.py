"""Driver-side set-up of a Ray training run: join or start Ray, check the settings before any worker
starts (mesh, hooks, widths, resources), and build the ``TorchTrainer``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raysae.config.run import AnyTrainSettings
from raysae.errors import RaysaeError


class SettingsError(RaysaeError, ValueError):
    """The run cannot work as configured; raised on the driver before any worker starts."""


def _model_shape(settings: AnyTrainSettings) -> tuple[int, int]:
    """(d_model, n_layers) of the configured language model, read from its config only."""
    from transformers import AutoConfig

    from raysae.lm.bundled import model_source

    hf = AutoConfig.from_pretrained(model_source(settings.activations.model))
    return int(hf.hidden_size), int(hf.num_hidden_layers)


def _cache_d_model(settings: AnyTrainSettings) -> int:
    from raysae.data.reader import ActivationCache

    hooks = list(settings.activations.hooks)
    return ActivationCache(settings.cache_path, hooks=hooks, verify=False).d_model  # type: ignore[arg-type]


def worker_cpus(settings: AnyTrainSettings, cluster_cpus: float, has_gpus: bool) -> float:
    """CPUs per train worker: as set, else a quarter beside a CPU pipeline, else what leaves 1 CPU free."""
    if settings.ray.cpus_per_worker is not None:
        return settings.ray.cpus_per_worker
    if settings.cache_path is None and not has_gpus:
        return 0.25
    spare = (cluster_cpus - 1.0) / settings.ray.num_workers
    return max(0.25, min(1.0, math.floor(spare * 4) / 4))


def preflight(settings: AnyTrainSettings) -> dict[str, Any]:
    """Fail fast with a clear message on settings that cannot work; returns the resource plan."""
    import ray

    from raysae.data.resources import node_cpus, threads_on_node
    from raysae.lm.hooks import HookError, parse_hook

    cluster, node = ray.cluster_resources(), node_cpus()
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    r = settings.ray
    use_gpu = gpus > 0 if r.use_gpu == "auto" else bool(r.use_gpu)
    if use_gpu and gpus < r.num_workers:
        raise SettingsError(
            f"use_gpu needs {r.num_workers} GPUs for {r.num_workers} workers; the cluster has {gpus:g}"
        )
    cpw = worker_cpus(settings, cpus, gpus > 0)
    d_sae = settings.dictionary.latent_count
    if d_sae % r.model_parallel_size:
        raise SettingsError(f"d_sae={d_sae} is not divisible by model_parallel_size={r.model_parallel_size}")
    plan: dict[str, Any] = {
        "use_gpu": use_gpu,
        "cpus_per_worker": cpw,
        "pipeline": None,
        "threads": threads_on_node(r.num_workers, cpw, use_gpu, cpus, node),
    }
    if settings.cache_path is not None:
        d_model = _cache_d_model(settings)
        if cpus - r.num_workers * cpw < 1.0:
            raise SettingsError(
                f"{r.num_workers} train workers × {cpw:g} CPU leave less than 1 CPU of the cluster's {cpus:g} "
                "for reading the cache; lower ray.cpus_per_worker or the number of workers"
            )
    else:
        d_model, n_layers = _model_shape(settings)
        try:
            for hook in settings.activations.hooks:
                parse_hook(hook, n_layers)
        except HookError as err:
            raise SettingsError(str(err)) from err
        from raysae.data.resources import ResourceError, plan_resources

        res = settings.activations.resources.model_copy(
            update={
                "train_workers": r.num_workers,
                "cpus_per_train_worker": cpw,
                "gpus_per_train_worker": 1.0 if use_gpu else 0.0,
            }
        )
        try:
            plan["pipeline"] = plan_resources(cluster, res, settings.activations.model.device, node)
        except ResourceError as err:
            raise SettingsError(str(err)) from err
    _wait_for_free_cpus(r.num_workers * cpw + _pipeline_cpus(plan["pipeline"]), cpus)
    if d_model != settings.dictionary.d_model:
        raise SettingsError(
            f"dictionary d_model={settings.dictionary.d_model} but the activations have width {d_model}"
        )
    return plan


def _pipeline_cpus(pipeline: Any) -> float:
    if pipeline is None:
        return 1.0  # the cache's read tasks
    return pipeline.read_cpus + pipeline.replicas * pipeline.cpus_per_replica


def _wait_for_free_cpus(needed: float, total: float, timeout_s: float = 30.0) -> None:
    """Fail clearly, instead of hanging in Ray's scheduler, when other work holds the CPUs this run needs
    (actors of a previous run may take a few seconds to release theirs, hence the wait)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while (free := float(ray.available_resources().get("CPU", 0))) + 1e-9 < needed:
        if time.monotonic() > deadline:
            raise SettingsError(
                f"this run needs {needed:g} CPUs but only {free:g} of the cluster's {total:g} are free; "
                "other jobs, actors or Serve replicas hold the rest"
            )
        time.sleep(0.5)


def build_trainer(settings: AnyTrainSettings, plan: dict[str, Any], loop: Callable[[dict], None]):
    """The ``TorchTrainer`` for a checked run, with its dataset attached."""
    import ray.train
    from ray.train.torch import TorchTrainer

    hooks = list(settings.activations.hooks)
    if settings.cache_path is not None:
        from raysae.data.reader import ActivationCache

        ds = ActivationCache(settings.cache_path, hooks=hooks).dataset(
            shuffle=settings.shuffle, seed=settings.trainer.seed
        )
        # Unshuffled cache rows arrive in cache order, so a run (and its resume) is reproducible.
        ds.context.execution_options.preserve_order = not settings.shuffle
    else:
        from raysae.data.pipeline import activation_dataset

        ds = activation_dataset(settings.activations, plan["pipeline"])
    # No select_columns here: it adds a CPU task stage that the 2-CPU budget cannot always schedule;
    # workers pick the hook columns (metadata columns are 4 int64 per row).
    r = settings.ray
    storage = Path(r.storage_path or Path(settings.output_dir) / "ray").expanduser()
    if "://" not in str(storage):
        storage = storage.resolve()
        storage.mkdir(parents=True, exist_ok=True)
    cpw = plan["cpus_per_worker"]
    return TorchTrainer(
        loop,
        train_loop_config={"settings": settings.model_dump(mode="json"), "threads": plan["threads"]},
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.num_workers, use_gpu=plan["use_gpu"], resources_per_worker={"CPU": cpw}
        ),
        run_config=ray.train.RunConfig(
            name=settings.run_name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=r.keep_checkpoints),
        ),
        datasets={"train": ds},
    )
