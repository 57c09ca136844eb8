"""The cluster split: replicas, CPUs and GPUs per part, and clear failures when it cannot fit."""

from __future__ import annotations

import pytest

from raysae.config.data import ResourcesConfig
from raysae.data.resources import ResourceError, plan_resources


def plan(cluster, device="auto", **kw):
    return plan_resources(cluster, ResourcesConfig(**kw), device)


def test_two_cpus_alone():
    """One single-threaded replica per core, the reader's share included; a reservation picks fewer."""
    p = plan({"CPU": 2.0})
    assert (p.replicas, p.cpus_per_replica, p.gpus_per_replica, p.torch_threads) == (2, 0.875, 0, 1)
    assert p.replicas * p.cpus_per_replica + p.read_cpus <= 2
    p = plan({"CPU": 2.0}, replicas=1)
    assert (p.replicas, p.cpus_per_replica, p.torch_threads) == (1, 1.75, 2)
    p = plan({"CPU": 2.0}, cpus_per_replica=1.5)
    assert (p.replicas, p.cpus_per_replica, p.torch_threads) == (1, 1.5, 2)
    assert [plan({"CPU": c}).replicas for c in (1.0, 3.0, 16.0)] == [1, 3, 16]
    assert plan({"CPU": 16.0}, train_workers=2).replicas == 15


def test_two_cpus_beside_training():
    p = plan({"CPU": 2.0}, train_workers=2, cpus_per_train_worker=0.25, cpus_per_replica=0.5, replicas=2)
    assert p.replicas * p.cpus_per_replica + p.read_cpus + 2 * 0.25 <= 2
    p = plan({"CPU": 2.0}, train_workers=2)
    assert p.replicas == 1 and p.cpus_per_replica == pytest.approx(1.25)


def test_many_cpus_make_many_replicas():
    p = plan({"CPU": 16.0}, cpus_per_replica=2)
    assert (p.replicas, p.torch_threads) == (7, 2)


def test_gpus_one_replica_each():
    p = plan({"CPU": 16.0, "GPU": 4.0})
    assert (p.replicas, p.gpus_per_replica, p.cpus_per_replica) == (4, 1.0, 1.0)
    p = plan({"CPU": 16.0, "GPU": 4.0}, train_workers=2, gpus_per_train_worker=1, cpus_per_train_worker=1)
    assert p.replicas == 2
    p = plan({"CPU": 8.0, "GPU": 1.0}, gpus_per_replica=0.5)
    assert p.replicas == 2
    assert plan({"CPU": 4.0, "GPU": 1.0}, device="cpu").gpus_per_replica == 0


@pytest.mark.parametrize(
    ("cluster", "kw", "device", "message"),
    [
        ({"CPU": 1.0}, {"train_workers": 4}, "auto", "no CPU left for model replicas"),
        (
            {"CPU": 2.0},
            {"replicas": 3, "cpus_per_replica": 1},
            "auto",
            r"3 replicas × 1 CPU = 3 CPU, but only 1\.75",
        ),
        ({"CPU": 2.0}, {}, "cuda", "the cluster has no GPU"),
        ({"CPU": 8.0, "GPU": 1.0}, {"replicas": 2}, "auto", r"2 replicas × 1 GPU = 2 GPU, but only 1 GPU"),
        ({"CPU": 8.0, "GPU": 1.0}, {"train_workers": 1, "gpus_per_train_worker": 1}, "auto", "no GPU left"),
        ({"CPU": 8.0}, {"gpus_per_replica": 1}, "auto", "but the model runs on cpu"),
    ],
)
def test_impossible_splits_fail_at_once(cluster, kw, device, message):
    with pytest.raises(ResourceError, match=message):
        plan(cluster, device, **kw)


def test_threads_follow_the_nodes_cores_on_cpu_and_the_reservation_on_gpu():
    from raysae.data.resources import threads_on_node

    # A replica beside 2 train workers reserves 1.25 of 2 CPUs but gets both cores' threads.
    assert plan({"CPU": 2.0}, train_workers=2).torch_threads == 2
    assert plan({"CPU": 2.0}, replicas=2).torch_threads == 1
    # Two 16-CPU nodes, 4 replicas: 2 per node, 8 threads each.
    assert (
        plan_resources({"CPU": 32.0}, ResourcesConfig(replicas=4), "cpu", node_cpus=16.0).torch_threads == 8
    )
    assert plan({"CPU": 16.0, "GPU": 2.0}).torch_threads == 1  # GPU replicas: their reservation
    assert threads_on_node(1, 1.0, False, 2.0, 2.0) == 2  # one train worker from the cache: both cores
    assert threads_on_node(2, 0.25, False, 2.0, 2.0) == 1  # two workers beside a replica
    assert threads_on_node(2, 4.0, True, 16.0, 16.0) == 4  # GPU workers: their reservation


def test_replica_env_sets_threads_for_every_thread_and_passive_waits_beside_train_workers():
    """Ray Data calls the map class in its own thread, whose OpenMP thread count starts from
    OMP_NUM_THREADS (Ray's default: the floor of the reservation)."""
    from raysae.data.pipeline import CPU_REPLICA_ENV, replica_env

    cpu = plan_resources({"CPU": 2}, ResourcesConfig(), "cpu")
    assert replica_env(cpu) == {"OMP_NUM_THREADS": str(cpu.torch_threads)}  # alone: OpenMP's default
    assert replica_env(cpu, model_threads=5)["OMP_NUM_THREADS"] == "5"
    shared = plan_resources({"CPU": 2}, ResourcesConfig(train_workers=2, cpus_per_train_worker=0.25), "cpu")
    assert replica_env(shared) == {"OMP_NUM_THREADS": str(shared.torch_threads), **CPU_REPLICA_ENV}
    gpu = plan_resources({"CPU": 8, "GPU": 1}, ResourcesConfig(), "cuda")
    assert replica_env(gpu) == {"OMP_NUM_THREADS": "1"}
