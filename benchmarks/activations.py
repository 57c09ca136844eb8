"""Activation throughput: Ray pipeline vs a plain loop, cache write and read, safetensors vs Parquet.

    .venv/bin/python benchmarks/activations.py --tokens 16384 --hooks blocks.6.hook_resid_post

One run computes the same token budget (same model, stop layer, batch size) with a plain single-process
loop and with the Ray Data pipeline, writes it to an activation cache, reads the cache back (plain
iterator and Ray Dataset), and times one realistic shard in safetensors and in Parquet. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from raysae.config.data import ActivationsConfig, CacheJobConfig
from raysae.data.cache import write_cache
from raysae.data.extract import ActivationSource
from raysae.data.reader import ActivationCache


def timed(fn) -> tuple[int, float]:
    t = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t


def plain_loop(cfg: ActivationsConfig) -> int:
    return sum(len(rows["token_id"]) for rows in ActivationSource(cfg).rows())


def ray_pipeline(cfg: ActivationsConfig, marks: dict) -> int:
    from raysae.data.pipeline import activation_dataset, iter_row_chunks

    n = 0
    t0 = time.perf_counter()
    for chunk in iter_row_chunks(activation_dataset(cfg), progress=False):
        if n == 0:
            marks["first"] = time.perf_counter() - t0
            marks["first_rows"] = len(chunk["token_id"])
        n += len(chunk["token_id"])
    return n


def read_plain(folder: Path, batch_size: int, passes: int, **kw) -> int:
    cache = ActivationCache(folder, verify=kw.pop("verify", True))
    return sum(
        len(b["token_id"]) for _ in range(passes) for b in cache.iter_batches(batch_size, meta=True, **kw)
    )


def read_ray(folder: Path, batch_size: int, passes: int) -> int:
    ds = ActivationCache(folder).dataset(shuffle=True)
    return sum(
        len(b["token_id"]) for _ in range(passes) for b in ds.iter_torch_batches(batch_size=batch_size)
    )


def format_rows(folder: Path, shard_rows: int) -> list[tuple[str, float, float, float]]:
    """(format, write s, read s, MB) for one shard of ``shard_rows`` real activation rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import load_file, save_file

    cache = ActivationCache(folder)
    cols = cache.load_shard(0)
    reps = -(-shard_rows // len(cols["token_id"]))
    cols = {k: v.repeat(reps, *([1] * (v.dim() - 1)))[:shard_rows].contiguous() for k, v in cols.items()}
    hooks = cache.hooks
    tmp = Path(tempfile.mkdtemp(prefix="raysae-fmt-"))
    out = []

    def best(fn, n=3):
        return min(timed(lambda: fn() or 0)[1] for _ in range(n))

    path = tmp / "s.safetensors"
    w = best(lambda: save_file(cols, path))
    r = best(lambda: {k: v.clone() for k, v in load_file(path).items()})
    out.append(("safetensors", w, r, path.stat().st_size / 1e6))

    def table():
        d = {
            h: pa.FixedSizeListArray.from_arrays(pa.array(cols[h].numpy().reshape(-1)), cols[h].shape[1])
            for h in hooks
        }
        d.update({k: pa.array(v.numpy()) for k, v in cols.items() if k not in hooks})
        return pa.table(d)

    def read_parquet(p):
        t = pq.read_table(p)
        return {
            h: torch.from_numpy(t.column(h).combine_chunks().flatten().to_numpy().reshape(shard_rows, -1))
            for h in hooks
        }

    for comp in ("none", "zstd"):
        p = tmp / f"s-{comp}.parquet"
        w = best(lambda p=p, comp=comp: pq.write_table(table(), p, compression=comp))
        r = best(lambda p=p: read_parquet(p))
        out.append((f"parquet ({comp})", w, r, p.stat().st_size / 1e6))
    shutil.rmtree(tmp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16384, help="token budget (activation rows)")
    ap.add_argument("--hooks", nargs="+", default=["blocks.6.hook_resid_post"])
    ap.add_argument("--context-size", type=int, default=128)
    ap.add_argument("--batch-windows", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=None, help="model replicas (default: from the cluster)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    ap.add_argument("--read-batch", type=int, default=4096, help="batch size when reading the cache")
    ap.add_argument(
        "--cache-shard-rows", type=int, default=4096, help="rows per shard of the benchmark cache"
    )
    ap.add_argument("--read-passes", type=int, default=10, help="passes over the cache per read measurement")
    ap.add_argument("--shard-rows", type=int, default=32768, help="rows of the shard in the format test")
    args = ap.parse_args()

    import ray

    cfg = ActivationsConfig.model_validate(
        {
            "hooks": args.hooks,
            "total_tokens": args.tokens,
            "batch_windows": args.batch_windows,
            "tokens": {"context_size": args.context_size},
            "resources": {"replicas": args.replicas},
        }
    )
    work = Path(tempfile.mkdtemp(prefix="raysae-bench-"))
    rows: list[tuple[str, int, float]] = []
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        ActivationSource(cfg)  # warm: dequantise the model once, import everything
        n, s = timed(lambda: plain_loop(cfg))
        rows.append(("plain loop (1 process)", n, s))
        marks: dict = {}
        n, s = timed(lambda: ray_pipeline(cfg, marks))
        rows.append(("ray pipeline (end to end)", n, s))
        rows.append(("ray pipeline (after 1st block)", n - marks["first_rows"], s - marks["first"]))
        job = CacheJobConfig(
            activations=cfg, cache={"dir": str(work / "cache"), "shard_rows": args.cache_shard_rows}
        )
        n, s = timed(lambda: write_cache(job, use_ray=False, progress=False).rows)
        rows.append(("plain loop + cache write", n, s))
        folder = work / "cache"
        k, b = args.read_passes, args.read_batch
        rows.append(("cache read (sha256 verified)", *timed(lambda: read_plain(folder, b, k))))
        rows.append(("cache read (no verify)", *timed(lambda: read_plain(folder, b, k, verify=False))))
        rows.append(("cache read (shuffled)", *timed(lambda: read_plain(folder, b, k, shuffle=True))))
        rows.append(("cache read (Ray Dataset, shuffled)", *timed(lambda: read_ray(folder, b, k))))
        formats = format_rows(folder, args.shard_rows)
        plan = ray.cluster_resources()
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    base = rows[0][1] / rows[0][2]
    print(
        f"\nmodel smollm2-135m-instruct, hooks {args.hooks}, context {args.context_size}, "
        f"batch {args.batch_windows} windows, {args.tokens} tokens, torch threads {torch.get_num_threads()}, "
        f"Ray CPUs {plan.get('CPU', 0):g}"
    )
    print(f"{'what':34} {'tokens':>9} {'seconds':>9} {'tokens/s':>11} {'× plain':>8}")
    for name, n, s in rows:
        print(f"{name:34} {n:9d} {s:9.2f} {n / s:11.0f} {n / s / base:8.2f}")
    print(
        f"\nstorage format, one shard of {args.shard_rows} rows × {len(args.hooks)} hook(s) + metadata (best of 3)"
    )
    print(f"{'format':16} {'write s':>8} {'read s':>8} {'MB':>8} {'write ×':>8} {'read ×':>8}")
    w0, r0 = formats[0][1], formats[0][2]
    for name, w, r, mb in formats:
        print(f"{name:16} {w:8.3f} {r:8.3f} {mb:8.1f} {w / w0:8.2f} {r / r0:8.2f}")


if __name__ == "__main__":
    main()
