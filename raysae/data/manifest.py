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

import json
import struct
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raysae.config.data import ModelDType
from raysae.errors import RaysaeError
from raysae.files import atomic_write_json, sha256_bytes

MANIFEST = "manifest.json"
SHARDS = "shards"
FORMAT = "raysae-activations"
VERSION = 1


class CacheError(RaysaeError, RuntimeError):
    """An activation cache that cannot be used; the message names the file."""


class CacheCorruptError(CacheError):
    """A manifest or shard is missing, malformed, has the wrong size, rows or checksum."""


class CacheMismatchError(CacheError):
    """The cache holds other activations than requested (hooks, model, text, tokens, dtype)."""


class ShardInfo(BaseModel):
    """One shard: file (``shards/NAME`` inside the cache folder), rows, bytes, sha256 and its windows."""

    model_config = ConfigDict(extra="forbid", strict=True)

    file: str
    rows: int = Field(gt=0)
    bytes: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    first_window: int = Field(ge=0)
    last_window: int = Field(ge=0)

    @field_validator("file")
    @classmethod
    def _inside_shards(cls, v: str) -> str:
        p = PurePosixPath(v)
        if "\\" in v or p.is_absolute() or len(p.parts) != 2 or p.parts[0] != SHARDS or p.name in ("..", "."):
            raise ValueError(f"shard path {v!r} is not {SHARDS}/NAME inside the cache folder")
        return v

    @model_validator(mode="after")
    def _windows(self) -> ShardInfo:
        if self.last_window < self.first_window:
            raise ValueError(
                f"{self.file}: last_window {self.last_window} < first_window {self.first_window}"
            )
        return self


class Manifest(BaseModel):
    """Contents of manifest.json (``tokens`` and ``windows`` are derived and written alongside)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    hooks: list[str] = Field(min_length=1)
    d_model: int = Field(ge=0)
    dtype: ModelDType
    context_size: int = Field(ge=2)
    settings: dict[str, Any]
    shards: list[ShardInfo]
    complete: bool
    format: Literal["raysae-activations"] = FORMAT
    version: Literal[1] = VERSION

    @model_validator(mode="after")
    def _ordered(self) -> Manifest:
        files = [s.file for s in self.shards]
        if len(set(files)) != len(files):
            raise ValueError("a shard file is listed twice")
        for a, b in zip(self.shards, self.shards[1:], strict=False):
            if b.first_window <= a.last_window:
                raise ValueError(f"{b.file}: windows overlap or go backwards after {a.file}")
        return self

    @property
    def rows(self) -> int:
        """Activation rows (tokens) in all shards."""
        return sum(s.rows for s in self.shards)

    @property
    def next_window(self) -> int:
        """The first window not yet in a shard (where a resumed run starts)."""
        return self.shards[-1].last_window + 1 if self.shards else 0

    def to_json(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d["tokens"] = self.rows
        d["windows"] = self.next_window
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        """Validate a manifest dict; derived ``tokens``/``windows`` must agree with the shards."""
        d = dict(d)
        tokens, windows = d.pop("tokens", None), d.pop("windows", None)
        m = cls.model_validate(d)
        if tokens is not None and tokens != m.rows:
            raise ValueError(f"tokens is {tokens!r} but the shards hold {m.rows} rows")
        if windows is not None and windows != m.next_window:
            raise ValueError(f"windows is {windows!r} but the shards end before window {m.next_window}")
        return m


def _one_line(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()
    )


def read_manifest(folder: str | Path) -> Manifest:
    """Read and validate ``folder/manifest.json``; errors name the file."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CacheError(f"{path}: no manifest; is {folder} an activation cache?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheCorruptError(f"{path}: unreadable manifest: {err}") from err
    if not isinstance(data, dict):
        raise CacheCorruptError(f"{path}: the manifest must be a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise CacheError(f"{path}: not a raysae activation cache (format {data.get('format')!r})")
    if data.get("version") != VERSION:
        raise CacheError(f"{path}: cache version {data.get('version')}, this raysae reads {VERSION}")
    try:
        return Manifest.from_json(data)
    except ValidationError as err:
        raise CacheCorruptError(f"{path}: invalid manifest: {_one_line(err)}") from None
    except ValueError as err:
        raise CacheCorruptError(f"{path}: invalid manifest: {err}") from None


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    """Write manifest.json atomically (temporary sibling, fsync, rename)."""
    atomic_write_json(Path(folder) / MANIFEST, manifest.to_json(), indent=1)


def shard_name(index: int) -> str:
    return f"{SHARDS}/shard-{index:06d}.safetensors"


def _shard_path(folder: str | Path, shard: ShardInfo) -> Path:
    return Path(folder) / shard.file


def shard_rows(path: Path, data: bytes | None = None) -> dict[str, int]:
    """Leading dimension of every tensor in a safetensors file, from its header (no tensor data read)."""
    try:
        if data is None:
            with open(path, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = fh.read(n) if n < 100 * 2**20 else b""
        else:
            (n,) = struct.unpack("<Q", data[:8])
            header = data[8 : 8 + n]
        meta = json.loads(header)
        return {k: int(v["shape"][0]) for k, v in meta.items() if k != "__metadata__" and v.get("shape")}
    except FileNotFoundError:
        raise
    except (OSError, struct.error, ValueError, TypeError, KeyError, AttributeError) as err:
        raise CacheCorruptError(f"{path}: cannot parse the safetensors header: {err}") from None


def check_shard_rows(path: Path, shard: ShardInfo, rows: dict[str, int]) -> None:
    """Every column of the shard file must have the manifest's row count."""
    wrong = {k: n for k, n in rows.items() if n != shard.rows}
    if wrong or not rows:
        raise CacheCorruptError(
            f"{path}: the file holds {wrong or 'no'} rows per column, the manifest says {shard.rows}"
        )


def check_shard_file(folder: str | Path, shard: ShardInfo) -> None:
    """Cheap check of a listed shard against the manifest: it exists, has its size and row count."""
    path = _shard_path(folder, shard)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CacheCorruptError(f"{path}: shard listed in the manifest is missing") from None
    if size != shard.bytes:
        raise CacheCorruptError(f"{path}: {size} bytes, the manifest says {shard.bytes} (truncated?)")
    check_shard_rows(path, shard, shard_rows(path))


def read_shard_bytes(folder: str | Path, shard: ShardInfo, verify: bool = True) -> bytes:
    """The bytes of a shard, checked against the manifest (size and rows always, sha256 when ``verify``)."""
    path = _shard_path(folder, shard)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CacheCorruptError(f"{path}: shard listed in the manifest is missing") from None
    if len(data) != shard.bytes:
        raise CacheCorruptError(f"{path}: {len(data)} bytes, the manifest says {shard.bytes} (truncated?)")
    if verify and sha256_bytes(data) != shard.sha256:
        raise CacheCorruptError(f"{path}: sha256 does not match the manifest (corrupt shard)")
    check_shard_rows(path, shard, shard_rows(path, data))
    return data
