"""The activation cache: round trip, Ray write and read, resume after a kill, corruption and mismatch errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raysae.config.data import CacheJobConfig
from raysae.data.cache import write_cache
from raysae.data.extract import ActivationSource
from raysae.data.manifest import CacheCorruptError, CacheError, CacheMismatchError, read_manifest
from raysae.data.reader import ActivationCache

pytestmark = pytest.mark.slow
HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]
META = ["token_id", "doc_id", "position", "window_id"]


def make_job(folder: Path, **cache) -> CacheJobConfig:
    return CacheJobConfig.model_validate(
        {
            "activations": {
                "hooks": HOOKS,
                "total_tokens": 600,
                "batch_windows": 2,
                "tokens": {"context_size": 64, "seed": 1},
            },
            "cache": {"dir": str(folder), "shard_rows": 150, **cache},
        }
    )


@pytest.fixture(scope="module")
def reference(smollm) -> dict[str, np.ndarray]:
    """The rows computed directly in this process."""
    job = make_job(Path("unused"))
    chunks = list(ActivationSource(job.activations, lm=smollm).rows())
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache") / "acts"
    write_cache(make_job(folder), use_ray=False, progress=False)
    return folder


def all_rows(cache: ActivationCache, **kw) -> dict[str, torch.Tensor]:
    batches = list(cache.iter_batches(128, meta=True, **kw))
    assert all(len(b["token_id"]) == 128 for b in batches[:-1])
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_round_trip(written, reference):
    m = read_manifest(written)
    assert (m.model, m.hooks, m.d_model, m.dtype, m.context_size) == (
        "smollm2-135m-instruct",
        HOOKS,
        576,
        "float32",
        64,
    )
    assert m.complete and m.rows == 600
    on_disk = json.loads((written / "manifest.json").read_text())
    assert on_disk["tokens"] == 600 and on_disk["windows"] == m.next_window
    for a, b in zip(m.shards, m.shards[1:], strict=False):
        assert b.first_window == a.last_window + 1  # shards hold whole windows, in order
        assert a.rows >= 150
    for s in m.shards:
        assert (written / s.file).stat().st_size == s.bytes
    rows = all_rows(ActivationCache(written))
    for k in [*HOOKS, *META]:
        assert np.array_equal(rows[k].numpy(), reference[k]), k
    assert rows[HOOKS[0]].dtype == torch.float32 and rows["doc_id"].dtype == torch.int64


def test_shuffled_reading(written):
    cache = ActivationCache(written)
    plain = all_rows(cache)
    a = all_rows(cache, shuffle=True, seed=3)
    b = all_rows(cache, shuffle=True, seed=3)
    assert torch.equal(a[HOOKS[0]], b[HOOKS[0]])
    assert not torch.equal(a["window_id"], plain["window_id"])
    key = lambda r: np.lexsort((r["position"].numpy(), r["doc_id"].numpy(), r["window_id"].numpy()))  # noqa: E731
    ka, kp = key(a), key(plain)
    for k in [*HOOKS, *META]:
        assert torch.equal(a[k][ka], plain[k][kp]), k
    only = next(ActivationCache(written, hooks=[HOOKS[1]]).iter_batches(64))
    assert set(only) == {HOOKS[1]} and only[HOOKS[1]].shape == (64, 576)


def test_ray_write_and_dataset(ray_session, tmp_path, written):
    folder = tmp_path / "ray"
    m = write_cache(make_job(folder), use_ray=True, progress=False)
    ref = read_manifest(written)
    assert [(s.rows, s.first_window, s.last_window) for s in m.shards] == [
        (s.rows, s.first_window, s.last_window) for s in ref.shards
    ]
    ours, theirs = ActivationCache(folder), ActivationCache(written)
    for i in range(len(m.shards)):
        a, b = ours.load_shard(i), theirs.load_shard(i)
        for k in HOOKS:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-4)  # thread counts differ
        for k in META:
            assert torch.equal(a[k], b[k])
    ds = theirs.dataset(shuffle=True, seed=2)
    assert ds.count() == 600
    assert set(ds.schema().names) == {*HOOKS, *META}
    got = list(ds.iter_torch_batches(batch_size=200))
    rows = {k: torch.cat([g[k] for g in got]) for k in got[0]}
    order = np.lexsort((rows["position"].numpy(), rows["doc_id"].numpy(), rows["window_id"].numpy()))
    plain = all_rows(theirs)
    assert torch.equal(rows[HOOKS[1]][order], plain[HOOKS[1]])


KILL_AFTER_TWO_SHARDS = """
import json, os, signal, sys
from raysae.config.data import CacheJobConfig
from raysae.data.cache import write_cache
job = CacheJobConfig.model_validate(json.loads(sys.argv[1]))
done = []
def on_shard(info):
    done.append(info)
    if len(done) == 2:
        # die half-way through writing the third shard, without any cleanup
        open(os.path.join(job.cache.dir, "shards", "shard-000002.safetensors.tmp"), "wb").write(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
write_cache(job, use_ray=False, progress=False, on_shard=on_shard)
"""


def test_resume_after_kill(tmp_path, written):
    job = make_job(tmp_path / "killed")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_TWO_SHARDS, job.model_dump_json()], capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    m = read_manifest(job.cache.dir)
    assert len(m.shards) == 2 and not m.complete
    assert (Path(job.cache.dir) / "shards" / "shard-000002.safetensors.tmp").exists()
    with pytest.raises(CacheCorruptError, match="incomplete"):
        ActivationCache(job.cache.dir).check()

    resumed = write_cache(job, use_ray=False, progress=False)
    assert resumed.complete and resumed.rows == 600
    assert sorted(p.name for p in (Path(job.cache.dir) / "shards").iterdir()) == [
        f"shard-{i:06d}.safetensors" for i in range(len(resumed.shards))
    ]
    ref = read_manifest(written)
    assert [(s.rows, s.first_window) for s in resumed.shards] == [
        (s.rows, s.first_window) for s in ref.shards
    ]
    a, b = all_rows(ActivationCache(job.cache.dir)), all_rows(ActivationCache(written))
    for k in [*HOOKS, *META]:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    ActivationCache(job.cache.dir).check()


def test_corrupt_and_missing_shards(tmp_path, written):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(written, folder)
    shard = folder / "shards" / "shard-000001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match=r"shard-000001\.safetensors: sha256 does not match"):
        list(ActivationCache(folder).iter_batches(100))
    with pytest.raises(CacheCorruptError, match="shard-000001"):
        ActivationCache(folder).check()
    ActivationCache(folder, verify=False).load_shard(1)  # the checksum is what catches a flipped bit
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(CacheCorruptError, match=r"shard-000001\.safetensors: \d+ bytes, the manifest says"):
        ActivationCache(folder, verify=False).load_shard(1)
    shard.unlink()
    with pytest.raises(
        CacheCorruptError, match=r"shard-000001\.safetensors: shard listed in the manifest is missing"
    ):
        ActivationCache(folder).load_shard(1)
    # Resuming refuses a cache whose last listed shard is damaged.
    shutil.copy(written / "shards" / "shard-000001.safetensors", shard)
    m = read_manifest(folder)
    m.complete = False
    from raysae.data.manifest import write_manifest

    last = folder / m.shards[-1].file
    last.write_bytes(b"x" + last.read_bytes()[1:])
    write_manifest(folder, m)
    with pytest.raises(CacheCorruptError, match=m.shards[-1].file.split("/")[-1]):
        write_cache(make_job(folder), use_ray=False, progress=False)


def test_mismatch_errors(tmp_path, written):
    with pytest.raises(
        CacheMismatchError,
        match=r"manifest\.json: no activations for hook\(s\) \['blocks\.5\.hook_resid_post'\]",
    ):
        ActivationCache(written, hooks=["blocks.5.hook_resid_post", HOOKS[0]])
    other = make_job(written)
    other.activations.hooks = ["blocks.1.hook_resid_post"]
    with pytest.raises(CacheMismatchError, match=r"hooks: cache has .*blocks\.3\.hook_mlp_out"):
        write_cache(other, use_ray=False, progress=False)
    other = make_job(written)
    other.activations.tokens.context_size = 32
    with pytest.raises(CacheMismatchError, match=r"tokens\.context_size: cache has 64, requested 32"):
        write_cache(other, use_ray=False, progress=False)
    with pytest.raises(CacheError, match="resume is off"):
        write_cache(make_job(written, resume=False), use_ray=False, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not empty and has no manifest"):
        write_cache(make_job(tmp_path / "junk"), use_ray=False, progress=False)
    with pytest.raises(CacheError, match="no manifest"):
        ActivationCache(tmp_path / "junk")


def test_one_writer_at_a_time(written):
    import fcntl

    with open(written / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(CacheError, match="another process is writing this cache"):
            write_cache(make_job(written), use_ray=False, progress=False)


def test_complete_cache_is_not_rewritten(written):
    before = {p.name: p.stat().st_mtime_ns for p in (written / "shards").iterdir()}
    m = write_cache(make_job(written), use_ray=False, progress=False)
    assert m.complete
    assert before == {p.name: p.stat().st_mtime_ns for p in (written / "shards").iterdir()}


def test_bfloat16_storage(tmp_path, written):
    m = write_cache(make_job(tmp_path / "bf16", dtype="bfloat16"), use_ray=False, progress=False)
    assert m.dtype == "bfloat16"
    full = read_manifest(written)
    assert sum(s.bytes for s in m.shards) < 0.6 * sum(s.bytes for s in full.shards)
    a, b = all_rows(ActivationCache(tmp_path / "bf16")), all_rows(ActivationCache(written))
    assert a[HOOKS[0]].dtype == torch.float32
    torch.testing.assert_close(a[HOOKS[0]], b[HOOKS[0]], rtol=1e-2, atol=1e-2)
    assert os.path.exists(tmp_path / "bf16" / "manifest.json")
