"""Serve under load: requests/s, p50/p99 latency and errors of the read endpoints at 1, 10 and 100
concurrent clients, driven over loopback by a second process.

    .venv/bin/python benchmarks/serve_load.py [--features 2304] [--requests 400] [--clients 1 10 100]
        [--endpoints health feature page search graph text] [--text-requests 40] [--mongo-uri URI]

It fills a fresh database with --features analysed-feature documents of the size `raysae analyze`
writes with its defaults (20 top and 25 quantile examples of --context tokens, 48-bin histogram, 10+10
DLA tokens) under one dictionary record, and one attribution graph (--graph-nodes nodes), starts a
private Ray instance (--cpus) and the application on a free 127.0.0.1 port, times the first (cold) page
and lookup, then starts `serve_load.py --drive` as a separate process that runs each endpoint with N
concurrent aiohttp clients sharing max(--requests, 2N) requests (text: max(--text-requests, N)) after a
warm-up, and prints one row per (endpoint, N). "text" runs the bundled SmolLM2 and a random TopK SAE
(d_sae = --features) on CPU. The database is dropped at the end. Without --mongo-uri (or MONGO_URI) a
local secantusd-py store is started in a temporary folder. Goal (issue #12): lookups and pages at
p99 <= 20 ms with 100 concurrent clients and no errors; the last lines say where each stands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

HOOK = "blocks.3.hook_resid_post"
DICT_ID = "bench-sae"
GRAPH_ID = "bench-graph"
TEXT = "The quick brown fox jumps over the lazy dog, and the dog does not mind at all."
GOAL_P99_MS = 20.0
GOAL_ENDPOINTS = ("feature", "page")
EXPECTED = {"floor": "422"}  # the status each endpoint answers; anything else is an error


# ---- requests --------------------------------------------------------------------------------------
def make_request(endpoint: str, rng: random.Random, ctx: dict[str, Any]) -> tuple[str, str, Any]:
    """(method, path, JSON body) of one request to ``endpoint``: random feature, page, token."""
    n, size, base = ctx["features"], ctx["page_size"], f"/api/dictionaries/{DICT_ID}"
    if endpoint == "floor":  # refused by FastAPI's validation in the replica: Serve's own cost, no store
        return "GET", f"{base}/features/{HOOK}/-1", None
    if endpoint == "health":
        return "GET", "/health", None
    if endpoint == "feature":  # a random one, or the next of ctx["order"] (--warm-features)
        return (
            "GET",
            f"{base}/features/{HOOK}/{next(ctx['order']) if 'order' in ctx else rng.randrange(n)}",
            None,
        )
    if endpoint == "page":
        sort_by = rng.choice(("frequency", "max_activation", "index"))
        skip = rng.randrange(max(1, n - size))
        return "GET", f"{base}/features?sort_by={sort_by}&skip={skip}&limit={size}", None
    if endpoint == "search":
        return (
            "GET",
            f"/api/search/tokens?token=%20t{rng.randrange(50)}&dictionary_id={DICT_ID}&limit={size}",
            None,
        )
    if endpoint == "graph":
        return "GET", f"/api/graphs/{GRAPH_ID}", None
    if endpoint == "text":
        return "POST", f"{base}/activations", {"text": TEXT, "top_n": 5}
    raise ValueError(f"unknown endpoint {endpoint!r}")


LABELS = {
    "floor": "Serve floor (422)",
    "health": "health (store ping)",
    "feature": "feature lookup",
    "page": "features page",
    "search": "DLA token search",
    "graph": "graph fetch",
    "text": "text -> features",
}


async def run_level(url: str, endpoint: str, ctx: dict, clients: int, requests: int, cap_s: float) -> dict:
    """``requests`` requests from ``clients`` concurrent keep-alive clients; stops issuing after cap_s."""
    import aiohttp

    latencies: list[float] = []
    errors: Counter[str] = Counter()
    left = requests
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def client(seed: int) -> None:
            nonlocal left
            rng = random.Random(seed)
            while left > 0 and time.perf_counter() - start < cap_s:
                left -= 1
                method, path, body = make_request(endpoint, rng, ctx)
                t0 = time.perf_counter()
                try:
                    async with session.request(method, path, json=body) as r:
                        await r.read()
                        status = str(r.status)
                except Exception as err:  # a refused or dropped connection counts as an error
                    status = type(err).__name__
                latencies.append(time.perf_counter() - t0)
                if status != EXPECTED.get(endpoint, "200"):
                    errors[status] += 1

        await asyncio.gather(*(client(1000 * clients + k) for k in range(clients)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "errors": dict(errors), "wall": wall, "asked": requests}


def drive(spec: dict) -> None:
    """The load process: warm-up, then every level; one JSON line per level on stdout."""
    url, endpoint, ctx = spec["url"], spec["endpoint"], spec["ctx"]
    asyncio.run(run_level(url, endpoint, ctx, 2, spec["warmup"], spec["cap_s"]))
    if endpoint == "feature" and spec["warm_features"]:  # every feature once: the replica's cache state
        ordered = {**ctx, "order": iter(range(ctx["features"]))}
        asyncio.run(run_level(url, endpoint, ordered, 10, ctx["features"], spec["cap_s"] * 10))
    for clients in spec["clients"]:
        n = max(spec["requests"], (1 if endpoint == "text" else 2) * clients)
        print(
            json.dumps(
                {"clients": clients, **asyncio.run(run_level(url, endpoint, ctx, clients, n, spec["cap_s"]))}
            )
        )
        sys.stdout.flush()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


# ---- data ------------------------------------------------------------------------------------------
def feature_doc(i: int, rng: random.Random, context: int) -> dict:
    """A feature document shaped like the analysis job's (``raysae.store.models.FeatureDoc``)."""

    def example() -> dict:
        acts = [max(0.0, rng.gauss(0, 1)) for _ in range(context)]
        return {
            "doc_id": rng.randrange(10_000),
            "window_id": rng.randrange(100_000),
            "position": max(range(context), key=acts.__getitem__),
            "max_activation": max(acts),
            "tokens": [f" w{rng.randrange(5000)}" for _ in range(context)],
            "token_ids": [rng.randrange(49_152) for _ in range(context)],
            "activations": acts,
        }

    return {
        "index": i,
        "layer": None,
        "frequency": rng.random() / 100,
        "n_fired": rng.randrange(1, 10_000),
        "n_tokens": 409_600,
        "mean_activation": rng.random(),
        "max_activation": rng.random() * 10,
        "histogram": {
            "edges": [10 ** (k / 8 - 3) for k in range(49)],
            "counts": [rng.randrange(99) for _ in range(48)],
        },
        "top_examples": [example() for _ in range(20)],
        "quantile_examples": [
            {"quantile_low": q / 5, "quantile_high": (q + 1) / 5, "examples": [example() for _ in range(5)]}
            for q in range(5)
        ],
        "dla_positive_tokens": [f" t{rng.randrange(50)}" for _ in range(10)],
        "dla_positive": [{"token": f" t{k}", "token_id": k, "value": 1.0 - k / 10} for k in range(10)],
        "dla_negative": [{"token": f" n{k}", "token_id": 100 + k, "value": k / 10 - 1.0} for k in range(10)],
    }


def graph_doc(rng: random.Random, n_nodes: int) -> dict:
    """A graph document shaped like ``raysae.graphs.export.graph_document`` (random values)."""
    spots = [(rng.randrange(4), rng.randrange(12), rng.randrange(2304)) for _ in range(n_nodes)]
    nodes = [
        {"kind": "feature", "layer": a, "position": b, "index": c, "activation": 1.0, "influence": 0.5}
        for a, b, c in spots
    ]
    edges = 8 * n_nodes
    return {
        "dictionary_id": DICT_ID,
        "prompt": TEXT,
        "counts": {"nodes": n_nodes, "pruned_edges": edges},
        "scores": {"replacement_score": 0.5, "pruned_completeness_score": 0.8},
        "nodes": nodes,
        "pruned_nodes": list(range(n_nodes)),
        "pruned_edges": {
            "source": [rng.randrange(n_nodes) for _ in range(edges)],
            "target": [rng.randrange(n_nodes) for _ in range(edges)],
            "weight": [rng.gauss(0, 1) for _ in range(edges)],
        },
        "adjacency": bytes(4 * n_nodes * n_nodes),
    }


def fill(store: Any, args: argparse.Namespace, tmp: Path) -> dict:
    """Write the dictionary record, features and graph; returns sizes for the report."""
    import bson

    rng = random.Random(0)
    record: dict[str, Any] = {
        "architecture": "sae",
        "hooks_in": [HOOK],
        "hooks": [HOOK],
        "d_sae": args.features,
    }
    if "text" in args.endpoints:
        from raysae.config import SAEConfig
        from raysae.config.data import BUNDLED_MODEL
        from raysae.dictionaries import build_dictionary

        cfg = SAEConfig(d_model=576, d_sae=args.features, act_fn="topk", top_k=32, hook_point_in=HOOK)
        record.update(path=str(build_dictionary(cfg).save(tmp / "dictionary")), model=BUNDLED_MODEL)
    first = feature_doc(0, random.Random(0), args.context)
    for lo in range(0, args.features, 128):
        batch = range(lo, min(lo + 128, args.features))
        store.upsert_features(DICT_ID, HOOK, [feature_doc(i, rng, args.context) for i in batch])
    store.upsert_graph(GRAPH_ID, graph_doc(rng, args.graph_nodes), dictionary_id=DICT_ID)
    store.upsert_dictionary(DICT_ID, {**record, "analysis_id": "bench"})  # analysis writes the record last
    return {"feature_bson_kb": len(bson.encode(first)) / 1024}


# ---- main ------------------------------------------------------------------------------------------
def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def timed_get(url: str) -> tuple[float, int, int]:
    """Seconds, status and body bytes of one GET."""
    import httpx

    t0 = time.perf_counter()
    r = httpx.get(url, timeout=600)
    return time.perf_counter() - t0, r.status_code, len(r.content)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=2304, help="features of the dictionary (quickstart's)")
    ap.add_argument("--context", type=int, default=128, help="tokens per example window")
    ap.add_argument("--requests", type=int, default=400, help="requests per level (at least 2 per client)")
    ap.add_argument("--text-requests", type=int, default=40, help="text requests per level (1+ per client)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--endpoints", nargs="+", default=list(LABELS), choices=list(LABELS))
    ap.add_argument("--page-size", type=int, default=20)
    ap.add_argument("--graph-nodes", type=int, default=600)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the private Ray instance")
    ap.add_argument("--level-cap-s", type=float, default=120.0, help="a level issues no requests after this")
    ap.add_argument("--serve-args", default="{}", help="JSON of extra ServeConfig fields")
    ap.add_argument("--limit-clients", nargs="*", default=[], metavar="ENDPOINT=N", help="levels <= N only")
    ap.add_argument("--warm-features", action="store_true", help="read every feature once before lookups")
    ap.add_argument("--mongo-uri", default=os.environ.get("MONGO_URI"))
    ap.add_argument("--drive", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive:
        drive(json.loads(args.drive))
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    from ray import serve

    from raysae.config.serve import ServeConfig
    from raysae.serve.app import start_local
    from raysae.store import LocalStoreServer, Store, StoreConfig, find_free_port

    tmp = Path(tempfile.mkdtemp(prefix="rsl-", dir="/tmp"))  # short: Ray's socket paths have a limit
    local = LocalStoreServer(tmp / "mongo") if not args.mongo_uri else None
    uri = local.start(timeout=120) if local is not None else args.mongo_uri
    db = f"bench_{uuid.uuid4().hex[:10]}"
    store = None
    try:
        store = Store.connect(StoreConfig(uri=uri, db=db))
        t0 = time.perf_counter()
        sizes = fill(store, args, tmp)
        print(f"stored {args.features} features in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray"))
        signal.signal(signal.SIGTERM, _interrupt)  # Ray's own handler would abort without cleaning up
        port = find_free_port("127.0.0.1")
        config = ServeConfig.model_validate(
            {
                "port": port,
                "store": {"uri": uri, "db": db},
                "text_endpoint": "text" in args.endpoints,
                "graph_endpoint": False,
                "chat_endpoint": False,
                **json.loads(args.serve_args),
            }
        )
        start_local(config)
        url = f"http://127.0.0.1:{port}"
        ctx = {"features": args.features, "page_size": args.page_size}
        first = {
            "page": f"/features?sort_by=frequency&limit={args.page_size}",
            "feature": f"/features/{HOOK}/0",
        }
        cold = {
            k: timed_get(f"{url}/api/dictionaries/{DICT_ID}{p}")
            for k, p in first.items()
            if k in args.endpoints
        }
        app = serve.status().applications[config.app_name].deployments["FeatureAPI"]
        replicas = sum(app.replica_states.values())
        rows = []
        most = {k: int(n) for k, n in (item.split("=", 1) for item in args.limit_clients)}
        for endpoint in args.endpoints:
            levels = [c for c in args.clients if c <= most.get(endpoint, c)]
            spec = {
                "url": url,
                "endpoint": endpoint,
                "ctx": ctx,
                "clients": levels,
                "cap_s": args.level_cap_s,
                "requests": args.text_requests if endpoint == "text" else args.requests,
                "warmup": 8 if endpoint == "text" else 40,
                "warm_features": args.warm_features,
            }
            out = subprocess.run(
                [sys.executable, __file__, "--drive", json.dumps(spec)],
                capture_output=True,
                text=True,
                timeout=args.level_cap_s * (len(args.clients) + 1) + 600,
            )
            if out.returncode:
                raise SystemExit(f"{endpoint}: the load process failed:\n{out.stderr[-3000:]}")
            for line in out.stdout.splitlines():
                rows.append((endpoint, json.loads(line)))
                print(
                    f"  {endpoint} x {rows[-1][1]['clients']}: {rows[-1][1]['wall']:.1f} s", file=sys.stderr
                )
        report(args, config, sizes, cold, rows, replicas, local is not None)
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


def report(
    args: argparse.Namespace, config: Any, sizes: dict, cold: dict, rows: list, replicas: int, local: bool
) -> None:
    cache = {k: getattr(config, k, None) for k in ("page_cache_features", "feature_cache_mb", "record_ttl_s")}
    print(
        f"store={'local secantusd-py' if local else 'MONGO_URI'}  features={args.features}  "
        f"feature={sizes['feature_bson_kb']:.0f} KB BSON  ray CPUs={args.cpus}  ingress replicas={replicas}  {cache}"
    )
    for name, (seconds, status, size) in cold.items():
        print(
            f"first {LABELS[name]} after start (cold): {seconds * 1000:.0f} ms (HTTP {status}, {size / 1024:.0f} KB)"
        )
    print(
        f"{'endpoint':<22}{'clients':>8}{'done':>6}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    )
    verdicts = []
    for endpoint, res in rows:
        lat = sorted(res["latencies"])
        if not lat:
            continue
        n_err = sum(res["errors"].values())
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        err = f"{n_err}" + (f" {res['errors']}" if n_err else "")
        print(
            f"{LABELS[endpoint]:<22}{res['clients']:>8}{len(lat):>6}{err:>8}{len(lat) / res['wall']:>9.1f}"
            f"{p50:>9.1f}{p99:>9.1f}{lat[-1] * 1000:>9.1f}"
            + ("" if len(lat) == res["asked"] else "  (capped)")
        )
        if endpoint in GOAL_ENDPOINTS and res["clients"] == 100:
            met = p99 <= GOAL_P99_MS and n_err == 0 and len(lat) == res["asked"]
            verdicts.append(
                f"goal {LABELS[endpoint]}: p99 {p99:.1f} ms, {n_err} errors at 100 clients: "
                f"{'met' if met else 'not met'} (p99 <= {GOAL_P99_MS:.0f} ms, no errors)"
            )
    print("\n".join(verdicts))


if __name__ == "__main__":
    sys.exit(main())
