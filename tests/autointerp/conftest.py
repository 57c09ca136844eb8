"""Fixtures of the autointerp tests: the fake OpenAI server, a filled store, a job config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from autointerp_data import DICT_ID, fill
from fake_openai import FakeServer, FakeState

from raysae.config.autointerp import AutointerpConfig


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """A fresh deterministic OpenAI-protocol server on 127.0.0.1."""
    with FakeServer(FakeState()) as server:
        yield server


@pytest.fixture
def toy_store(store):
    """The shared test store's fresh database with the toy dictionary of autointerp_data."""
    fill(store)
    return store


@pytest.fixture
def make_cfg(fake: FakeServer, toy_store, tmp_path: Path):
    """A job config against ``fake`` and ``toy_store`` (in-process; overrides by keyword)."""

    def make(**over) -> AutointerpConfig:
        endpoint = {
            "base_url": fake.url,
            "model": "fake-model",
            "api_key": "sk-test-SECRET-123",
            "retries": 3,
            "backoff_s": 0.01,
            "timeout_s": 2.0,
            "cache_dir": str(tmp_path / "cache"),
            **over.pop("endpoint", {}),
        }
        data = {
            "dictionary_id": DICT_ID,
            "use_ray": False,
            "endpoint": endpoint,
            "scorer": {"n_activating": 8, "n_non_activating": 8, **over.pop("scorer", {})},
            "store": {"uri": toy_store.uri, "db": toy_store.db_name},
            **over,
        }
        return AutointerpConfig.model_validate(data)

    return make
