"""Cache manifests are validated, not trusted: shape, paths and row counts are cross-checked with the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from raysae.data.manifest import (
    MANIFEST,
    CacheCorruptError,
    Manifest,
    ShardInfo,
    check_shard_file,
    read_manifest,
    read_shard_bytes,
    shard_name,
    write_manifest,
)
from raysae.files import sha256_file

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A valid one-shard cache of 10 rows, written by hand."""
    folder = tmp_path / "c"
    (folder / "shards").mkdir(parents=True)
    shard = folder / shard_name(0)
    save_file({HOOK: torch.randn(10, 4), "token_id": torch.arange(10)}, str(shard))
    info = ShardInfo(
        file=shard_name(0),
        rows=10,
        bytes=shard.stat().st_size,
        sha256=sha256_file(shard),
        first_window=0,
        last_window=0,
    )
    manifest = Manifest(
        model="m", hooks=[HOOK], d_model=4, dtype="float32", context_size=11, settings={}, shards=[info],
        complete=True,
    )  # fmt: skip
    write_manifest(folder, manifest)
    return folder


def _edit(folder: Path, change) -> None:
    path = folder / MANIFEST
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def test_a_valid_manifest_reads_and_its_shard_checks(cache):
    m = read_manifest(cache)
    assert m.rows == 10 and m.complete
    check_shard_file(cache, m.shards[0])
    assert read_shard_bytes(cache, m.shards[0])


def test_a_list_manifest_is_a_clear_error(cache):
    (cache / MANIFEST).write_text("[1, 2]")
    with pytest.raises(CacheCorruptError, match="must be a JSON object, got list"):
        read_manifest(cache)


def test_a_missing_shards_key_is_not_an_empty_complete_cache(cache):
    _edit(cache, lambda d: {k: v for k, v in d.items() if k != "shards"})
    with pytest.raises(CacheCorruptError, match=r"manifest\.json: invalid manifest: shards: Field required"):
        read_manifest(cache)


@pytest.mark.parametrize("path", ["../elsewhere.safetensors", "shards/../../x.safetensors", "/etc/passwd"])
def test_shard_paths_outside_the_cache_are_refused(cache, path):
    def change(d):
        d["shards"][0]["file"] = path
        return d

    _edit(cache, change)
    with pytest.raises(CacheCorruptError, match="is not shards/NAME inside the cache folder"):
        read_manifest(cache)


def test_a_wrong_row_count_is_caught_against_the_file(cache):
    def change(d):
        d["shards"][0]["rows"] = 18
        d["tokens"] = 18
        return d

    _edit(cache, change)
    m = read_manifest(cache)  # self-consistent, so it parses...
    with pytest.raises(CacheCorruptError, match="the manifest says 18"):
        check_shard_file(cache, m.shards[0])  # ...but the file holds 10 rows


def test_derived_totals_must_agree_with_the_shards(cache):
    _edit(cache, lambda d: {**d, "tokens": 1868})
    with pytest.raises(CacheCorruptError, match="tokens is 1868 but the shards hold 10 rows"):
        read_manifest(cache)
