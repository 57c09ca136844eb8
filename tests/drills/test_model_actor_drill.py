"""A Ray Data model actor killed while ``write_cache`` streams: the cache holds every row once, in order."""

from __future__ import annotations

import pytest
from drill_kit import table

pytestmark = pytest.mark.slow


def test_cache_survives_a_killed_model_actor(actor_drill):
    result, _ = actor_drill
    print(table([result]))
    assert result.completed, result
    assert (result.lost, result.duplicated) == (0, 0), result
    assert result.same_as_uninterrupted, result  # every row, in token-stream order
