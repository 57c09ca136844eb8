"""Latency (p50/p99) and throughput of the Serve application's feature lookups under bounded concurrent load.

    .venv/bin/python benchmarks/serve_latency.py [--features 500] [--requests 200] [--concurrency 1 8 32]
        [--page-size 20] [--mongo-uri URI] [--text-requests 0]

It starts a private Ray instance (2 CPUs), the application on a free 127.0.0.1 port (store lookups only,
unless --text-requests > 0), fills a fresh database with --features feature documents of realistic
size (20 top examples of 64 tokens, 10 quantile examples, histogram, DLA lists), then runs each endpoint
with N concurrent httpx workers on loopback sharing M requests, and prints one row per (endpoint, N).
The database is dropped at the end. Without --mongo-uri (or MONGO_URI) a local secantusd-py store is
started in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

HOOK = "blocks.6.hook_resid_post"
DICT_ID = "bench-sae"
TEXT = "The quick brown fox jumps over the lazy dog again."


def save_dictionary(path: Path, d_sae: int) -> Path:
    """A TopK SAE (random weights) on SmolLM2's layer-6 residual stream, for the text endpoint."""
    from raysae.config import SAEConfig
    from raysae.dictionaries import build_dictionary

    return build_dictionary(
        SAEConfig(d_model=576, d_sae=d_sae, act_fn="topk", top_k=32, hook_point_in=HOOK)
    ).save(path)


def feature_doc(i: int, rng: random.Random) -> dict:
    def example() -> dict:
        acts = [max(0.0, rng.gauss(0, 1)) for _ in range(64)]
        return {
            "doc_id": rng.randrange(10_000),
            "window_id": rng.randrange(100),
            "position": int(max(range(64), key=acts.__getitem__)),
            "max_activation": max(acts),
            "tokens": [f" w{rng.randrange(5000)}" for _ in range(64)],
            "token_ids": [rng.randrange(49_152) for _ in range(64)],
            "activations": acts,
        }

    return {
        "index": i,
        "layer": 6,
        "frequency": rng.random() / 100,
        "n_fired": rng.randrange(1, 10_000),
        "n_tokens": 1_000_000,
        "mean_activation": rng.random(),
        "max_activation": rng.random() * 10,
        "histogram": {
            "edges": [k / 4 for k in range(41)],
            "counts": [rng.randrange(1000) for _ in range(40)],
        },
        "top_examples": [example() for _ in range(20)],
        "quantile_examples": [
            {"quantile_low": 0.0, "quantile_high": 0.5, "examples": [example() for _ in range(10)]}
        ],
        "dla_positive_tokens": [f" t{rng.randrange(50)}" for _ in range(10)],
        "dla_positive": [{"token": f" t{k}", "token_id": k, "value": 1.0} for k in range(10)],
        "dla_negative": [{"token": f" n{k}", "token_id": k, "value": -1.0} for k in range(10)],
    }


Request = tuple[str, dict | None]  # (path, JSON body: POST when given, else GET)


async def load(url: str, make: Callable[[random.Random], Request], requests: int, workers: int) -> dict:
    """Run ``requests`` requests with ``workers`` concurrent clients; latencies (s), errors, wall time."""
    latencies: list[float] = []
    errors = 0
    remaining = requests
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker(seed: int) -> None:
            nonlocal remaining, errors
            rng = random.Random(seed)
            while remaining > 0:
                remaining -= 1
                path, body = make(rng)
                t0 = time.perf_counter()
                r = await (client.get(path) if body is None else client.post(path, json=body))
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(workers)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "wall": wall}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=500)
    ap.add_argument("--requests", type=int, default=200, help="requests per (endpoint, concurrency)")
    ap.add_argument("--page-size", type=int, default=20, help="limit of the page and search requests")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--mongo-uri", default=os.environ.get("MONGO_URI"))
    ap.add_argument("--text-requests", type=int, default=0, help="also time text → features (real model)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    from ray import serve

    from raysae.config.data import BUNDLED_MODEL
    from raysae.config.serve import ServeConfig
    from raysae.serve.app import start_local
    from raysae.store import LocalStoreServer, Store, StoreConfig, find_free_port

    tmp = Path(tempfile.mkdtemp(prefix="rsb-", dir="/tmp"))  # short: Ray's socket paths have a limit
    local = LocalStoreServer(tmp / "mongo") if not args.mongo_uri else None
    uri = local.start(timeout=120) if local is not None else args.mongo_uri
    db = f"bench_{uuid.uuid4().hex[:10]}"
    store = None
    try:
        store = Store.connect(StoreConfig(uri=uri, db=db))
        rng = random.Random(0)
        t0 = time.perf_counter()
        record = {"architecture": "sae", "hooks_in": [HOOK], "d_sae": args.features}
        if args.text_requests:
            record.update(path=str(save_dictionary(tmp / "dictionary", args.features)), model=BUNDLED_MODEL)
        store.upsert_dictionary(DICT_ID, record)
        store.upsert_features(DICT_ID, HOOK, (feature_doc(i, rng) for i in range(args.features)))
        print(f"stored {args.features} features in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray"))
        signal.signal(signal.SIGTERM, _interrupt)  # Ray's own handler would abort without cleaning up
        port = find_free_port("127.0.0.1")
        config = ServeConfig(
            port=port, store=StoreConfig(uri=uri, db=db), text_endpoint=args.text_requests > 0
        )
        start_local(config)
        url = f"http://127.0.0.1:{port}"
        n, size = args.features, args.page_size
        endpoints: dict[str, tuple[Callable[[random.Random], Request], int]] = {
            "GET /health": (lambda r: ("/health", None), args.requests),
            "GET feature": (
                lambda r: (f"/api/dictionaries/{DICT_ID}/features/{HOOK}/{r.randrange(n)}", None),
                args.requests,
            ),
            f"GET features page ({size})": (
                lambda r: (
                    f"/api/dictionaries/{DICT_ID}/features?limit={size}&skip={r.randrange(max(1, n - size))}",
                    None,
                ),
                args.requests,
            ),
            "GET search DLA token": (
                lambda r: (f"/api/search/tokens?token=%20t{r.randrange(50)}&limit={size}", None),
                args.requests,
            ),
        }
        if args.text_requests:
            endpoints["POST text → features"] = (
                lambda r: (f"/api/dictionaries/{DICT_ID}/activations", {"text": TEXT, "top_n": 5}),
                args.text_requests,
            )
        rows = []
        for name, (make, count) in endpoints.items():
            warm = asyncio.run(load(url, make, 8, 2))  # warm-up (loads the model for the text endpoint)
            if warm["errors"]:
                raise SystemExit(f"{name}: {warm['errors']} of 8 warm-up requests failed")
            for workers in args.concurrency:
                rows.append((name, workers, asyncio.run(load(url, make, count, workers))))
                print(f"  {name} × {workers}: {rows[-1][2]['wall']:.1f}s", file=sys.stderr)
        print(f"store={'local secantusd-py' if local else 'MONGO_URI'}  features={n}  ingress replicas=1")
        header = (
            f"{'endpoint':<26}{'conc':>6}{'reqs':>6}{'errors':>8}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}"
        )
        print(header)
        for name, workers, res in rows:
            lat = sorted(res["latencies"])
            p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
            rps = len(lat) / res["wall"]
            print(
                f"{name:<26}{workers:>6}{len(lat):>6}{res['errors']:>8}{p50:>10.1f}{p99:>10.1f}{rps:>10.1f}"
            )
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            if store is not None:
                store.client.drop_database(db)
                store.close()
            if local is not None:
                local.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
