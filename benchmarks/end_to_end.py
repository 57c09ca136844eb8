"""Streaming training against generation alone and training from the cache alone, in one run, on one
local Ray cluster: same model, hook, dictionary and token budget. Also per-worker parameter and Adam
state memory at model-parallel 1 vs 2, as reported by the workers themselves.

    .venv/bin/python benchmarks/end_to_end.py [--tokens 32768] [--layer 3] [--d-sae 2304]

Tokens/s are wall-clock over the whole job (start-up included) and, for training, the steady-state
rate the workers report (``perf/tokens_per_s`` averaged after the first report).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("WANDB_MODE", "offline")


def _settings(args, out: Path, name: str, cache: Path | None = None, mp: int = 1, dp: int = 2):
    from raysae.config.run import TrainSAESettings

    hook = f"blocks.{args.layer}.hook_resid_post"
    return TrainSAESettings.model_validate(
        {
            "sae": {
                "d_model": 576,
                "d_sae": args.d_sae,
                "act_fn": "topk",
                "top_k": 32,
                "hook_point_in": hook,
            },
            "trainer": {
                "batch_size": 1024,
                "total_training_tokens": args.tokens,
                "log_every_steps": 4,
                "initializer": {"init_batches": 1},
            },
            "activations": {"total_tokens": args.tokens, "batch_windows": 8, "tokens": {"context_size": 128}},
            "cache_path": str(cache) if cache else None,
            "shuffle": False,
            "ray": {"data_parallel_size": dp, "model_parallel_size": mp},
            "wandb": {"enabled": False},
            "output_dir": str(out / name),
            "run_name": name,
        }
    )


def _steady(history: list[dict]) -> float:
    rates = [h["perf/tokens_per_s"] for h in history[1:]] or [history[-1]["perf/tokens_per_s"]]
    return sum(rates) / len(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--d-sae", type=int, default=2304)
    args = ap.parse_args()

    import ray

    from raysae.config.data import CacheConfig, CacheJobConfig
    from raysae.data.cache import write_cache
    from raysae.data.pipeline import activation_dataset, iter_row_chunks
    from raysae.train.checkpoint import read_state
    from raysae.train.ray_train import train

    out = Path(tempfile.mkdtemp(prefix="raysae-e2e-"))
    ray.init(include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        stream = _settings(args, out, "stream")
        t0 = time.perf_counter()
        n = sum(
            len(c["token_id"])
            for c in iter_row_chunks(activation_dataset(stream.activations), progress=False)
        )
        gen_s = time.perf_counter() - t0
        rows.append(("generation alone (Ray pipeline)", n / gen_s, None, None, None))

        cache = out / "cache"
        write_cache(
            CacheJobConfig(activations=stream.activations, cache=CacheConfig(dir=str(cache))), progress=False
        )
        for name, settings in [
            ("training from cache, mp=1", _settings(args, out, "cache1", cache=cache, dp=1, mp=1)),
            ("training from cache, mp=2", _settings(args, out, "cache2", cache=cache, dp=1, mp=2)),
            ("streaming training, dp=2", stream),
        ]:
            t0 = time.perf_counter()
            result = train(settings)
            wall = time.perf_counter() - t0
            history = read_state(result.checkpoint_path).history
            last = history[-1]
            rows.append(
                (
                    name,
                    result.tokens / wall,
                    _steady(history),
                    last["memory/param_bytes_per_worker"] / 2**20,
                    last["memory/optimizer_bytes_per_worker"] / 2**20,
                )
            )
    finally:
        ray.shutdown()
    print(
        f"tokens={args.tokens}  hook=blocks.{args.layer}.hook_resid_post  d_sae={args.d_sae}  cpus={os.cpu_count()}"
    )
    base = rows[0][1]
    print(
        f"{'what':<34}{'tok/s wall':>12}{'vs gen':>8}{'tok/s steady':>14}{'params MiB/w':>14}{'adam MiB/w':>12}"
    )
    for name, wall_rate, steady, pmem, omem in rows:
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(
            f"{name:<34}{wall_rate:>12.0f}{wall_rate / base:>8.2f}{fmt(steady, '.0f'):>14}"
            f"{fmt(pmem, '.1f'):>14}{fmt(omem, '.1f'):>12}"
        )


if __name__ == "__main__":
    main()
