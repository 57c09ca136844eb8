"""A FeatureAPI replica killed under load: Serve replaces it and every request after that succeeds."""

from __future__ import annotations

import pytest
from drill_kit import table
from serve_drills import CLIENTS, serve_drill

pytestmark = pytest.mark.slow


def test_killed_replica_is_replaced_under_load(ray_session, tmp_path):
    result = serve_drill(tmp_path, replicas=2)
    print(table([result]))
    assert result.completed, result  # no failure before the kill, none after the replacement
    assert result.recovery_s is not None and result.recovery_s < 60, result
    assert result.failures <= CLIENTS, result  # at most the requests in flight on the dead replica
