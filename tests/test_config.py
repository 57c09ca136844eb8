"""Configuration: every field documented, files load in three formats, errors name file and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

import raysae.config as C
from raysae.config import ConfigError, SAEConfig, TrainerConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def _settings_classes() -> list[type[BaseModel]]:
    return [
        v
        for v in vars(C).values()
        if isinstance(v, type) and issubclass(v, C.StrictModel) and v is not C.StrictModel
    ]


@pytest.mark.parametrize("model", _settings_classes(), ids=lambda m: m.__name__)
def test_every_field_has_a_docstring(model):
    undocumented = [name for name, f in model.model_fields.items() if not (f.description or "").strip()]
    assert not undocumented, f"{model.__name__} fields without a docstring: {undocumented}"


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".yaml", "act_fn: batchtopk\ntop_k: 16\nd_model: 64\n"),
        (".toml", 'act_fn = "batchtopk"\ntop_k = 16\nd_model = 64\n'),
        (".json", '{"act_fn": "batchtopk", "top_k": 16, "d_model": 64}'),
    ],
)
def test_load_three_formats(tmp_path, suffix, text):
    path = tmp_path / f"sae{suffix}"
    path.write_text(text)
    cfg = load_config(path, SAEConfig)
    assert (cfg.act_fn, cfg.top_k, cfg.d_model, cfg.latent_count) == ("batchtopk", 16, 64, 512)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("lr: -1\n", "lr"),
        ("initializer:\n  b_dec_init: median\n", "initializer.b_dec_init"),
        ("learning_rate: 0.1\n", "learning_rate"),
        ("betas: [0.9]\n", "betas"),
    ],
)
def test_invalid_values_name_file_and_field(tmp_path, text, field):
    path = tmp_path / "trainer.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, TrainerConfig)
    assert str(path) in str(err.value) and field in str(err.value)


def test_cross_field_validation(tmp_path):
    path = tmp_path / "sae.yaml"
    path.write_text("d_model: 8\nd_sae: 16\ntop_k: 32\n")
    with pytest.raises(ConfigError, match="top_k=32 exceeds d_sae=16"):
        load_config(path, SAEConfig)
    path.write_text("architecture: transcoder\nhook_point_in: blocks.1.hook_mlp_in\n")
    with pytest.raises(ConfigError, match="hook_point_out"):
        load_config(path, SAEConfig)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml", SAEConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad, SAEConfig)
    ini = tmp_path / "x.ini"
    ini.write_text("[a]")
    with pytest.raises(ConfigError, match="unknown config format"):
        load_config(ini, SAEConfig)


def test_config_reference_is_current():
    out = subprocess.run(
        [sys.executable, "-m", "raysae.cli", "config-docs"], capture_output=True, text=True, check=True
    ).stdout
    assert (ROOT / "docs" / "CONFIG.md").read_text() == out, (
        "docs/CONFIG.md is stale: run `raysae config-docs > docs/CONFIG.md`"
    )
