"""Streaming training against its bound, and Ray Data generation against a plain loop, in one run.

    .venv/bin/python benchmarks/end_to_end.py [--tokens 409600] [--layer 3] [--d-sae 2304] [--rounds 3]

Everything runs on one local Ray cluster over the whole machine, the quickstart's shape by default
(SmolLM2-135M, layer 3, TopK k=32, d_sae 2,304, 2 data-parallel workers, 409,600 tokens):

- g, **generation alone**: the plain single-process loop (model load included) — the fastest way to
  make the activations — and the Ray Data pipeline (actor start-up and model load included);
- t, **training from the cache alone** (the same rows, written first; Ray Train start-up included);
- **streaming training**: the Ray pipeline feeding the Ray Train workers (start-up included).

When generation and training share the same cores, doing one after the other takes
N/g + N/t, so the bound of streaming is 1/(1/g + 1/t); ``vs bound`` is the streaming rate over it (≥ 1:
streaming overlapped some idle time away). ``cpu util`` is the CPU seconds of this process tree
(driver, Ray's processes, actors, workers) over wall × cores: what the run kept busy. ``1st rows s``
is when a generation run's first activation rows arrived (its start-up), and ``after 1st rows`` is the
Ray pipeline's rate over the plain loop's from then on: the part of the gap start-up does not explain
(it flatters Ray by up to 2 %: a replica's first task is 4 forward batches, the plain loop's first rows
1, and the other replica is mid-task by then).
A memory table gives per-worker parameter and Adam state at model-parallel 1 vs 2 (``--memory``).

On a shared or small machine one run's rows can differ by a fifth from the next run's: ``--rounds N``
runs every row N times, interleaved (plain, Ray, cache, streaming, then again), prints the median of
each row and each round's ratios, so a ratio is never read off one lucky or unlucky row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("WANDB_MODE", "offline")

from cpu_tree import TreeCPU

PLAIN, RAY = "generation, plain loop (g)", "generation, Ray pipeline"
CACHE, STREAM = "training from cache (t)", "streaming training"


class Row(NamedTuple):
    """One timed run: tokens, wall seconds, CPU seconds of the process tree and, for generation, the
    seconds at which its first rows arrived."""

    tokens: int
    seconds: float
    cpu: float
    first: float | None = None

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


def _settings(args, out: Path, name: str, cache: Path | None = None, mp: int = 1, dp: int = 2):
    from raysae.config.run import TrainSAESettings

    return TrainSAESettings.model_validate(
        {
            "sae": {
                "d_model": 576,
                "d_sae": args.d_sae,
                "act_fn": "topk",
                "top_k": 32,
                "hook_point_in": f"blocks.{args.layer}.hook_resid_post",
            },
            "trainer": {
                "batch_size": 1024,
                "total_training_tokens": args.tokens,
                "log_every_steps": 20,
                "checkpoint_every_steps": 100,
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


def generate(args: argparse.Namespace, how: str) -> None:
    """One generation run in this fresh process; prints tokens, seconds since the process started
    (interpreter, imports, model load and, for Ray, ``ray.init`` and the actor pool included) and the
    seconds at which the first rows arrived (the start-up part)."""
    import psutil

    start = psutil.Process().create_time()
    cfg = _settings(args, Path(tempfile.gettempdir()), "gen").activations
    if how == "plain":
        from raysae.data.extract import ActivationSource

        chunks = ActivationSource(cfg).rows()
    else:
        import ray

        from raysae.data.pipeline import activation_dataset, iter_row_chunks

        ray.init(include_dashboard=False, log_to_driver=False)
        chunks = iter_row_chunks(activation_dataset(cfg), progress=False)
    n, first = 0, None
    for chunk in chunks:
        first = first or time.time() - start
        n += len(chunk["token_id"])
    print(json.dumps({"tokens": n, "seconds": time.time() - start, "first": first}), flush=True)
    if how == "ray":
        ray.shutdown()


def generation_row(args: argparse.Namespace, how: str, probe: TreeCPU) -> Row:
    """A generation run timed from its process's start to its last row."""
    argv = [
        sys.executable,
        __file__,
        "--generate",
        how,
        "--tokens",
        str(args.tokens),
        "--layer",
        str(args.layer),
    ]
    out: dict = {}

    def go() -> int:
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        out.update(json.loads(done.stdout.strip().splitlines()[-1]))
        return out["tokens"]

    n, wall, cpu = probe.run(go)
    return Row(n, out["seconds"], cpu * out["seconds"] / wall, out["first"])


def training_row(settings, probe: TreeCPU) -> tuple[Row, float, float]:
    """One Ray Train run, then its per-worker parameter and Adam state in MiB (from the run's last
    logged step)."""
    from raysae.train.checkpoint import read_state
    from raysae.train.ray_train import train

    result = None

    def run() -> int:
        nonlocal result
        result = train(settings)
        return result.tokens

    row = Row(*probe.run(run))
    last = read_state(result.checkpoint_path).history[-1]
    mib = 2**20
    return row, last["memory/param_bytes_per_worker"] / mib, last["memory/optimizer_bytes_per_worker"] / mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=409_600)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--d-sae", type=int, default=2304)
    ap.add_argument("--memory", action="store_true", help="also train from the cache at mp=2 (memory table)")
    ap.add_argument("--rounds", type=int, default=1, help="run every row this many times, interleaved")
    ap.add_argument("--generate", choices=["plain", "ray"], help=argparse.SUPPRESS)  # the subprocess
    args = ap.parse_args()
    if args.generate:
        generate(args, args.generate)
        return

    import ray

    from raysae.config.data import CacheConfig, CacheJobConfig
    from raysae.data.cache import write_cache

    out = Path(tempfile.mkdtemp(prefix="raysae-e2e-"))
    cores = os.cpu_count() or 1
    probe = TreeCPU()
    rows: dict[str, list[Row]] = {}  # name -> one Row per round
    memory: list[tuple[str, float, float]] = []
    stream = _settings(args, out, "stream")
    cache = out / "cache"
    # Untimed: writes the cache and leaves the bundled model dequantised.
    write_cache(
        CacheJobConfig(activations=stream.activations, cache=CacheConfig(dir=str(cache))),
        use_ray=False,
        progress=False,
    )
    init_s = []
    for _ in range(args.rounds):
        rows.setdefault(PLAIN, []).append(generation_row(args, "plain", probe))
        rows.setdefault(RAY, []).append(generation_row(args, "ray", probe))
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        init_s.append(time.perf_counter() - t0)
        try:
            runs = [(CACHE, _settings(args, out, "cache", cache=cache))]
            if args.memory:
                runs.append(
                    ("training from cache, mp=2", _settings(args, out, "cache2", cache=cache, dp=1, mp=2))
                )
            runs.append((STREAM, stream))
            memory.clear()
            for name, settings in runs:
                row, param_mib, adam_mib = training_row(settings, probe)
                rows.setdefault(name, []).append(row)
                memory.append((name, param_mib, adam_mib))
        finally:
            ray.shutdown()
    report(args, rows, memory, statistics.median(init_s), cores)


def bound_of(g: Row, t: Row) -> float:
    """Rate bound of streaming when generation and training share the cores: 1/(1/g + 1/t)."""
    return 1 / (1 / g.rate + 1 / t.rate)


def report(args, rows: dict, memory: list, init_s: float, cores: int) -> None:
    """Median of every row over the rounds, then each round's ratios."""

    def median(runs: list[Row], field: str) -> float | None:
        values = [getattr(r, field) for r in runs]
        return None if None in values else statistics.median(values)

    med = {
        name: Row(runs[0].tokens, *(median(runs, f) for f in ("seconds", "cpu", "first")))
        for name, runs in rows.items()
    }
    g, bound = med[PLAIN].rate, bound_of(med[PLAIN], med[CACHE])
    rounds = len(rows[PLAIN])
    print(
        f"\ntokens {args.tokens}, hook blocks.{args.layer}.hook_resid_post, d_sae {args.d_sae}, {cores} cores, "
        f"ray.init {init_s:.1f} s (not counted in training rows); all rates start-up included (generation: "
        f"from a fresh process's start, interpreter and ray.init included); median of {rounds} round(s)"
    )
    print(
        f"{'what':<30}{'seconds':>9}{'tok/s':>9}{'vs g':>7}{'vs bound':>10}{'cpu util':>10}{'1st rows s':>12}"
    )
    for name, (n, wall, cpu, first) in med.items():
        vs_bound = f"{n / wall / bound:.2f}" if name == STREAM else "-"
        print(
            f"{name:<30}{wall:>9.1f}{n / wall:>9.0f}{n / wall / g:>7.2f}{vs_bound:>10}{cpu / wall / cores:>10.2f}"
            f"{'-' if first is None else f'{first:.1f}':>12}"
        )
    print(f"{'bound 1/(1/g + 1/t)':<30}{args.tokens / bound:>9.1f}{bound:>9.0f}{bound / g:>7.2f}{1.0:>10.2f}")
    # after the first rows: the rate once both have started, i.e. what start-up does not explain
    print(f"\n{'round':<8}{'Ray / plain':>12}{'after 1st rows':>16}{'streaming / bound':>19}")
    for i in range(rounds):
        gi, ri, ti, si = (rows[k][i] for k in (PLAIN, RAY, CACHE, STREAM))
        ray_after, plain_after = ri.seconds - ri.first, gi.seconds - gi.first
        steady = "-"  # under a second after the first rows (a tiny budget): no rate to speak of
        if min(ray_after, plain_after) >= 1:
            steady = f"{(ri.tokens / ray_after) / (gi.tokens / plain_after):.2f}"
        print(f"{i + 1:<8}{ri.rate / gi.rate:>12.2f}{steady:>16}{si.rate / bound_of(gi, ti):>19.2f}")
    if args.memory:
        print(f"\n{'per-worker memory':<30}{'params MiB':>12}{'adam MiB':>10}")
        for name, pmem, omem in memory:
            print(f"{name:<30}{pmem:>12.1f}{omem:>10.1f}")


if __name__ == "__main__":
    main()
