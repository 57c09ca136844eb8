"""The activation cache's manifest and shard files: what is in a cache and how to check it.

Layout of a cache folder::

    manifest.json                     what was computed (model, hooks, dtype, context size, token
                                      counts, the settings) and every shard with rows, bytes, sha256
    shards/shard-000000.safetensors   one tensor per hook [rows, d] plus token_id, doc_id, position,
                                      window_id (int64 [rows]); whole windows, in window order

Shards are safetensors: on a 32768-row, two-hook shard (152 MB) it wrote in 0.14 s and read in 0.12 s,
Parquet took 0.68 s / 1.09 s uncompressed and 0.95 s / 0.82 s with zstd for 7 % less space
(benchmarks/activations.py measures it again).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SHARDS = "shards"
FORMAT = "raysae-activations"
VERSION = 1


class CacheError(RuntimeError):
    """An activation cache that cannot be used; the message names the file."""


class CacheCorruptError(CacheError):
    """A shard is missing, has the wrong size or checksum, or cannot be parsed."""


class CacheMismatchError(CacheError):
    """The cache holds other activations than requested (hooks, model, text, tokens, dtype)."""


@dataclass
class ShardInfo:
    """One shard: file (relative to the cache folder), rows, bytes, sha256 and its windows."""

    file: str
    rows: int
    bytes: int
    sha256: str
    first_window: int
    last_window: int


@dataclass
class Manifest:
    """Contents of manifest.json."""

    model: str
    hooks: list[str]
    d_model: int
    dtype: str
    context_size: int
    settings: dict[str, Any]
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = False
    format: str = FORMAT
    version: int = VERSION

    @property
    def rows(self) -> int:
        """Activation rows (tokens) in all shards."""
        return sum(s.rows for s in self.shards)

    @property
    def next_window(self) -> int:
        """The first window not yet in a shard (where a resumed run starts)."""
        return self.shards[-1].last_window + 1 if self.shards else 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens"] = self.rows
        d["windows"] = self.next_window
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        d = dict(d)
        d.pop("tokens", None)
        d.pop("windows", None)
        d["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
        return cls(**d)


def read_manifest(folder: str | Path) -> Manifest:
    """Read ``folder/manifest.json``; errors name the file."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CacheError(f"{path}: no manifest; is {folder} an activation cache?")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise CacheError(f"{path}: not a raysae activation cache (format {data.get('format')!r})")
        if data.get("version") != VERSION:
            raise CacheError(f"{path}: cache version {data.get('version')}, this raysae reads {VERSION}")
        return Manifest.from_json(data)
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise CacheCorruptError(f"{path}: unreadable manifest: {err}") from err


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    """Write manifest.json atomically (temporary file, fsync, rename)."""
    path = Path(folder) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest.to_json(), fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def shard_name(index: int) -> str:
    return f"{SHARDS}/shard-{index:06d}.safetensors"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_shard_bytes(folder: str | Path, shard: ShardInfo, verify: bool = True) -> bytes:
    """The bytes of a shard, checked against the manifest (size always, sha256 when ``verify``)."""
    path = Path(folder) / shard.file
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CacheCorruptError(f"{path}: shard listed in the manifest is missing") from None
    if len(data) != shard.bytes:
        raise CacheCorruptError(f"{path}: {len(data)} bytes, the manifest says {shard.bytes} (truncated?)")
    if verify and sha256(data) != shard.sha256:
        raise CacheCorruptError(f"{path}: sha256 does not match the manifest (corrupt shard)")
    return data
