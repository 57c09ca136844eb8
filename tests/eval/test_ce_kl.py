"""The fused next-token CE/KL of evaluation against a plain float64 log-softmax reference."""

from __future__ import annotations

import pytest
import torch

from raysae import metrics as M


def _reference(
    logits: list[torch.Tensor], tokens: torch.Tensor, ce_mask: torch.Tensor, kl_mask: torch.Tensor
) -> tuple[list[float], list[float]]:
    """CE and KL sums from float64 log-softmaxes of the same (rounded) logits."""
    lp = [lg[:, :-1].double().log_softmax(-1) for lg in logits]
    nxt = tokens[:, 1:, None]
    ce = [float(-(x.gather(-1, nxt).squeeze(-1) * ce_mask).sum()) for x in lp]
    kl = [float(((lp[0].exp() * (lp[0] - x)).sum(-1) * kl_mask).sum()) for x in lp[1:]]
    return ce, kl


def _runs(
    sigma: float,
    b: int = 3,
    t: int = 23,
    vocab: int = 5003,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean logits with a few likely tokens, and two runs perturbed by noise of scale ``sigma``."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(b, t, vocab, generator=g) * 2.5 + torch.randn(b, t, 1, generator=g)
    clean[..., :20] += 8
    runs = [clean, clean + sigma * torch.randn(clean.shape, generator=g), clean + 3 * sigma]
    tokens = torch.randint(0, vocab, (b, t), generator=g)
    keep = torch.rand(b, t, generator=g) > 0.2
    keep[:, 0] = False  # BOS
    ce_mask = keep[:, 1:]
    return [r.to(dtype) for r in runs], tokens, ce_mask, ce_mask & keep[:, :-1]


@pytest.mark.parametrize("sigma", [1e-3, 0.1, 3.0])
@pytest.mark.parametrize("chunk_bytes", [1 << 22, 7 * 5003 * 4])
def test_ce_kl_match_float64_log_softmax(sigma, chunk_bytes, monkeypatch):
    """Chunks of 7 rows cross window ends; run 2 is run 0 shifted (KL ~0: no large terms cancel)."""
    monkeypatch.setitem(M.CHUNK_BYTES, "cpu", chunk_bytes)
    runs, tokens, ce_mask, kl_mask = _runs(sigma)
    ce, kl = M.next_token_ce_kl(runs, tokens, ce_mask, kl_mask)
    ref_ce, ref_kl = _reference(runs, tokens, ce_mask, kl_mask)
    n = int(ce_mask.sum())
    assert ce.dtype == kl.dtype == torch.float64
    assert ce.tolist() == pytest.approx(ref_ce, rel=1e-9, abs=1e-7 * n)
    assert kl.tolist() == pytest.approx(ref_kl, rel=1e-6, abs=1e-9 * n)


def test_small_kl_keeps_its_digits():
    """KL ~4e-6 nats per token over a 49,152-token vocabulary: the float32 log-softmax route is off by
    0.2-5 % here (its log-probabilities carry ~1e-6 absolute rounding); the fused one stays within 1e-3."""
    for seed in (1, 2, 3):
        runs, tokens, ce_mask, kl_mask = _runs(3e-3, b=2, t=17, vocab=49152, seed=seed)
        _, kl = M.next_token_ce_kl(runs[:2], tokens, ce_mask, kl_mask)
        _, ref_kl = _reference(runs[:2], tokens, ce_mask, kl_mask)
        assert ref_kl[0] / int(kl_mask.sum()) < 1e-5
        assert float(kl[0]) == pytest.approx(ref_kl[0], rel=1e-3)


def test_identical_runs_have_zero_kl_and_equal_ce():
    runs, tokens, ce_mask, kl_mask = _runs(0.1)
    ce, kl = M.next_token_ce_kl([runs[0], runs[0].clone()], tokens, ce_mask, kl_mask)
    assert float(kl[0]) == 0.0
    assert float(ce[0]) == float(ce[1])


def test_half_precision_logits_are_upcast():
    runs, tokens, ce_mask, kl_mask = _runs(0.5, dtype=torch.bfloat16)
    ce, kl = M.next_token_ce_kl(runs, tokens, ce_mask, kl_mask)
    ref_ce, ref_kl = _reference(runs, tokens, ce_mask, kl_mask)
    assert ce.tolist() == pytest.approx(ref_ce, rel=1e-9, abs=1e-6)
    assert kl.tolist() == pytest.approx(ref_kl, rel=1e-6, abs=1e-6)
