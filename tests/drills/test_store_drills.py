"""The store killed and restarted in place mid-analysis and mid-autointerp: the jobs wait for it, and
the store ends with every expected document exactly once; and no acknowledged write dies with it."""

from __future__ import annotations

import pytest
from drill_kit import table
from store_drills import acknowledged_writes_drill, analysis_drill, autointerp_drill


def _check(result) -> None:
    print(table([result]))
    assert result.completed, result
    assert (result.lost, result.duplicated) == (0, 0), result
    assert result.replayed == 0, result  # the job waited: nothing re-run, no chat request repeated
    assert result.failures >= 1, result  # the outage outlasted a server selection: retries carried it


@pytest.mark.slow
def test_analysis_waits_for_a_restarted_store(drill_lm, tmp_path):
    _check(analysis_drill(tmp_path, drill_lm))


@pytest.mark.slow
def test_autointerp_waits_for_a_restarted_store(tmp_path):
    _check(autointerp_drill(tmp_path))


@pytest.mark.slow
def test_acknowledged_writes_survive_a_killed_store(tmp_path):
    result = acknowledged_writes_drill(tmp_path)
    print(table([result]))
    assert (result.lost, result.duplicated) == (0, 0), result


def test_writes_ask_for_the_journal_and_keep_other_write_concern_options():
    from pymongo import MongoClient, WriteConcern

    from raysae.store.writes import journaled

    client = MongoClient("mongodb://127.0.0.1:1/?w=majority&wtimeoutMS=500", connect=False)
    try:
        assert journaled(client.db.coll).write_concern.document == {
            "w": "majority",
            "wtimeout": 500,
            "j": True,
        }
        unacknowledged = client.db.get_collection("coll", write_concern=WriteConcern(w=0))
        assert journaled(unacknowledged).write_concern.document == {"w": 0}
    finally:
        client.close()
