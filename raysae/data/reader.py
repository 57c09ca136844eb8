"""Read an activation cache: a plain iterator of torch batches, or a Ray Dataset of rows.

Opening a cache validates the manifest and checks every listed shard's size and row count (from its
safetensors header), so ``rows`` is what will be read. Every shard is checked against the manifest when read (size, and sha256 unless ``verify=False``); a
missing or corrupt shard raises ``CacheCorruptError`` naming the file, and requesting hooks the cache
does not hold raises ``CacheMismatchError`` naming them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from torch import Tensor

from raysae.data.batching import META_COLUMNS, rebatch
from raysae.data.manifest import (
    CacheCorruptError,
    CacheMismatchError,
    Manifest,
    check_shard_file,
    read_manifest,
    read_shard_bytes,
)


class ActivationCache:
    """An activation cache folder written by ``write_cache`` (``raysae cache``)."""

    def __init__(self, path: str | Path, hooks: Sequence[str] | None = None, verify: bool = True):
        self.path = Path(path).expanduser()
        self.manifest: Manifest = read_manifest(self.path)
        for shard in self.manifest.shards:  # size and rows from the headers: the counts are trusted
            check_shard_file(self.path, shard)
        self.hooks = self._select(hooks)
        self.verify = verify

    def _select(self, hooks: Sequence[str] | None) -> list[str]:
        if hooks is None:
            return list(self.manifest.hooks)
        missing = [h for h in hooks if h not in self.manifest.hooks]
        if missing:
            raise CacheMismatchError(
                f"{self.path / 'manifest.json'}: no activations for hook(s) {missing}; "
                f"the cache holds {self.manifest.hooks}"
            )
        return list(hooks)

    @property
    def rows(self) -> int:
        """Activation rows (tokens) in the cache."""
        return self.manifest.rows

    @property
    def d_model(self) -> int:
        return self.manifest.d_model

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    def load_shard(
        self, index: int, hooks: Sequence[str] | None = None, dtype: torch.dtype | None = torch.float32
    ) -> dict[str, Tensor]:
        """Columns of one shard: hooks [rows, d] (cast to ``dtype`` unless None) and the metadata."""
        shard = self.manifest.shards[index]
        data = read_shard_bytes(self.path, shard, verify=self.verify)
        try:
            tensors = safetensors_load(data)
        except (SafetensorError, ValueError) as err:
            raise CacheCorruptError(f"{self.path / shard.file}: cannot parse: {err}") from err
        out = {}
        for col in [*(hooks or self.hooks), *META_COLUMNS]:
            if col not in tensors:
                raise CacheCorruptError(f"{self.path / shard.file}: no tensor {col!r}")
            t = tensors[col]
            out[col] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out

    def check(self) -> None:
        """Verify every shard (size and sha256) and that the cache is complete."""
        if not self.manifest.complete:
            raise CacheCorruptError(f"{self.path}: incomplete cache (the writer stopped; run it again)")
        for shard in self.manifest.shards:
            read_shard_bytes(self.path, shard, verify=True)

    def shard_order(self, shuffle: bool, seed: int) -> list[int]:
        order = list(range(len(self.manifest.shards)))
        if shuffle:
            random.Random(seed).shuffle(order)
        return order

    def iter_rows(
        self, shuffle: bool = False, seed: int = 0, mix_shards: int = 2, prefetch: int = 1
    ) -> Iterator[dict[str, Tensor]]:
        """Row chunks (one per shard, or per group of ``mix_shards`` shards when shuffling), read ahead
        by ``prefetch`` background threads. Shuffling permutes shards and the rows inside each group."""
        order = self.shard_order(shuffle, seed)
        groups = [order[i : i + mix_shards] for i in range(0, len(order), mix_shards)] if shuffle else []
        groups = groups or [[i] for i in order]
        gen = torch.Generator().manual_seed(seed)
        with ThreadPoolExecutor(max_workers=max(1, prefetch)) as pool:
            futures = [pool.submit(self._load_group, g) for g in groups[: prefetch + 1]]
            for k in range(len(groups)):
                chunk = futures[k].result()
                if k + prefetch + 1 < len(groups):
                    futures.append(pool.submit(self._load_group, groups[k + prefetch + 1]))
                futures[k] = None  # type: ignore[call-overload]
                if shuffle:
                    perm = torch.randperm(len(chunk["token_id"]), generator=gen)
                    chunk = {c: v[perm] for c, v in chunk.items()}
                yield chunk

    def _load_group(self, indices: list[int]) -> dict[str, Tensor]:
        parts = [self.load_shard(i) for i in indices]
        if len(parts) == 1:
            return parts[0]
        return {c: torch.cat([p[c] for p in parts]) for c in parts[0]}

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        meta: bool = False,
        device: str | None = None,
        mix_shards: int = 2,
    ) -> Iterator[dict[str, Tensor]]:
        """Training batches {hook: float32 [batch_size, d]} (plus metadata columns when ``meta``)."""
        chunks = self.iter_rows(shuffle=shuffle, seed=seed, mix_shards=mix_shards)
        return rebatch(chunks, batch_size, self.hooks, drop_last=drop_last, meta=meta, device=device)

    def dataset(self, shuffle: bool = False, seed: int = 0, block_rows: int = 8192):
        """A Ray Dataset of rows (float32 hook columns, int64 metadata); one read task per shard.
        Shuffling randomises the shard order and the rows within each shard (seeded)."""
        import ray

        from raysae.data.cache_datasource import CacheDatasource

        source = CacheDatasource(self, shuffle=shuffle, seed=seed, block_rows=block_rows)
        return ray.data.read_datasource(source, override_num_blocks=max(1, len(self.manifest.shards)))

    def numpy_rows(self, index: int, shuffle: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
        """One shard as numpy columns (for Ray blocks), rows permuted with ``seed + index`` when shuffling."""
        cols = {c: v.numpy() for c, v in self.load_shard(index).items()}
        if shuffle:
            perm = np.random.default_rng(seed + index).permutation(len(cols["token_id"]))
            cols = {c: v[perm] for c, v in cols.items()}
        return cols
