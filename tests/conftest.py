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


@pytest.fixture(scope="session")
def mongo_uri(tmp_root: Path) -> Iterator[str]:
    """URI of a real MongoDB for the whole session: $RAYSAE_TEST_MONGO_URI when set, else a secantusd-py
    server on a free port with its data in the session's temporary folder (skipped if not installed)."""
    external = os.environ.get("RAYSAE_TEST_MONGO_URI", "").strip()
    if external:
        yield external
        return
    from raysae.store import LocalStoreError, LocalStoreServer, find_server_executable

    try:
        find_server_executable()
    except LocalStoreError as err:
        pytest.skip(str(err))
    server = LocalStoreServer(tmp_root / "mongo")
    server.start(timeout=120)
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def store(mongo_uri: str) -> Iterator[object]:
    """A connected raysae.store.Store on a fresh, uniquely named database (dropped after the test)."""
    import uuid

    from raysae.store import Store, StoreConfig

    config = StoreConfig(uri=mongo_uri, db=f"test_{uuid.uuid4().hex[:20]}", retries=2, retry_backoff_s=0.2)
    s = Store.connect(config)
    try:
        yield s
    finally:
        s.client.drop_database(s.db_name)
        s.close()
