"""A Ray Train worker, then the ``raysae train`` driver, killed mid-run: the run resumes from its latest
checkpoint, replays only the steps past it, and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import pytest
from drill_kit import table
from train_drills import CHECKPOINT_EVERY, driver_drill, streaming_actor_drill, worker_drill

pytestmark = pytest.mark.slow


def _check(result) -> None:
    print(table([result]))
    assert result.completed, result
    assert (result.lost, result.duplicated) == (0, 0), result  # every step once in the history
    assert result.same_as_uninterrupted, result
    # resumed from the latest checkpoint before the step the killed attempt reached: an older one
    # would replay a whole checkpoint interval or more
    assert result.replayed is not None and 0 <= result.replayed < CHECKPOINT_EVERY, result


def test_killed_worker_resumes_from_its_checkpoint(ray_session, drill_cache, reference_dictionary, tmp_path):
    _check(worker_drill(drill_cache, tmp_path, reference_dictionary))


def test_killed_driver_rerun_resumes(ray_session, drill_cache, reference_dictionary, tmp_path):
    import ray

    address = ray.get_runtime_context().gcs_address
    _check(driver_drill(drill_cache, tmp_path, reference_dictionary, address))


def test_killed_model_actor_during_streaming_training(ray_session, tmp_path):
    result = streaming_actor_drill(tmp_path)
    print(table([result]))
    assert result.completed, result
    assert (result.lost, result.duplicated) == (0, 0), result
    assert result.recovery_s is not None, result
