"""Fault drills: kill one part of raysae mid-job, once each, and print what it cost.

    .venv/bin/python benchmarks/fault_drills.py [--only model-actor train-worker ...] [--serve-replicas 2 1]

Starts a private Ray instance (2 CPUs, like the tests) and runs the drills of tests/drills (the same
code as their tests): a Ray Data model actor killed while the activation cache is written (the cache the
training drills then read), a Ray Train worker and the ``raysae train`` driver killed mid-run (both
compared with an uninterrupted run), the store (secantusd-py) killed mid-analysis, mid-autointerp and
right after acknowledged writes, and an ingress replica of the Serve app killed under load (for each
--serve-replicas count). The table says per drill what was killed and when, whether the job completed,
what was lost, duplicated and replayed, the seconds to recovery and the failures seen meanwhile; each
drill's notes say how its figures were measured. Everything is written under a temporary folder that
is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for folder in ("tests", "tests/drills", "tests/autointerp"):  # the drills, the fake chat server, toy data
    sys.path.insert(0, str(ROOT / folder))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from data_drills import model_actor_drill  # noqa: E402
from drill_kit import DrillResult, table  # noqa: E402

DRILLS = (
    "model-actor",
    "model-actor-streaming",
    "train-worker",
    "train-driver",
    "store-analysis",
    "store-autointerp",
    "store-acked",
    "serve-replica",
)


def run(only: set[str], serve_replicas: list[int], tmp: Path) -> list[DrillResult]:
    """Every selected drill once, in the order of DRILLS; a drill that raises is reported and skipped."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(tmp / "ray"),
        object_store_memory=512 * 1024**2,
        log_to_driver=False,
    )
    results: list[DrillResult] = []

    def drill(name: str, fn, *args) -> DrillResult | None:  # type: ignore[no-untyped-def]
        if name not in only:
            return None
        start = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as err:
            print(f"{name}: FAILED: {type(err).__name__}: {err}", flush=True)
            return None
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        results.append(result)
        return result

    try:
        cache = tmp / "cache"
        needs_cache = bool(only & {"train-worker", "train-driver"})
        if needs_cache:
            only.add("model-actor")
        actor = drill("model-actor", model_actor_drill, cache)
        if needs_cache and actor is not None and actor.completed:
            from train_drills import driver_drill, reference_run, worker_drill

            reference = reference_run(cache, tmp / "train").dictionary_path
            drill("train-worker", worker_drill, cache, tmp / "train", reference)
            address = ray.get_runtime_context().gcs_address
            drill("train-driver", driver_drill, cache, tmp / "train", reference, address)
        if "model-actor-streaming" in only:
            from train_drills import streaming_actor_drill

            drill("model-actor-streaming", streaming_actor_drill, tmp / "stream")
        from store_drills import acknowledged_writes_drill, analysis_drill, autointerp_drill

        if "store-analysis" in only:
            from raysae.config.data import ModelConfig
            from raysae.lm.model import LanguageModel

            drill(
                "store-analysis",
                analysis_drill,
                tmp / "analysis",
                LanguageModel.from_config(ModelConfig(device="cpu")),
            )
        drill("store-autointerp", autointerp_drill, tmp / "autointerp")
        drill("store-acked", acknowledged_writes_drill, tmp / "acked")
        from serve_drills import serve_drill

        for n in serve_replicas:
            drill("serve-replica", serve_drill, tmp / f"serve-{n}", n)
    finally:
        ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=DRILLS, default=list(DRILLS), help="drills to run")
    parser.add_argument(
        "--serve-replicas", nargs="+", type=int, default=[2, 1], help="ingress replica counts to drill"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="raysae-drills-"))
    start = time.perf_counter()
    try:
        results = run(set(args.only), args.serve_replicas, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(results))
    print(f"\n{len(results)} drills in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
