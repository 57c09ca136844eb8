"""The model-actor drill: SIGKILL the Ray Data actor that holds SmolLM2 while ``raysae cache``'s body
(``write_cache`` on Ray) streams activations. Ray Data restarts the actor and retries its tasks; the
cache must still hold every row of the token stream exactly once, in order.

Rows are identified by (window_id, doc_id, position), which the token stream alone determines, so
the expected rows come from the tokenizer (no model) and lost/duplicated rows are counted by identity.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
from drill_kit import Background, DrillResult, actor_pids, duplicates, signal_all, wait_for

from raysae.config.data import CacheJobConfig
from raysae.data.cache import write_cache
from raysae.data.manifest import read_manifest
from raysae.data.reader import ActivationCache
from raysae.data.tokens import token_windows
from raysae.lm.loader import load_tokenizer

HOOK = "blocks.1.hook_resid_post"
MODEL_ACTOR = "MapWorker"  # Ray Data's actor class for map_batches(ActivationExtractor)
Row = tuple[int, int, int, int]  # window_id, doc_id, position, token_id


def cache_job(folder: Path) -> CacheJobConfig:
    """2560 tokens of layer-1 residuals in 32-token windows, 4 windows per model call, ~5 shards. One
    replica: the kill takes the pool's only model actor, so the stream must wait for its restart (two
    replicas on 2 CPUs wrote every shard within a second of their start, before the drill could kill)."""
    return CacheJobConfig.model_validate(
        {
            "activations": {
                "hooks": [HOOK],
                "total_tokens": 64 * 40,
                "batch_windows": 4,
                "tokens": {"context_size": 32},
                "resources": {"replicas": 1},
            },
            "cache": {"dir": str(folder), "shard_rows": 512},
        }
    )


def expected_rows(job: CacheJobConfig) -> list[Row]:
    """The rows the cache must hold, in order, from the token stream alone."""
    acts = job.activations
    tokenizer = load_tokenizer(acts.model)
    rows: list[Row] = []
    for wb in token_windows(acts.text, acts.tokens, tokenizer, acts.batch_windows, acts.total_tokens):
        keep = wb.keep.reshape(-1)
        windows = np.repeat(wb.window_ids, wb.tokens.shape[1])[keep]
        columns = (
            windows,
            wb.doc_ids.reshape(-1)[keep],
            wb.positions.reshape(-1)[keep],
            wb.tokens.reshape(-1)[keep],
        )
        rows.extend(zip(*(c.tolist() for c in columns), strict=True))
    return rows


def cached_rows(folder: Path) -> list[Row]:
    """The rows of a cache, shard by shard (checksums verified)."""
    cache = ActivationCache(folder)
    rows: list[Row] = []
    for i in range(len(read_manifest(folder).shards)):
        shard = cache.load_shard(i)
        columns = [shard[c].tolist() for c in ("window_id", "doc_id", "position", "token_id")]
        rows.extend(zip(*columns, strict=True))
    return rows


def _shards(folder: Path) -> int:
    try:
        return len(read_manifest(folder).shards)
    except Exception:  # not written yet
        return 0


def model_actor_drill(folder: Path) -> DrillResult:
    """Kill the model replica once the first shard is committed; figures by row identity."""
    job = cache_job(folder)
    run = Background(lambda: write_cache(job, use_ray=True, progress=False))
    wait_for(lambda: run.done or _shards(folder) >= 1, 600, "the first committed shard", 0.02)
    assert not run.done, f"the cache was written before the kill: {run.error}"
    killed = actor_pids(MODEL_ACTOR)
    assert killed, "no model actor to kill"
    committed = _shards(folder)
    signal_all(killed[:1], signal.SIGKILL)
    t_kill = time.monotonic()
    wait_for(lambda: run.done or _shards(folder) > committed, 600, "a shard after the kill", 0.02)
    recovery_s = time.monotonic() - t_kill
    run.join(600)
    if run.error is not None:
        raise run.error
    got, want = cached_rows(folder), expected_rows(job)
    manifest = read_manifest(folder)
    return DrillResult(
        drill="model actor",
        killed=f"Ray Data model actor (pid {killed[0]})",
        when=f"after shard {committed} of {len(manifest.shards)}",
        completed=manifest.complete and manifest.rows == len(want),
        unit="rows",
        lost=len(set(want) - set(got)),
        duplicated=duplicates(got),
        replayed=None,
        recovery_s=recovery_s,
        failures=1,  # the dead actor's tasks, retried on its replacement
        notes=f"{len(got)} of {len(want)} rows, {'in' if got == want else 'NOT in'} token-stream order; "
        "recovery: kill to the next committed shard",
        same_as_uninterrupted=got == want,
    )
