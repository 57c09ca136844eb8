"""Fixtures of the fault drills: the activation cache that the model-actor drill writes (the training
drills read it), the uninterrupted training run they compare with, and SmolLM2 for the analysis drill.
Every drill runs once per session; its test checks the figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The toy dictionary of the autointerp tests (autointerp_data), for the store and Serve drills.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autointerp"))
from data_drills import model_actor_drill
from drill_kit import DrillResult
from train_drills import reference_run


@pytest.fixture(scope="session")
def actor_drill(ray_session: None, tmp_root: Path) -> tuple[DrillResult, Path]:
    """The model-actor drill's figures and the cache it wrote."""
    folder = tmp_root / "drill-cache"
    return model_actor_drill(folder), folder


@pytest.fixture(scope="session")
def drill_cache(actor_drill: tuple[DrillResult, Path]) -> Path:
    result, folder = actor_drill
    if not (result.completed and result.same_as_uninterrupted):
        pytest.fail(f"the model-actor drill left a broken cache: {result}")
    return folder


@pytest.fixture(scope="session")
def reference_dictionary(drill_cache: Path, tmp_root: Path) -> Path:
    """The exported dictionary of the uninterrupted training run."""
    return reference_run(drill_cache, tmp_root / "drill-train").dictionary_path


@pytest.fixture(scope="session")
def drill_lm():
    """The bundled model in fp32 on CPU."""
    from raysae.config.data import ModelConfig
    from raysae.lm.model import LanguageModel

    return LanguageModel.from_config(ModelConfig(device="cpu"))
