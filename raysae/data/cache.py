"""Write an activation cache: shards of whole windows plus a manifest, resumable after a kill.

Each shard is serialised in memory, hashed, written to ``*.tmp``, fsynced and renamed; only then is
the manifest (itself written atomically) extended. A killed job therefore leaves complete shards and
a manifest listing a prefix of them; re-running the same settings deletes leftovers and continues at
the first window not in a listed shard (the token stream is deterministic).
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_save

from raysae.config.data import CacheJobConfig
from raysae.data.manifest import (
    MANIFEST,
    SHARDS,
    CacheError,
    CacheMismatchError,
    Manifest,
    ShardInfo,
    read_manifest,
    read_shard_bytes,
    shard_name,
    write_manifest,
)
from raysae.data.resources import ResourcePlan
from raysae.data.sources import check_source
from raysae.files import atomic_write_bytes, sha256_bytes
from raysae.lm.loader import DTYPES

log = logging.getLogger(__name__)
SIGNATURE_EXCLUDE = {"resources": True, "batch_windows": True}


def cache_settings(job: CacheJobConfig) -> dict[str, Any]:
    """The settings that determine a cache's contents (compared on resume)."""
    settings = job.activations.model_dump(mode="json", exclude=SIGNATURE_EXCLUDE)
    settings["model"].pop("device", None)
    settings["model"].pop("num_threads", None)
    settings["cache_dtype"] = job.cache.dtype or job.activations.model.dtype
    return settings


def check_compatible(manifest: Manifest, settings: dict[str, Any], where: str) -> None:
    """Raise ``CacheMismatchError`` naming every setting that differs from the manifest's."""
    diffs = _diff(manifest.settings, settings)
    if diffs:
        raise CacheMismatchError(
            f"{where}: the cache was written with other settings: "
            + "; ".join(f"{k}: cache has {a!r}, requested {b!r}" for k, a, b in diffs)
            + ". Use another cache.dir, or delete this one"
        )


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def write_cache(
    job: CacheJobConfig,
    plan: ResourcePlan | None = None,
    use_ray: bool = True,
    progress: bool = True,
    on_shard: Callable[[ShardInfo], None] | None = None,
) -> Manifest:
    """Compute the activations of ``job.activations`` and store them in ``job.cache.dir``.

    ``use_ray`` runs the Ray Data pipeline (Ray must be initialised); otherwise one in-process model.
    Returns the final manifest. ``on_shard`` is called after each shard is committed.
    """
    check_source(job.activations.text)
    folder = Path(job.cache.dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheError(f"{folder}: another process is writing this cache") from None
        return _write_locked(folder, job, plan, use_ray, progress, on_shard)


def _write_locked(
    folder: Path,
    job: CacheJobConfig,
    plan: ResourcePlan | None,
    use_ray: bool,
    progress: bool,
    on_shard: Callable[[ShardInfo], None] | None,
) -> Manifest:
    acts, cache = job.activations, job.cache
    settings = cache_settings(job)
    manifest = _open_or_create(folder, job, settings)
    if manifest.complete:
        log.info("%s: cache already complete (%d rows)", folder, manifest.rows)
        return manifest
    _remove_leftovers(folder, manifest)
    skip = manifest.next_window
    remaining = None if acts.total_tokens is None else acts.total_tokens - manifest.rows
    if skip:
        log.info("%s: resuming at window %d (%d rows already cached)", folder, skip, manifest.rows)
    chunks = _row_chunks(job, plan, use_ray, progress, skip, remaining)
    out_dtype = DTYPES[settings["cache_dtype"]]
    for rows in _cut_shards(chunks, cache.shard_rows, acts.hooks):
        info = _write_shard(folder, len(manifest.shards), rows, acts.hooks, out_dtype)
        manifest.d_model = int(rows[acts.hooks[0]].shape[1])
        manifest.shards.append(info)
        write_manifest(folder, manifest)
        if on_shard is not None:
            on_shard(info)
    manifest.complete = True
    write_manifest(folder, manifest)
    return manifest


def _open_or_create(folder: Path, job: CacheJobConfig, settings: dict[str, Any]) -> Manifest:
    if (folder / MANIFEST).is_file():
        if not job.cache.resume:
            raise CacheError(f"{folder}: a cache exists and resume is off; delete it or pick another dir")
        manifest = read_manifest(folder)
        check_compatible(manifest, settings, str(folder / MANIFEST))
        for i, shard in enumerate(manifest.shards):  # listed shards were fsynced before listing
            read_shard_bytes(folder, shard, verify=i == len(manifest.shards) - 1)
        return manifest
    if any(p.name not in (SHARDS, ".lock") and not _manifest_temp(p) for p in folder.iterdir()):
        raise CacheError(f"{folder}: exists, is not empty and has no manifest; pick an empty or new dir")
    (folder / SHARDS).mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        model=job.activations.model.name,
        hooks=list(job.activations.hooks),
        d_model=0,
        dtype=settings["cache_dtype"],
        context_size=job.activations.tokens.context_size,
        settings=settings,
        shards=[],
        complete=False,
    )
    write_manifest(folder, manifest)
    return manifest


def _manifest_temp(path: Path) -> bool:
    """A temporary manifest that a killed ``atomic_write_json`` left behind."""
    return path.name.startswith(f".{MANIFEST}.")


def _remove_leftovers(folder: Path, manifest: Manifest) -> None:
    """Delete temporary files and shards that a killed run wrote but never listed."""
    for path in folder.iterdir():
        if _manifest_temp(path):
            path.unlink()
    listed = {s.file for s in manifest.shards}
    for path in (folder / SHARDS).iterdir():
        if f"{SHARDS}/{path.name}" not in listed:
            log.info("removing leftover %s", path)
            path.unlink()


def _row_chunks(
    job: CacheJobConfig,
    plan: ResourcePlan | None,
    use_ray: bool,
    progress: bool,
    skip: int,
    remaining: int | None,
) -> Iterator[dict[str, np.ndarray]]:
    acts = job.activations
    if use_ray:
        from raysae.data.pipeline import activation_dataset, iter_row_chunks

        ds = activation_dataset(acts, plan, skip_windows=skip, preserve_order=True)
        return iter_row_chunks(ds, progress=progress, total=remaining)
    from tqdm.auto import tqdm

    from raysae.data.extract import ActivationSource, activation_rows

    source = ActivationSource(acts)

    def run() -> Iterator[dict[str, np.ndarray]]:
        with tqdm(total=remaining, unit="tok", desc="activations", disable=not progress) as bar:
            for item in source.windows(skip_windows=skip):
                rows = activation_rows(item.windows, item.acts)
                bar.update(len(rows["token_id"]))
                yield rows

    return run()


def _cut_shards(
    chunks: Iterable[dict[str, np.ndarray]], shard_rows: int, hooks: list[str]
) -> Iterator[dict[str, np.ndarray]]:
    """Group row chunks into shards of at least ``shard_rows`` rows, cut only between windows."""
    columns = [*hooks, "token_id", "doc_id", "position", "window_id"]
    pending: list[dict[str, np.ndarray]] = []
    n = 0
    for chunk in chunks:
        pending.append({c: chunk[c] for c in columns})
        n += len(chunk["window_id"])
        while n > shard_rows:
            rows = {c: np.concatenate([p[c] for p in pending]) for c in columns}
            wid = rows["window_id"]
            boundary = np.flatnonzero(wid[shard_rows:] != wid[shard_rows - 1 : -1])
            if boundary.size == 0:  # the window at the cut may go on in the next chunk
                pending = [rows]
                break
            cut = shard_rows + int(boundary[0])
            yield {c: v[:cut] for c, v in rows.items()}
            pending = [{c: v[cut:] for c, v in rows.items()}]
            n -= cut
    if n:
        yield {c: np.concatenate([p[c] for p in pending]) for c in columns}


def _write_shard(
    folder: Path, index: int, rows: dict[str, np.ndarray], hooks: list[str], dtype: torch.dtype
) -> ShardInfo:
    tensors = {}
    for c, v in rows.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        tensors[c] = t.to(dtype) if c in hooks else t.to(torch.int64)
    data = safetensors_save(tensors, metadata={"format": "raysae-activations"})  # one key: stable bytes
    name = shard_name(index)
    atomic_write_bytes(folder / name, data)
    wid = rows["window_id"]
    return ShardInfo(
        file=name,
        rows=len(wid),
        bytes=len(data),
        sha256=sha256_bytes(data),
        first_window=int(wid[0]),
        last_window=int(wid[-1]),
    )
