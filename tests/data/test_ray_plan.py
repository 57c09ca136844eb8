"""The pipeline's Ray Data plan unpickles without torch or transformers; its map-class stand-in."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from ray import cloudpickle

from raysae.config.data import ActivationsConfig
from raysae.data.ray_plan import Replica, replica_class


class Doubler:
    """A map class for the stand-in test (importable by path from this test module)."""

    def __init__(self, factor: int = 2):
        self.factor = factor

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"x": batch["x"] * self.factor}


def test_replica_class_is_named_like_its_target_and_pickles_without_it():
    cls = replica_class(Doubler)
    assert cls.__name__ == "Doubler" and issubclass(cls, Replica)
    assert cls.target == f"{__name__}:Doubler"
    blob = cloudpickle.dumps(cls)
    assert b"Doubler" in blob and b"__call__" not in blob  # by value, methods inherited from Replica
    replica = pickle.loads(blob)(factor=3)
    assert isinstance(replica.impl, Doubler)
    np.testing.assert_array_equal(replica({"x": np.arange(3)})["x"], [0, 3, 6])


def test_replica_sets_its_env_before_building_the_target(monkeypatch):
    monkeypatch.delenv("RAYSAE_TEST_REPLICA_ENV", raising=False)
    cls = replica_class(f"{__name__}:Doubler", {"RAYSAE_TEST_REPLICA_ENV": "4"})
    assert cls.__name__ == "Doubler" and cls.target == f"{__name__}:Doubler"
    cls(factor=2)
    assert os.environ["RAYSAE_TEST_REPLICA_ENV"] == "4"
    monkeypatch.delenv("RAYSAE_TEST_REPLICA_ENV")


def test_bad_target_names_the_class_path():
    cls = type("Missing", (Replica,), {"target": "raysae.data.no_such_module:Missing"})
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        cls()


@pytest.mark.slow
def test_pipeline_plan_unpickles_without_torch_or_transformers(ray_session, tmp_path):
    """Ray Train's DatasetManager, SplitCoordinator and workers each unpickle the plan; importing torch
    and transformers there cost 3 s of CPU apiece before the first model replica started."""
    from raysae.data.pipeline import activation_dataset

    cfg = ActivationsConfig.model_validate({"total_tokens": 512, "tokens": {"context_size": 64}})
    blob = tmp_path / "plan.pkl"
    blob.write_bytes(cloudpickle.dumps(activation_dataset(cfg)))
    check = (
        "import sys; from ray import cloudpickle; "
        f"ds = cloudpickle.loads(open({str(blob)!r}, 'rb').read()); "
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
        "assert not heavy, heavy; print(type(ds).__name__)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "Dataset"


def test_pipeline_driver_imports_neither_torch_nor_transformers():
    """A pipeline's driver only plans and iterates rows: torch and transformers cost it 3 s of CPU."""
    check = (
        "import sys; import raysae.data.pipeline, raysae.lm.bundled; "
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
