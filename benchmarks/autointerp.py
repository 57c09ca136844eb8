"""Autointerp throughput: features explained + scored per second against the fake OpenAI server with a
fixed latency at 1, 4 and 16 requests in flight (and through Ray), and SmolLM2's chat endpoint speed.

    .venv/bin/python benchmarks/autointerp.py --features 16 --latency 0.05 --smollm-features 5

Needs a MongoDB: $MONGO_URI, else a local secantusdb server is started in a temporary folder. The
SmolLM2 part also runs the whole job on the toy dictionary (features that fire on one word each) and
prints SmolLM2's detection/fuzzing balanced accuracy beside the random-explanation baseline.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fake server
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "autointerp"))  # the toy dictionary

from autointerp_data import DICT_ID, HOOK, fill
from fake_openai import FakeServer, FakeState

from raysae.autointerp.job import run_autointerp
from raysae.config.autointerp import AutointerpConfig
from raysae.store import LocalStoreServer, Store, StoreConfig


def job_config(url: str, store: Store, tmp: Path, in_flight: int, **over) -> AutointerpConfig:
    data = {
        "dictionary_id": DICT_ID,
        "use_ray": False,
        "features_in_flight": in_flight,
        "endpoint": {
            "base_url": url,
            "model": "fake",
            "concurrency": in_flight,
            "cache": False,
            "cache_dir": str(tmp / "cache"),
            "retries": 2,
            "backoff_s": 0.05,
        },
        "scorer": {"n_activating": 8, "n_non_activating": 8},
        "store": {"uri": store.uri, "db": store.db_name},
    }
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return AutointerpConfig.model_validate(data)


def fresh(store_uri: str, n: int) -> Store:
    s = Store.connect(StoreConfig(uri=store_uri, db=f"bench_{uuid.uuid4().hex[:12]}"))
    fill(s, n)
    return s


def bench_fake(uri: str, tmp: Path, n: int, latency: float, ray_workers: int) -> list[tuple]:
    rows = []
    with FakeServer(FakeState(latency_s=latency)) as fake:
        runs = [(1, False), (4, False), (16, False)] + ([(16, True)] if ray_workers else [])
        if ray_workers:  # start Ray and its workers outside the timed runs
            from raysae.ray_session import ensure_ray

            ensure_ray(include_dashboard=False, log_to_driver=False)
            store = fresh(uri, 4)
            run_autointerp(job_config(fake.url, store, tmp, 16, use_ray=True, ray_workers=ray_workers), store)
            store.client.drop_database(store.db_name)
        for in_flight, use_ray in runs:
            store = fresh(uri, n)
            cfg = job_config(
                fake.url, store, tmp, in_flight, use_ray=use_ray, ray_workers=max(1, ray_workers)
            )
            before = len(fake.state.requests)
            r = run_autointerp(cfg, store, progress=False)
            assert r.explained == n and r.score_failed == 0, r
            rows.append(
                (
                    f"{'ray ' if use_ray else ''}{in_flight} in flight",
                    n,
                    len(fake.state.requests) - before,
                    r.seconds,
                    n / r.seconds,
                )
            )
            store.client.drop_database(store.db_name)
            store.close()
    return rows


def bench_smollm(uri: str, tmp: Path, n_features: int, max_tokens: int) -> None:
    import openai

    from raysae.config.data import ModelConfig
    from raysae.serve.chat import ChatGenerator, run_chat_server

    gen = ChatGenerator.load(ModelConfig(device="cpu"), max_tokens_limit=max(256, max_tokens))
    with run_chat_server(gen) as url:
        client = openai.OpenAI(base_url=url, api_key="none")
        msgs = [{"role": "user", "content": "Write a short poem about the sea."}]
        client.chat.completions.create(model="m", messages=msgs, max_tokens=32, temperature=0)  # warm-up
        t0, toks, prompt = time.perf_counter(), 0, 0
        for _ in range(3):
            r = client.chat.completions.create(
                model="m", messages=msgs, max_tokens=max_tokens, temperature=0, logprobs=True, top_logprobs=5
            )
            toks += r.usage.completion_tokens
            prompt = r.usage.prompt_tokens
        dt = time.perf_counter() - t0
        print(
            f"\nSmolLM2 chat endpoint (CPU, greedy, logprobs top 5, prompt {prompt} tokens): "
            f"{toks} tokens in {dt:.1f} s = {toks / dt:.1f} generated tokens/s"
        )
        if not n_features:
            return
        store = fresh(uri, n_features)
        cfg = job_config(
            url,
            store,
            tmp,
            1,
            endpoint={"model": "smollm2", "timeout_s": 300, "concurrency": 1},
            explainer={"max_tokens": 40},
            scorer={"max_tokens": 20},
        )
        r = run_autointerp(cfg, store, progress=False)
        print(
            f"toy dictionary, {n_features} one-word features: {r.explained} explained "
            f"({r.explain_failed} failed), {r.scored} scores ({r.score_failed} failed), "
            f"{r.usage.requests} requests, {r.seconds:.0f} s"
        )
        table: dict[tuple[str, bool], list[float]] = {}
        for f in range(n_features):
            for e in store.get_explanations(DICT_ID, HOOK, f):
                print(f"  feature {f}: {e['explanation'] or e.get('error')!r}")
            for s in store.get_scores(DICT_ID, HOOK, f):
                if s["status"] == "ok":
                    table.setdefault((s["scorer_kind"], bool(s["baseline"])), []).append(s["score"])
        print(f"  {'scorer':<10} {'real':>8} {'baseline':>9}  (mean balanced accuracy, n)")
        for kind in ("detection", "fuzzing"):
            real, base = table.get((kind, False), []), table.get((kind, True), [])
            mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
            print(f"  {kind:<10} {mean(real):>8.3f} {mean(base):>9.3f}  ({len(real)}, {len(base)})")
        store.client.drop_database(store.db_name)
        store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--latency", type=float, default=0.05, help="seconds per fake request")
    p.add_argument("--ray-workers", type=int, default=4, help="0 skips the Ray row")
    p.add_argument("--smollm-features", type=int, default=5, help="0: only the tokens/s measurement")
    p.add_argument("--smollm-max-tokens", type=int, default=64)
    p.add_argument("--no-smollm", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="raysae-bench-autointerp-"))
    server = None
    uri = os.environ.get("MONGO_URI", "").strip()
    if not uri:
        server = LocalStoreServer(tmp / "mongo")
        server.start(timeout=120)
        uri = server.uri
    try:
        rows = bench_fake(uri, tmp, args.features, args.latency, args.ray_workers)
        serial = rows[0][4]
        print(
            f"fake server, {args.latency * 1000:.0f} ms per request, {args.features} features "
            "(explain + detection + fuzzing + baselines)"
        )
        print(f"{'run':<18} {'features':>8} {'requests':>8} {'seconds':>8} {'feat/s':>8} {'x serial':>8}")
        for name, n, req, sec, rate in rows:
            print(f"{name:<18} {n:>8} {req:>8} {sec:>8.2f} {rate:>8.2f} {rate / serial:>8.1f}")
        if not args.no_smollm:
            bench_smollm(uri, tmp, args.smollm_features, args.smollm_max_tokens)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
