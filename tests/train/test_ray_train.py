"""Training on Ray Train with the real SmolLM2: streaming into sharded workers, CLT and CrossCoder,
and settings that must fail before any worker starts. Resuming after a killed worker or driver is in
tests/drills/test_train_drills.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import raysae
from raysae.config.run import TrainCLTSettings, TrainCrossCoderSettings, TrainSAESettings
from raysae.train.ray_setup import SettingsError, preflight
from raysae.train.ray_train import train_clt, train_crosscoder, train_sae

pytestmark = pytest.mark.slow

SMALL = {
    "trainer": {
        "lr": 1e-3,
        "batch_size": 128,
        "total_training_tokens": 128 * 8,
        "log_every_steps": 2,
        "checkpoint_every_steps": 4,
        "initializer": {"init_batches": 1},
    },
    "activations": {"total_tokens": 128 * 9, "batch_windows": 4, "tokens": {"context_size": 32}},
    "wandb": {"enabled": False},
}


def _settings(cls, tmp_path: Path, **parts):
    data = {**SMALL, **parts, "output_dir": str(tmp_path / "run")}
    return cls.model_validate(data)


def test_streaming_sae_model_parallel_exports_a_working_dictionary(ray_session, tmp_path):
    settings = _settings(
        TrainSAESettings,
        tmp_path,
        sae={
            "d_model": 576,
            "d_sae": 512,
            "act_fn": "topk",
            "top_k": 16,
            "hook_point_in": "blocks.1.hook_resid_post",
        },
        ray={"data_parallel_size": 1, "model_parallel_size": 2},
        wandb={"enabled": True, "mode": "offline"},
    )
    result = train_sae(settings)
    assert result.steps == 8 and result.tokens == 1024
    sae = raysae.load_dictionary(result.dictionary_path)
    assert sae.W_enc.shape == (576, 512)
    assert float(sae.input_scale) == 1.0  # scales folded into the weights
    hist = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if line]
    assert len(hist) == 4
    last = result.metrics
    assert last["metrics/l0"] == pytest.approx(16, abs=0.5)
    assert {"perf/tokens_per_s", "perf/data_wait_fraction", "loss/mse", "schedule/lr"} <= set(last)
    x = torch.randn(4, 576) * 3
    assert sae(x).shape == (4, 576)


def test_clt_and_crosscoder_train_and_export(ray_session, tmp_path):
    clt = _settings(
        TrainCLTSettings,
        tmp_path / "clt",
        clt={
            "d_model": 576,
            "d_sae": 128,
            "top_k": 8,
            "hook_points_in": ["blocks.0.hook_mlp_in", "blocks.1.hook_mlp_in"],
            "hook_points_out": ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"],
        },
        ray={"data_parallel_size": 1, "model_parallel_size": 2},
    )
    result = train_clt(clt)
    model = raysae.load_dictionary(result.dictionary_path)
    assert model.cfg.architecture == "clt" and model.latent_shape == (2, 128)
    assert result.metrics["metrics/l0"] == pytest.approx(8, abs=0.5)  # per layer, averaged over layers
    cc = _settings(
        TrainCrossCoderSettings,
        tmp_path / "cc",
        crosscoder={
            "d_model": 576,
            "d_sae": 128,
            "top_k": 8,
            "hook_points": ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
        },
        ray={"data_parallel_size": 2, "model_parallel_size": 1},
    )
    result = train_crosscoder(cc)
    model = raysae.load_dictionary(result.dictionary_path)
    assert model.cfg.architecture == "crosscoder" and tuple(model.W_dec.shape) == (2, 128, 576)
    assert result.steps == 8


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"sae": {"hook_point_in": "blocks.40.hook_resid_post"}}, "layers 0..29"),
        ({"sae": {"d_model": 512}}, "d_model=512"),
        ({"ray": {"cpus_per_worker": 4.0}}, "CPU"),
        (
            {"sae": {"d_sae": 255, "top_k": 8}, "ray": {"model_parallel_size": 2, "data_parallel_size": 1}},
            "divisible",
        ),
    ],
)
def test_bad_settings_fail_before_any_worker_starts(ray_session, tmp_path, patch, message):
    base = {"d_model": 576, "d_sae": 256, "top_k": 8, "hook_point_in": "blocks.1.hook_resid_post"}
    data = {
        **SMALL,
        "output_dir": str(tmp_path),
        "sae": {**base, **patch.get("sae", {})},
        "ray": patch.get("ray", {}),
    }
    started = time.perf_counter()
    with pytest.raises(SettingsError, match=message):
        preflight(TrainSAESettings.model_validate(data))
    assert time.perf_counter() - started < 30


def test_batch_not_divisible_by_workers_is_a_config_error():
    with pytest.raises(ValueError, match="not divisible"):
        TrainSAESettings.model_validate({"trainer": {"batch_size": 101}, "ray": {"data_parallel_size": 2}})
