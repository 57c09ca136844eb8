"""``run_autointerp``: explain, then score, the features of a stored dictionary — in-process or on Ray.

Two phases, each resumable: phase 1 explains every feature without an ``ok`` explanation of this
explainer (a killed job restarts at the next unexplained feature; failed ones are tried again);
phase 2 scores every explained feature that lacks an ``ok`` score of a scorer. The baseline of a
feature is the explanation of another feature of the job (a seeded derangement, so the pairing does
not depend on order or workers), which is why all explaining comes first.

With ``use_ray`` features go to Ray tasks in chunks, ``ray_workers`` tasks at a time; each task runs
an event loop with its share of the endpoint's concurrency and rate, so at most
``endpoint.concurrency`` requests are in flight over the whole job.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from raysae.autointerp.client import ChatClient, Usage
from raysae.autointerp.prompts import Window
from raysae.autointerp.scoring import negative_pool, random_words
from raysae.autointerp.work import (
    Context,
    explain_feature,
    explainer_id,
    feature_seed,
    score_feature,
    scorer_id,
)
from raysae.config.autointerp import AutointerpConfig
from raysae.errors import RaysaeError
from raysae.store import Store

Key = tuple[str, int]
CHUNK = 4  # features per Ray task: small enough for a smooth progress bar, large enough to amortise


class AutointerpError(RaysaeError, ValueError):
    """The job cannot start: no such dictionary or features."""


@dataclass
class AutointerpResult:
    features: int = 0
    explained: int = 0
    explain_failed: int = 0
    scored: int = 0
    score_failed: int = 0
    skipped_explained: int = 0
    skipped_scored: int = 0
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0


def job_features(cfg: AutointerpConfig, store: Store) -> list[Key]:
    """The (hook, index) pairs the job covers, in (hook, index) order."""
    keys: list[Key] = []
    skip, page = 0, store.config.max_page_size
    while True:
        docs = store.page_features(
            cfg.dictionary_id,
            cfg.hook,
            sort_by="index",
            descending=False,
            skip=skip,
            limit=page,
            summary=True,
        )
        keys.extend((d["hook"], d["index"]) for d in docs)
        if len(docs) < page:
            break
        skip += page
    if cfg.features is not None:
        wanted = set(cfg.features)
        keys = [k for k in keys if k[1] in wanted]
    keys.sort()
    if cfg.max_features is not None:
        keys = keys[: cfg.max_features]
    if not keys:
        where = f"hook {cfg.hook!r} of " if cfg.hook else ""
        raise AutointerpError(f"no stored features to explain in {where}dictionary {cfg.dictionary_id!r}")
    return keys


def pair_baselines(keys: Sequence[Key], seed: int) -> dict[Key, Key]:
    """A seeded derangement of ``keys``: each feature's baseline partner is another feature."""
    if len(keys) < 2:
        return {}
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


def run_autointerp(
    cfg: AutointerpConfig, store: Store | None = None, *, progress: bool = True
) -> AutointerpResult:
    """Explain and score the job's features; results are upserted as they come. Returns the counts."""
    start = time.perf_counter()
    own = store is None
    store = store or Store.connect(cfg.store)
    try:
        result = _run(cfg, store, progress)
    finally:
        if own:
            store.close()
    result.seconds = time.perf_counter() - start
    return result


def _run(cfg: AutointerpConfig, store: Store, progress: bool) -> AutointerpResult:
    keys = job_features(cfg, store)
    res = AutointerpResult(features=len(keys))
    eid = explainer_id(cfg)
    done = {
        (d["hook"], d["index"])
        for d in store.iter_explanations(cfg.dictionary_id, eid, fields=["status"])
        if d.get("status", "ok") == "ok"
    }
    todo = [k for k in keys if k not in done]
    res.skipped_explained = len(keys) - len(todo)
    for out in _execute(cfg, store, "explain", [(k, None) for k in todo], [], res.usage, progress):
        if out["status"] == "ok":
            res.explained += 1
        else:
            res.explain_failed += 1

    texts = {
        (d["hook"], d["index"]): d["explanation"]
        for d in store.iter_explanations(cfg.dictionary_id, eid, fields=["status", "explanation"])
        if d.get("status", "ok") == "ok" and d.get("explanation")
    }
    explained = [k for k in keys if k in texts]
    pool = job_pool(cfg, store, keys)
    wanted = wanted_scorers(cfg)
    ok = {}
    for d in store.iter_scores(cfg.dictionary_id, eid, fields=["status"]):
        if d.get("status", "ok") == "ok":
            ok.setdefault((d["hook"], d["index"]), set()).add(d["scorer"])
    partners = pair_baselines(explained, cfg.scorer.seed)
    items = []
    for k in explained:
        missing = [sid for sid in wanted if sid not in ok.get(k, set())]
        if not missing:
            res.skipped_scored += 1
            continue
        items.append(
            (
                k,
                {
                    "explanation": texts[k],
                    "baseline": _baseline(cfg, k, partners, texts, pool),
                    "todo": missing,
                },
            )
        )
    for outs in _execute(cfg, store, "score", items, pool, res.usage, progress):
        for out in outs:
            if out["status"] == "ok":
                res.scored += 1
            else:
                res.score_failed += 1
    return res


def wanted_scorers(cfg: AutointerpConfig) -> list[str]:
    """The scorer ids every explained feature should get (each kind, and its baseline unless none)."""
    bases = (False, True) if cfg.scorer.baseline != "none" else (False,)
    return [scorer_id(cfg, kind, b) for kind in cfg.scorer.kinds for b in bases]


def job_pool(cfg: AutointerpConfig, store: Store, keys: Sequence[Key]) -> list[Window]:
    """Non-activating candidates: the windows of a seeded sample of ``negative_pool_features`` features."""
    rng = random.Random(cfg.scorer.seed)
    pool_keys = rng.sample(list(keys), min(len(keys), cfg.negative_pool_features))
    return negative_pool(
        (d for k in pool_keys if (d := store.get_feature(cfg.dictionary_id, *k)) is not None),
        cfg.window_tokens,
    )


def _other_explanations(cfg: AutointerpConfig, store: Store, key: Key, most: int = 256) -> dict[Key, str]:
    """Up to ``most`` ok explanations of other features of the dictionary (baseline candidates)."""
    texts: dict[Key, str] = {}
    if cfg.scorer.baseline != "other_feature":
        return texts
    for d in store.iter_explanations(cfg.dictionary_id, explainer_id(cfg), fields=["status", "explanation"]):
        k = (d["hook"], d["index"])
        if k != key and d.get("status", "ok") == "ok" and d.get("explanation"):
            texts[k] = d["explanation"]
        if len(texts) >= most:
            break
    return texts


async def explain_and_score(
    cfg: AutointerpConfig, store: Store, key: Key, pool: Sequence[Window]
) -> tuple[dict[str, Any], list[dict[str, Any]], Usage]:
    """Explain one feature, then score the explanation beside its baseline (another stored explanation
    of the dictionary for ``other_feature``, seeded; random words when there is none); everything is
    upserted as in the job. Returns (explanation fields, score fields, usage). The serve endpoint's call."""
    client = ChatClient(cfg.endpoint)
    ctx = Context(cfg, store, client, pool)
    try:
        explained = await explain_feature(ctx, *key)
        if explained["status"] != "ok":
            return explained, [], client.usage
        texts = await asyncio.to_thread(_other_explanations, cfg, store, key)
        partners = {}
        if texts:
            others = sorted(texts)
            partners[key] = others[random.Random(feature_seed(cfg.scorer.seed, *key)).randrange(len(others))]
        todo = wanted_scorers(cfg)
        baseline = _baseline(cfg, key, partners, texts, pool)
        scores = await score_feature(ctx, *key, explained["explanation"], baseline, todo)
    finally:
        await client.aclose()
    return explained, scores, client.usage


def _baseline(
    cfg: AutointerpConfig, key: Key, partners: dict[Key, Key], texts: dict[Key, str], pool: Sequence[Window]
) -> tuple[str, str | None, int | None] | None:
    kind = cfg.scorer.baseline
    if kind == "none":
        return None
    if kind == "other_feature" and key in partners:
        other = partners[key]
        return texts[other], other[0], other[1]
    # random words: asked for, or no other explanation in the job (a one-feature job)
    return random_words(pool, random.Random(feature_seed(cfg.scorer.seed, *key))), None, None


async def _work(ctx: Context, step: str, key: Key, arg: dict[str, Any] | None) -> Any:
    if step == "explain":
        return await explain_feature(ctx, *key)
    assert arg is not None
    return await score_feature(ctx, *key, arg["explanation"], arg["baseline"], arg["todo"])


async def run_items(
    cfg: AutointerpConfig,
    store: Store,
    step: str,
    items: Sequence[tuple[Key, dict[str, Any] | None]],
    pool: Sequence[Window],
    share: float = 1.0,
    on_done: Callable[[Any, ChatClient, int], None] | None = None,
) -> tuple[list[Any], Usage]:
    """Run ``step`` over ``items`` in this event loop, ``features_in_flight`` at a time."""
    client = ChatClient(cfg.endpoint, share=share)
    ctx = Context(cfg, store, client, pool)
    sem = asyncio.Semaphore(cfg.features_in_flight)
    active = 0

    async def one(key: Key, arg: dict[str, Any] | None) -> Any:
        nonlocal active
        async with sem:
            active += 1
            try:
                out = await _work(ctx, step, key, arg)
            finally:
                active -= 1
        if on_done is not None:
            on_done(out, client, active)
        return out

    try:
        outs = await asyncio.gather(*(one(k, a) for k, a in items))
    finally:
        await client.aclose()
    return list(outs), client.usage


def _chunk_task(
    cfg: AutointerpConfig, uri: str, db: str, step: str, items: list, pool: list, share: float
) -> tuple:
    """Body of one Ray task: its own store connection, client and event loop. ``cfg`` travels pickled,
    not as JSON: JSON shows the API key as ``**********``, which the task would then send."""
    with Store(cfg.store, uri=uri, db=db) as store:
        outs, usage = asyncio.run(run_items(cfg, store, step, [(tuple(k), a) for k, a in items], pool, share))
    return outs, usage


def _execute(
    cfg: AutointerpConfig,
    store: Store,
    step: str,
    items: Sequence[tuple[Key, dict[str, Any] | None]],
    pool: Sequence[Window],
    usage: Usage,
    progress: bool,
) -> Iterable[Any]:
    """Yield each item's result as it finishes (order not kept), with a progress bar."""
    if not items:
        return
    bar = tqdm(total=len(items), unit="feat", desc=step, disable=not progress, dynamic_ncols=True)
    try:
        if not cfg.use_ray:
            results: list[Any] = []

            def done(out: Any, client: ChatClient, active: int) -> None:
                bar.update(1)
                bar.set_postfix(in_flight=active, tokens=client.usage.tokens, refresh=False)

            outs, used = asyncio.run(run_items(cfg, store, step, items, pool, 1.0, done))
            usage.add(used)
            results.extend(outs)
            yield from results
            return
        yield from _execute_ray(cfg, store, step, items, pool, usage, bar)
    finally:
        bar.close()


def _execute_ray(cfg, store, step, items, pool, usage: Usage, bar) -> Iterable[Any]:  # type: ignore[no-untyped-def]
    import ray

    from raysae.ray_session import ensure_ray

    ensure_ray()
    task = ray.remote(num_cpus=0.25, max_retries=1)(_chunk_task)
    workers = min(cfg.ray_workers, -(-len(items) // CHUNK))
    share = 1.0 / workers
    cfg_ref, pool_ref = ray.put(cfg), ray.put(list(pool))
    uri, db = store.uri, store.db_name
    chunks = [list(items[i : i + CHUNK]) for i in range(0, len(items), CHUNK)]
    pending: dict[Any, int] = {}
    while chunks or pending:
        while chunks and len(pending) < workers:
            chunk = chunks.pop(0)
            pending[task.remote(cfg_ref, uri, db, step, chunk, pool_ref, share)] = len(chunk)
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            n = pending.pop(ref)
            outs, used = ray.get(ref)
            usage.add(used)
            bar.update(n)
            bar.set_postfix(in_flight=sum(pending.values()), tokens=usage.tokens, refresh=False)
            yield from outs


__all__ = ["AutointerpError", "AutointerpResult", "job_features", "pair_baselines", "run_autointerp"]
