"""Evaluation on the real SmolLM2: an exact 'dictionary' recovers all CE loss; numbers match a direct pass."""

from __future__ import annotations

import pytest
import torch

from raysae.config import SAEConfig
from raysae.config.evaluation import EvalConfig
from raysae.dictionaries import build_dictionary
from raysae.eval.evaluate import evaluate

pytestmark = pytest.mark.slow
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def lm():
    from raysae.config.data import ModelConfig
    from raysae.lm.model import LanguageModel

    return LanguageModel.from_config(ModelConfig())


def _cfg(tokens: int = 256) -> EvalConfig:
    cfg = EvalConfig()
    cfg.activations.total_tokens = tokens
    cfg.activations.batch_windows = 2
    cfg.activations.tokens.context_size = 64
    return cfg


def _exact_sae() -> torch.nn.Module:
    """relu(x) − relu(−x) = x: a ReLU SAE with W_enc = [I, −I], W_dec = [I; −I] reconstructs exactly."""
    d = 576
    sae = build_dictionary(SAEConfig(d_model=d, d_sae=2 * d, act_fn="relu", hook_point_in=HOOK))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_exact_reconstruction_recovers_everything(lm):
    metrics = evaluate(_exact_sae(), _cfg(), lm=lm, progress=False)
    assert metrics["tokens"] > 200
    assert metrics["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["kl_recovered"] == pytest.approx(1.0, abs=1e-4)
    ce = metrics["ce_loss"]
    assert 2.0 < ce["clean"] < 7.0  # Shakespeare ≈ 4 nats/token on this model
    assert ce["zero_ablated"] > ce["clean"] + 1.0


def test_clean_loss_matches_the_model_and_random_sae_is_worse(lm):
    from raysae.data.extract import ActivationSource

    cfg = _cfg()
    metrics = evaluate(_exact_sae(), cfg, lm=lm, progress=False)
    source = ActivationSource(cfg.activations.model_copy(update={"hooks": [HOOK]}), lm)
    losses = []
    for wb in source.token_windows():
        tokens = torch.from_numpy(wb.tokens)
        keep = torch.from_numpy(wb.keep)
        losses.append(lm.loss(tokens)[keep[:, 1:]])
    assert metrics["ce_loss"]["clean"] == pytest.approx(float(torch.cat(losses).mean()), rel=1e-5)

    random_sae = build_dictionary(
        SAEConfig(d_model=576, d_sae=1152, act_fn="topk", top_k=16, hook_point_in=HOOK)
    )
    worse = evaluate(random_sae, cfg, lm=lm, progress=False)
    assert worse["ce_loss_recovered"] < 0.99
    assert worse["ce_loss"]["clean"] == pytest.approx(metrics["ce_loss"]["clean"])
    assert worse["l0"] <= 16


def test_clt_is_evaluated_per_layer(lm):
    from raysae import metrics as M
    from raysae.config import CLTConfig
    from raysae.data.extract import ActivationSource

    ins, outs = (
        ["blocks.0.hook_mlp_in", "blocks.1.hook_mlp_in"],
        ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"],
    )
    clt = build_dictionary(
        CLTConfig(d_model=576, d_sae=64, top_k=4, hook_points_in=ins, hook_points_out=outs)
    )
    cfg = _cfg(128)
    metrics = evaluate(clt, cfg, lm=lm, progress=False)
    assert "ce_loss_recovered" not in metrics  # splicing several layers at once is not a single-hook metric
    per = metrics["per_group"]
    assert per["hooks"] == outs and len(per["explained_variance"]) == 2 and per["l0"] == [4.0, 4.0]
    source = ActivationSource(cfg.activations.model_copy(update={"hooks": ins + outs}), lm)
    xs, ys = [], []
    for item in source.windows():
        keep = torch.from_numpy(item.windows.keep)
        xs.append(torch.stack([item.acts[h][keep] for h in ins], 1))
        ys.append(torch.stack([item.acts[h][keep] for h in outs], 1))
    x, y = torch.cat(xs), torch.cat(ys)
    with torch.no_grad():
        expected = M.explained_variance(y, clt.eval()(x), per_group=True)
    assert per["explained_variance"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert metrics["explained_variance"] == pytest.approx(float(expected.mean()), rel=1e-5)


def test_shared_prefix_gives_the_three_separate_passes_numbers(lm, monkeypatch):
    """A transcoder (reads hook_mlp_in, splices hook_mlp_out): the native backend's one pass with the
    three runs stacked after the hook gives the numbers of one full pass per run."""
    torch.manual_seed(0)
    tc = build_dictionary(
        SAEConfig(
            architecture="transcoder",
            d_model=576,
            d_sae=256,
            act_fn="topk",
            top_k=16,
            hook_point_in="blocks.2.hook_mlp_in",
            hook_point_out="blocks.2.hook_mlp_out",
        )
    )
    assert lm.batch_fork
    shared = evaluate(tc, _cfg(128), lm=lm, progress=False)
    monkeypatch.setattr(type(lm), "batch_fork", False)
    separate = evaluate(tc, _cfg(128), lm=lm, progress=False)
    for key in ("explained_variance", "l0", "ce_loss_recovered", "kl_recovered"):
        assert shared[key] == pytest.approx(separate[key], rel=1e-4, abs=1e-5), key
    for run in ("clean", "reconstructed", "zero_ablated"):
        assert shared["ce_loss"][run] == pytest.approx(separate["ce_loss"][run], rel=1e-5)
    assert shared["ce_loss"]["reconstructed"] > shared["ce_loss"]["clean"]  # a random transcoder hurts


def test_ce_and_kl_match_float64_full_passes(lm, monkeypatch):
    """CE/KL of evaluation (shared prefix, fused CE/KL, trailing unkept positions not run) against
    three full passes per batch scored with float64 log-softmaxes; the last window (4 kept tokens)
    runs 5 positions, not 64."""
    from raysae.data.extract import ActivationSource

    torch.manual_seed(1)
    sae = build_dictionary(SAEConfig(d_model=576, d_sae=1152, act_fn="topk", top_k=16, hook_point_in=HOOK))
    cfg = _cfg()
    widths = []
    run = type(lm).forward_variants

    def spy(self, tokens, *args, **kwargs):
        widths.append(tokens.shape[1])
        return run(self, tokens, *args, **kwargs)

    monkeypatch.setattr(type(lm), "forward_variants", spy)
    metrics = evaluate(sae, cfg, lm=lm, progress=False)
    assert widths == [64, 64, 5]

    ce, kl, n_pred = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    source = ActivationSource(cfg.activations.model_copy(update={"hooks": [HOOK]}), lm)
    for wb in source.token_windows():
        tokens, keep = torch.from_numpy(wb.tokens), torch.from_numpy(wb.keep)
        with torch.no_grad():
            a = lm.run_with_hooks(tokens, [HOOK])[HOOK]
            recon, zero = a.clone(), a.clone()
            recon[keep] = sae.eval()(a[keep])
            zero[keep] = 0
            logits = [lm.forward(tokens, replace={HOOK: lambda _, v=v: v})[0] for v in (a, recon, zero)]
        lp = [lg[:, :-1].double().log_softmax(-1) for lg in logits]
        target, both = keep[:, 1:], keep[:, 1:] & keep[:, :-1]
        for i, x in enumerate(lp):
            ce[i] += -x.gather(-1, tokens[:, 1:, None]).squeeze(-1)[target].sum()
            kl[i] += (lp[0].exp() * (lp[0] - x)).sum(-1)[both].sum()
        n_pred += int(target.sum())
    ce, kl = (ce / n_pred).tolist(), (kl / n_pred).tolist()
    assert [metrics["ce_loss"][k] for k in ("clean", "reconstructed", "zero_ablated")] == pytest.approx(
        ce, rel=1e-5
    )
    assert [metrics["kl_div"][k] for k in ("reconstructed", "zero_ablated")] == pytest.approx(
        kl[1:], rel=1e-4
    )
    assert metrics["ce_loss_recovered"] == pytest.approx((ce[2] - ce[1]) / (ce[2] - ce[0]), rel=1e-4)
    assert metrics["kl_recovered"] == pytest.approx(1 - kl[1] / kl[2], rel=1e-4)
