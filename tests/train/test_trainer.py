"""The single-process Trainer: ground-truth recovery, loss decrease, schedules in effect, resume."""

from __future__ import annotations

import pytest
import torch

from raysae.config import SAEConfig, TrainerConfig
from raysae.dictionaries import build_dictionary, load_dictionary
from raysae.synthetic import SparseGroundTruth
from raysae.train import Trainer
from raysae.train.trainer import ShortStreamWarning, TrainingDataError


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
    with pytest.warns(ShortStreamWarning, match="ended after 1,920 of 3,840"):
        first.fit(build_dictionary(sae_cfg), (next(stopped) for _ in range(30)))  # "killed" after 30 batches
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


@pytest.mark.parametrize("incoming", [64, 1000], ids=["smaller-batches", "larger-uneven-batches"])
def test_budget_and_batch_size_hold_for_any_incoming_batch_size(incoming):
    """The defect: one incoming batch per step trained a quarter of the data on 4x smaller batches."""
    gt = SparseGroundTruth(d_model=64, n_features=256, active_per_sample=4)
    steps, batch_size = 1000, 256
    seen: list[int] = []

    trainer = Trainer(
        TrainerConfig(
            lr=3e-3,
            batch_size=batch_size,
            total_training_tokens=batch_size * steps,
            log_every_steps=250,
            lr_warmup_steps=50,
            dead_after_tokens=20_000,
        ),
        progress=False,
    )
    dictionary = build_dictionary(SAEConfig(d_model=64, d_sae=512, act_fn="topk", top_k=4))
    real_step = trainer.step
    trainer.step = lambda b: (seen.append(len(b)), real_step(b))[1]  # type: ignore[method-assign]
    n_incoming = -(-batch_size * steps // incoming) + 3  # a little more than the budget
    trainer.fit(dictionary, gt.batches(incoming, n_incoming))
    assert trainer.state.step == steps
    assert trainer.state.tokens_seen == batch_size * steps
    assert set(seen) == {batch_size}
    recovery = gt.recovery(trainer.dictionary.W_dec.detach())
    assert (recovery >= 0.9).float().mean() >= 0.9, f"recovered only {(recovery >= 0.9).float().mean():.2f}"


def test_mapping_batches_are_recut_per_hook_in_step():
    x = torch.randn(700, 8, dtype=torch.float64)
    y = 2 * x
    cfg = SAEConfig(
        architecture="transcoder", d_model=8, d_sae=16, act_fn="topk", top_k=2,
        hook_point_in="a", hook_point_out="b", dtype="float64",
    )  # fmt: skip
    trainer = Trainer(TrainerConfig(batch_size=100, total_training_tokens=600), progress=False)
    seen: list[dict] = []
    real_step = trainer.step
    trainer.step = lambda b: (seen.append(b), real_step(b))[1]  # type: ignore[method-assign]
    chunks = [{"a": x[i : i + 70], "b": y[i : i + 70]} for i in range(0, 700, 70)]
    trainer.fit(build_dictionary(cfg), chunks)
    assert len(seen) == 6
    for i, b in enumerate(seen):  # rows stay paired across hooks and in stream order
        torch.testing.assert_close(b["a"], x[100 * i : 100 * (i + 1)], rtol=0, atol=0)
        torch.testing.assert_close(b["b"], y[100 * i : 100 * (i + 1)], rtol=0, atol=0)


def test_a_stream_shorter_than_the_budget_warns_and_saves_what_it_trained(tmp_path):
    trainer = Trainer(
        TrainerConfig(batch_size=32, total_training_tokens=32 * 10, checkpoint_dir=str(tmp_path)),
        progress=False,
    )
    sae = build_dictionary(SAEConfig(d_model=8, d_sae=16, act_fn="topk", top_k=2))
    with pytest.warns(ShortStreamWarning, match=r"ended after 96 of 320 training tokens \(3 of 10 steps\)"):
        trainer.fit(sae, (torch.randn(48, 8) for _ in range(2)))  # 96 rows: 3 steps, no remainder
    assert trainer.state.step == 3
    assert trainer.state.history[-1]["progress/step"] == 3
    assert (tmp_path / "final").is_dir()


def test_a_stream_without_one_step_of_rows_is_a_clear_error():
    trainer = Trainer(TrainerConfig(batch_size=32, total_training_tokens=320), progress=False)
    sae = build_dictionary(SAEConfig(d_model=8, d_sae=16, act_fn="topk", top_k=2))
    with pytest.raises(TrainingDataError, match="fewer than 32 rows"):
        trainer.fit(sae, [torch.randn(20, 8)])
    with pytest.raises(TrainingDataError):
        Trainer(TrainerConfig(batch_size=32, total_training_tokens=320), progress=False).fit(sae, [])


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_bf16_autocast_keeps_explained_variance_within_half_a_percent(sparse):
    from raysae import metrics as M

    gt = SparseGroundTruth(d_model=64, n_features=256, active_per_sample=4)
    held_out = next(gt.batches(2048, 1, seed=99))
    ev = {}
    for autocast in ("off", "bfloat16"):
        torch.manual_seed(0)
        trainer = Trainer(
            TrainerConfig(
                lr=3e-3, batch_size=256, total_training_tokens=256 * 300, lr_warmup_steps=30,
                sparse_topk=sparse, autocast=autocast,
            ),
            progress=False,
        )  # fmt: skip
        sae = trainer.fit(
            build_dictionary(SAEConfig(d_model=64, d_sae=512, act_fn="topk", top_k=4)), gt.batches(256, 300)
        )
        with torch.no_grad():
            ev[autocast] = float(M.explained_variance(held_out, sae.eval()(held_out)))
    assert ev["off"] > 0.7
    assert ev["bfloat16"] != ev["off"]  # the bf16 path ran
    assert abs(ev["bfloat16"] - ev["off"]) < 0.005, ev
