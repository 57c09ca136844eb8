"""Split the cluster between the token reader, the model replicas and the train workers.

Ray Data waits silently when an actor pool cannot be scheduled, so the split is computed up front from
the cluster's resources and an impossible one fails at once with the arithmetic in the message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from raysae.config.data import ResourcesConfig
from raysae.errors import RaysaeError

_EPS = 1e-9


class ResourceError(RaysaeError, RuntimeError):
    """The requested pipeline does not fit the cluster; the message shows the budget."""


@dataclass(frozen=True)
class ResourcePlan:
    """Resources of every part of the activation pipeline."""

    replicas: int
    cpus_per_replica: float
    gpus_per_replica: float
    read_cpus: float
    train_workers: int
    cpus_per_train_worker: float
    gpus_per_train_worker: float
    torch_threads: int
    max_tasks_in_flight_per_replica: int = 2

    def describe(self) -> str:
        """One line for logs."""
        gpu = f", {self.gpus_per_replica:g} GPU" if self.gpus_per_replica else ""
        train = (
            f"; {self.train_workers} train workers × {self.cpus_per_train_worker:g} CPU"
            + (f", {self.gpus_per_train_worker:g} GPU" if self.gpus_per_train_worker else "")
            if self.train_workers
            else ""
        )
        return (
            f"reader {self.read_cpus:g} CPU; {self.replicas} model replicas × {self.cpus_per_replica:g} CPU"
            f"{gpu} ({self.torch_threads} torch threads){train}"
        )


def plan_resources(
    cluster: Mapping[str, float], res: ResourcesConfig, device: str = "auto", node_cpus: float | None = None
) -> ResourcePlan:
    """Compute the split for a cluster (``ray.cluster_resources()``), model device and settings;
    ``node_cpus``: the largest node's CPUs (default: the cluster is one node)."""
    cpus = float(cluster.get("CPU", 0))
    gpus = float(cluster.get("GPU", 0))
    train_cpu = res.train_workers * res.cpus_per_train_worker
    train_gpu = res.train_workers * res.gpus_per_train_worker
    free_cpu = cpus - res.read_cpus - train_cpu
    free_gpu = gpus - train_gpu
    budget = (
        f"cluster {cpus:g} CPU, {gpus:g} GPU; reader {res.read_cpus:g} CPU; "
        f"{res.train_workers} train workers × ({res.cpus_per_train_worker:g} CPU, {res.gpus_per_train_worker:g} GPU)"
    )
    if device.startswith("cuda") and gpus == 0:
        raise ResourceError(f"model device {device!r} but the cluster has no GPU ({budget})")
    use_gpu = device != "cpu" and gpus > 0
    gpus_per_replica = res.gpus_per_replica if res.gpus_per_replica is not None else (1.0 if use_gpu else 0.0)
    if use_gpu and gpus_per_replica == 0:
        raise ResourceError(f"model device {device!r} needs gpus_per_replica > 0 on a cluster with GPUs")
    if not use_gpu and gpus_per_replica > 0:
        raise ResourceError(f"gpus_per_replica={gpus_per_replica:g} but the model runs on cpu ({budget})")
    if free_cpu <= _EPS:
        raise ResourceError(f"no CPU left for model replicas: {budget} leaves {free_cpu:g} CPU")
    if use_gpu and free_gpu < gpus_per_replica - _EPS:
        raise ResourceError(f"no GPU left for model replicas: {budget} leaves {free_gpu:g} GPU")

    if res.replicas is not None:
        replicas = res.replicas
    elif use_gpu:
        replicas = max(1, math.floor(free_gpu / gpus_per_replica + _EPS))
    elif res.cpus_per_replica is not None:
        replicas = max(1, math.floor(free_cpu / res.cpus_per_replica + _EPS))
    else:
        replicas = cpu_replicas(cpus - train_cpu)
    if res.cpus_per_replica is not None:
        cpus_per_replica = res.cpus_per_replica
    else:
        share = free_cpu / replicas
        cpus_per_replica = min(1.0, share) if use_gpu else share
        cpus_per_replica = math.floor(cpus_per_replica * 1000) / 1000
    if cpus_per_replica <= 0:
        raise ResourceError(f"{replicas} replicas leave no CPU per replica: {budget}")
    if replicas * cpus_per_replica > free_cpu + _EPS:
        raise ResourceError(
            f"{replicas} replicas × {cpus_per_replica:g} CPU = {replicas * cpus_per_replica:g} CPU, "
            f"but only {free_cpu:g} CPU are free: {budget}. Lower replicas, cpus_per_replica, "
            "cpus_per_train_worker or read_cpus"
        )
    if replicas * gpus_per_replica > free_gpu + _EPS:
        raise ResourceError(
            f"{replicas} replicas × {gpus_per_replica:g} GPU = {replicas * gpus_per_replica:g} GPU, "
            f"but only {free_gpu:g} GPU are free: {budget}"
        )
    return ResourcePlan(
        replicas=replicas,
        cpus_per_replica=cpus_per_replica,
        gpus_per_replica=gpus_per_replica,
        read_cpus=res.read_cpus,
        train_workers=res.train_workers,
        cpus_per_train_worker=res.cpus_per_train_worker,
        gpus_per_train_worker=res.gpus_per_train_worker,
        torch_threads=threads_on_node(replicas, cpus_per_replica, use_gpu, cpus, node_cpus),
        max_tasks_in_flight_per_replica=res.max_tasks_in_flight_per_replica,
    )


def cpu_replicas(cpus: float) -> int:
    """Model replicas for ``cpus`` not reserved for training, on CPU: one single-threaded replica per
    whole core, the reader's share included. Forwards in separate processes never wait on each other's
    threads: SmolLM2 forwards of 1,024 tokens on 2 cores ran at 6,950-7,700 tokens/s as 2 processes of 1
    thread against 6,330-6,480 as 1 of 2, and Ray generation of 409,600 tokens took 74-81 s against 83-92
    s (3 alternating pairs); on a later day the margin was 3 % (7,690-7,870 against 7,430-7,575). The
    reader tokenises its whole budget in its first seconds (0.5 s of CPU for 409,600 tokens), so its
    share does not hold a core from a replica. Beside train workers this leaves
    the floor: 1 replica on 2 cores beside 2 workers (2 replicas streamed no faster, 2 pairs)."""
    return max(1, math.floor(cpus + _EPS))


def threads_on_node(processes: int, cpus_each: float, use_gpu: bool, cpus: float, node: float | None) -> int:
    """torch threads for each of ``processes`` alike (model replicas, train workers). On CPU: their
    node's cores shared by those placed there, since a Ray reservation is a scheduling share — a replica
    held to its 1.25 CPU beside 2 train workers (which wait for rows a third of the time) left a core
    idle (its threads wait passively: ``raysae.data.pipeline.CPU_REPLICA_ENV``), and one train worker from
    the cache trained on 1 of 2 cores (a quickstart-shape step: 15.1k tokens/s on 1 thread, 26.4k on
    2). On GPU: the reservation, since the device does the work."""
    if use_gpu:
        return max(1, round(cpus_each))
    node = node or cpus
    on_node = max(1, math.ceil(processes * node / max(cpus, _EPS) - _EPS))
    return max(1, math.floor(node / on_node + _EPS))


def cluster_plan(res: ResourcesConfig, device: str = "auto") -> ResourcePlan:
    """``plan_resources`` for the connected Ray cluster."""
    import ray

    if not ray.is_initialized():
        raise ResourceError("Ray is not initialised: call ray.init() (or connect to a cluster) first")
    return plan_resources(ray.cluster_resources(), res, device, node_cpus())


def node_cpus() -> float | None:
    """CPUs of the largest alive node of the connected cluster (None if Ray reports none)."""
    import ray

    sizes = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return max(sizes) if sizes and max(sizes) > 0 else None
