"""Feature-analysis throughput (tokens/s) and where its time goes: model, dictionary, merge, DLA, store.

    .venv/bin/python benchmarks/analysis.py [--tokens 4096] [--hook blocks.6.hook_resid_post] [--d-sae 4096]
        [--mode ray|local|both] [--cpus 2]

A fresh TopK SAE on the bundled SmolLM2 over the Shakespeare corpus. MongoDB: $MONGO_URI, else a
throwaway secantusd-py server in a temporary folder. Worker stages (model, dictionary, reduce) are
summed over replicas; driver stages (merge, DLA, documents, store) run in the driver. "pass" is the wall
time of the streaming pass (actor start-up included), "write" of building and upserting the documents.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import torch

from raysae.analysis.job import analyze
from raysae.config import SAEConfig
from raysae.config.analysis import AnalysisConfig
from raysae.dictionaries import build_dictionary
from raysae.store import LocalStoreServer, Store, StoreConfig

STAGES = (
    ("model_s", "model forward (workers)"),
    ("dictionary_s", "dictionary encode (workers)"),
    ("reduce_s", "partial statistics (workers)"),
    ("merge_s", "exact merge (driver)"),
    ("dla_s", "DLA (driver)"),
    ("documents_s", "documents (driver)"),
    ("store_s", "MongoDB upserts"),
)


def run(mode: str, path: Path, cfg: AnalysisConfig, store: Store) -> tuple[float, dict]:
    t0 = time.perf_counter()
    result = analyze(path, cfg, store=store, use_ray=mode == "ray", progress=False)
    return time.perf_counter() - t0, {**result.timings, "tokens": result.n_tokens}


def print_table(mode: str, wall: float, t: dict) -> None:
    tokens = t["tokens"]
    print(
        f"\n[{mode}] {tokens} tokens in {wall:.1f} s: {tokens / wall:.0f} tokens/s end to end, "
        f"{tokens / t['pass_s']:.0f} tokens/s in the pass ({t['pass_s']:.1f} s), write {t['write_s']:.1f} s"
    )
    measured = sum(t.get(k, 0.0) for k, _ in STAGES)
    print(f"{'stage':<32}{'seconds':>10}{'share':>9}{'tokens/s':>12}")
    for key, name in STAGES:
        s = t.get(key, 0.0)
        rate = (
            f"{tokens / s:>12.0f}"
            if key in ("model_s", "dictionary_s", "reduce_s") and s > 0
            else f"{'':>12}"
        )
        print(f"{name:<32}{s:>10.2f}{s / measured:>9.1%}{rate}")
    other = wall - t["pass_s"] - t["write_s"]
    print(f"{'set-up (load, record)':<32}{other:>10.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hook", default="blocks.6.hook_resid_post")
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-windows", type=int, default=8)
    ap.add_argument("--mode", choices=("ray", "local", "both"), default="both")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = Path(tempfile.mkdtemp(prefix="raysae-bench-analysis-"))
    torch.manual_seed(0)
    sae_cfg = SAEConfig(d_model=576, d_sae=args.d_sae, act_fn="topk", top_k=args.k, hook_point_in=args.hook)
    path = build_dictionary(sae_cfg).save(tmp / "sae")
    server = None
    uri = os.environ.get("MONGO_URI", "").strip()
    if not uri:
        server = LocalStoreServer(tmp / "mongo")
        server.start(timeout=120)
        uri = server.uri
    store = Store.connect(StoreConfig(uri=uri, db=f"bench_{uuid.uuid4().hex[:12]}"))
    cfg = AnalysisConfig.model_validate(
        {
            "activations": {
                "total_tokens": args.tokens,
                "batch_windows": args.batch_windows,
                "tokens": {"context_size": args.context},
            },
            "store": store.config.model_dump(),
        }
    )
    modes = ("local", "ray") if args.mode == "both" else (args.mode,)
    print(
        f"SAE d_sae={args.d_sae} k={args.k} at {args.hook}; context {args.context}; torch threads "
        f"{torch.get_num_threads()}"
    )
    try:
        for mode in modes:
            if mode == "ray":
                import ray

                ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
                try:
                    wall, timings = run(mode, path, cfg, store)
                finally:
                    ray.shutdown()
            else:
                wall, timings = run(mode, path, cfg, store)
            print_table(mode, wall, timings)
    finally:
        store.client.drop_database(store.db_name)
        store.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
