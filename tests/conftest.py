"""Shared fixtures: an isolated environment for Ray/W&B/raysae files and one Ray session for all tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Keep every file Ray, W&B and raysae write inside one temporary folder, before anything imports them.
_TMP = Path(tempfile.mkdtemp(prefix="raysae-tests-"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")
for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ.setdefault(var, str(_TMP / "wandb"))
# The model cache is shared across test runs (dequantising SmolLM2 takes ~30 s); everything else is fresh.
os.environ.setdefault("RAYSAE_HOME", str(Path.home() / ".cache" / "raysae"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    """The session's private temporary folder."""
    return _TMP


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance (2 CPUs, no dashboard) shared by every test that needs Ray."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(_TMP / "ray"),
        object_store_memory=512 * 1024**2,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
