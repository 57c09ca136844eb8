"""A rerun in an existing output_dir resumes only the same run; changed settings stop it up front."""

from __future__ import annotations

import json

import pytest

from raysae.config.run import TrainSAESettings
from raysae.train.ray_setup import SettingsError
from raysae.train.rerun import SETTINGS_FILE, check_rerun, differing_fields


def _settings(tmp_path, **trainer) -> TrainSAESettings:
    return TrainSAESettings.model_validate(
        {"output_dir": str(tmp_path), "trainer": {"total_training_tokens": 4096, **trainer}}
    )


def test_first_run_records_its_settings_and_the_same_run_passes(tmp_path):
    check_rerun(_settings(tmp_path))
    recorded = json.loads((tmp_path / SETTINGS_FILE).read_text())
    assert recorded["trainer"]["total_training_tokens"] == 4096
    check_rerun(_settings(tmp_path))  # the same run: resumes


def test_changed_settings_name_the_fields_and_how_to_start_afresh(tmp_path):
    check_rerun(_settings(tmp_path))
    changed = _settings(tmp_path, total_training_tokens=8192)
    changed.sae.d_sae = 1024
    with pytest.raises(SettingsError) as err:
        check_rerun(changed)
    message = str(err.value)
    assert f"sae.d_sae: {_settings(tmp_path).sae.d_sae} → 1024" in message
    assert "trainer.total_training_tokens: 4096 → 8192" in message
    assert "another output_dir" in message
    # The record is not overwritten by the refused run.
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["trainer"]["total_training_tokens"] == 4096


def test_operational_settings_may_change_between_a_run_and_its_resume(tmp_path):
    a = _settings(tmp_path)
    b = _settings(tmp_path)
    b.wandb.enabled = not a.wandb.enabled
    b.ray.address = "ray://elsewhere:10001"
    b.ray.max_failures = 3
    assert differing_fields(a.model_dump(mode="json"), b.model_dump(mode="json")) == []


def test_an_unreadable_record_is_a_settings_error(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text("{not json")
    with pytest.raises(SettingsError, match=SETTINGS_FILE):
        check_rerun(_settings(tmp_path))
