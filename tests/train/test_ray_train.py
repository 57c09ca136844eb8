"""Training on Ray Train with the real SmolLM2: streaming into sharded workers, CLT and CrossCoder,
resume after a worker is killed, and settings that must fail before any worker starts."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

import raysae
from raysae.config.run import TrainCLTSettings, TrainCrossCoderSettings, TrainSAESettings
from raysae.train.ray_setup import SettingsError, preflight
from raysae.train.ray_train import train, train_clt, train_crosscoder, train_sae

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


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    from raysae.config.data import ActivationsConfig, CacheConfig, CacheJobConfig
    from raysae.data.cache import write_cache

    folder = tmp_path_factory.mktemp("cache")
    acts = ActivationsConfig.model_validate(
        {
            "hooks": ["blocks.1.hook_resid_post"],
            "total_tokens": 64 * 40,
            "batch_windows": 4,
            "tokens": {"context_size": 32},
        }
    )
    write_cache(
        CacheJobConfig(activations=acts, cache=CacheConfig(dir=str(folder), shard_rows=512)),
        use_ray=False,
        progress=False,
    )
    return folder


def _cache_settings(tmp_path: Path, cache: Path, name: str, max_failures: int = 0) -> TrainSAESettings:
    return TrainSAESettings.model_validate(
        {
            "sae": {
                "d_model": 576,
                "d_sae": 256,
                "act_fn": "topk",
                "top_k": 8,
                "hook_point_in": "blocks.1.hook_resid_post",
            },
            "trainer": {
                "batch_size": 64,
                "total_training_tokens": 64 * 36,
                "log_every_steps": 4,
                "checkpoint_every_steps": 6,
                "initializer": {"init_batches": 1},
            },
            "cache_path": str(cache),
            "shuffle": False,
            "ray": {"data_parallel_size": 1, "model_parallel_size": 1, "max_failures": max_failures},
            "wandb": {"enabled": False},
            "output_dir": str(tmp_path / name),
            "run_name": name,
        }
    )


def _kill_a_worker_after_first_checkpoint(storage: Path, killed: list[int]) -> None:
    from ray._private.state import actors  # the GCS actor table; the state API needs a dashboard

    deadline = time.time() + 300
    while time.time() < deadline and not list(storage.glob("*/checkpoint_*")):
        time.sleep(0.2)
    for info in actors().values():
        if info["ActorClassName"].endswith("RayTrainWorker") and info["State"] == "ALIVE":
            os.kill(info["Pid"], signal.SIGKILL)
            killed.append(info["Pid"])
            return


def test_resume_after_worker_killed_matches_uninterrupted_run(ray_session, tmp_path, cache_dir):
    reference = train(_cache_settings(tmp_path, cache_dir, "reference"))
    settings = _cache_settings(tmp_path, cache_dir, "killed", max_failures=2)
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_a_worker_after_first_checkpoint, args=(tmp_path / "killed" / "ray", killed), daemon=True
    )
    killer.start()
    resumed = train(settings)
    killer.join(timeout=5)
    assert killed, "no worker was killed: the test did not exercise a failure"
    assert resumed.steps == reference.steps == 36
    a = raysae.load_dictionary(reference.dictionary_path).state_dict()
    b = raysae.load_dictionary(resumed.dictionary_path).state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=f"{name} differs after resume")


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
