"""The single-process Trainer: ground-truth recovery, loss decrease, schedules in effect, resume."""

from __future__ import annotations

import pytest
import torch

from raysae.config import SAEConfig, TrainerConfig
from raysae.dictionaries import build_dictionary, load_dictionary
from raysae.synthetic import SparseGroundTruth
from raysae.train import Trainer


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(sae_cfg: SAEConfig, steps: int, **trainer_kw) -> tuple[Trainer, SparseGroundTruth]:
    gt = SparseGroundTruth(d_model=64, n_features=256, active_per_sample=4)
    kw = {
        "lr": 3e-3,
        "batch_size": 256,
        "total_training_tokens": 256 * steps,
        "log_every_steps": steps // 4,
        "lr_warmup_steps": 50,
        "dead_after_tokens": 20_000,
    }
    kw.update(trainer_kw)
    trainer = Trainer(TrainerConfig(**kw), progress=False)
    trainer.fit(build_dictionary(sae_cfg), gt.batches(256, steps))
    return trainer, gt


def test_topk_sae_recovers_ground_truth_features():
    trainer, gt = _train(SAEConfig(d_model=64, d_sae=512, act_fn="topk", top_k=4), steps=1000)
    recovery = gt.recovery(trainer.dictionary.W_dec.detach())
    assert (recovery >= 0.9).float().mean() >= 0.9, f"recovered only {(recovery >= 0.9).float().mean():.2f}"
    last = trainer.state.history[-1]
    assert last["metrics/l0"] == pytest.approx(4, abs=0.5)
    assert last["metrics/explained_variance"] > 0.75
    # Unit-norm decoder is maintained.
    norms = trainer.dictionary.decoder_norms()
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_jumprelu_l0_loss_and_l0_decrease():
    cfg = SAEConfig(
        d_model=64,
        d_sae=512,
        act_fn="jumprelu",
        sparsity_penalty="l0",
        sparsity_coefficient=1.0,
        jumprelu_threshold_init=0.1,
        jumprelu_bandwidth=0.1,
    )
    trainer, _ = _train(cfg, steps=800, decoder_norm_mode="free", sparsity_warmup_steps=100)
    hist = trainer.state.history
    assert hist[-1]["loss/total"] < 0.5 * hist[0]["loss/total"]
    assert hist[0]["metrics/l0"] > 100 and hist[-1]["metrics/l0"] < 40
    assert hist[-1]["metrics/explained_variance"] > 0.7
    assert (trainer.dictionary.activation.threshold > 0.1).any()


def test_relu_l1_loss_decreases_with_sane_l0_and_recovers():
    cfg = SAEConfig(d_model=64, d_sae=512, act_fn="relu", sparsity_coefficient=3.0)
    trainer, gt = _train(cfg, steps=800, decoder_norm_mode="free", sparsity_warmup_steps=100)
    hist = trainer.state.history
    assert hist[-1]["loss/total"] < 0.85 * hist[0]["loss/total"]
    assert 2 < hist[-1]["metrics/l0"] < 20
    assert (gt.recovery(trainer.dictionary.W_dec.detach()) >= 0.9).float().mean() > 0.8


def test_schedules_are_applied():
    cfg = SAEConfig(d_model=64, d_sae=256, act_fn="topk", top_k=4)
    trainer, _ = _train(
        cfg, steps=100, log_every_steps=10, lr_warmup_steps=20, lr_decay_fraction=0.5, k_anneal_steps=40
    )
    hist = trainer.state.history
    lrs = [h["schedule/lr"] for h in hist]
    assert lrs[0] == pytest.approx(3e-3 * 9 / 20)  # reported after step 10 → schedule at step 9
    assert max(lrs) == pytest.approx(3e-3)
    assert lrs[-1] == pytest.approx(3e-3 * 1 / 50)
    ks = [h["schedule/k"] for h in hist]
    assert ks[0] > ks[3] and ks[-1] == 4
    assert hist[0]["metrics/l0"] > hist[-1]["metrics/l0"] == pytest.approx(4)


@pytest.mark.parametrize("act_fn", ["topk", "batchtopk", "jumprelu"])
def test_resume_matches_uninterrupted_run(tmp_path, act_fn):
    gt = SparseGroundTruth(d_model=32, n_features=128)
    sae_cfg = SAEConfig(d_model=32, d_sae=128, act_fn=act_fn, top_k=4, sparsity_penalty="l1")
    kw = {
        "lr": 1e-3,
        "batch_size": 64,
        "total_training_tokens": 64 * 60,
        "log_every_steps": 10,
        "dead_after_tokens": 640,
    }

    torch.manual_seed(0)
    full = Trainer(TrainerConfig(**kw), progress=False)
    reference = full.fit(build_dictionary(sae_cfg), gt.batches(64, 60))

    torch.manual_seed(0)
    ckpt_dir = tmp_path / "ckpts"
    first = Trainer(
        TrainerConfig(**kw, checkpoint_every_steps=25, checkpoint_dir=str(ckpt_dir)), progress=False
    )
    stopped = iter(gt.batches(64, 60))
    first.setup(build_dictionary(sae_cfg))
    first.fit(first.dictionary, (next(stopped) for _ in range(30)))  # "killed" after 30 batches
    assert (ckpt_dir / "step_00000025").is_dir()

    resumed = Trainer(TrainerConfig(**kw), progress=False)
    result = resumed.fit(
        build_dictionary(sae_cfg), gt.batches(64, 60), resume_from=ckpt_dir / "step_00000025"
    )
    assert resumed.state.step == 60
    for (name, a), (_, b) in zip(reference.state_dict().items(), result.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} differs after resume")
    # The checkpoint's dictionary folder opens with the plain loader.
    loaded = load_dictionary(ckpt_dir / "step_00000025" / "dictionary")
    assert loaded.cfg == sae_cfg


def test_transcoder_trains_on_dict_batches():
    gt = SparseGroundTruth(d_model=32, n_features=64)
    mix = torch.randn(32, 32, generator=torch.Generator().manual_seed(3)) / 32**0.5
    cfg = SAEConfig(
        architecture="transcoder",
        d_model=32,
        d_sae=128,
        act_fn="topk",
        top_k=4,
        hook_point_in="a",
        hook_point_out="b",
    )
    batches = [{"a": x, "b": torch.relu(x) @ mix} for x in gt.batches(128, 300)]
    trainer = Trainer(
        TrainerConfig(lr=3e-3, batch_size=128, total_training_tokens=128 * 300, log_every_steps=75),
        progress=False,
    )
    trainer.fit(build_dictionary(cfg), batches)
    hist = trainer.state.history
    assert hist[-1]["metrics/mse"] < 0.5 * hist[0]["metrics/mse"]
    assert hist[-1]["metrics/explained_variance"] > 0.5
