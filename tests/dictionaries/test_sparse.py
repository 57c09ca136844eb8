"""The sparse TopK/BatchTopK path equals the dense reference (float64): loss, gradients, Adam steps."""

from __future__ import annotations

import pytest
import torch

from raysae.config import SAEConfig, TrainerConfig
from raysae.dictionaries import build_dictionary
from raysae.dictionaries import sae as sae_module
from raysae.dictionaries.sparse import Pattern
from raysae.train import Trainer

D, S, B, K = 16, 64, 40, 4


def _pair(act: str, transcoder: bool = False):
    hooks = {"architecture": "transcoder", "hook_point_in": "a", "hook_point_out": "b"} if transcoder else {}
    cfg = SAEConfig(d_model=D, d_sae=S, act_fn=act, top_k=K, dtype="float64", **hooks)
    torch.manual_seed(0)
    dense = build_dictionary(cfg)
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-zero biases, so every gradient term is exercised
        dense.input_scale.fill_(1.3)
        dense.output_scale.fill_(0.7)
    sparse = build_dictionary(cfg)
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def _batch(transcoder: bool, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    return (
        {"a": x, "b": torch.tanh(x) @ torch.randn(D, D, generator=g, dtype=torch.float64)}
        if transcoder
        else x
    )


@pytest.mark.parametrize("transcoder", [False, True], ids=["sae", "transcoder"])
@pytest.mark.parametrize("act", ["topk", "batchtopk"])
@pytest.mark.parametrize("aux", [False, "dense", "sparse"], ids=["plain", "auxk-dense", "auxk-sparse"])
def test_loss_and_gradients_equal_the_dense_path(act, transcoder, aux, monkeypatch):
    # AuxK over the dead latents: dense products when they are few, sparse over k_aux entries per row
    # otherwise (22 dead, k_aux 6 here: the ratio decides which runs)
    monkeypatch.setattr(sae_module, "DENSE_AUX_MAX_RATIO", 8 if aux == "dense" else 0)
    dense, sparse = _pair(act, transcoder)
    assert sparse.supports_sparse_loss
    batch = _batch(transcoder)
    dead = torch.zeros(S, dtype=torch.bool)
    dead[::3] = True
    kw = {"dead_mask": dead, "aux_k": 6, "aux_k_coefficient": 0.5} if aux else {}
    a = dense.compute_loss(batch, **kw)
    b = sparse.compute_sparse_loss(batch, **kw)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-12, atol=1e-12)
    assert set(a.parts) == set(b.parts)
    torch.testing.assert_close(b.latents(), a.feature_acts.detach(), rtol=1e-12, atol=1e-12)
    assert torch.equal(b.firing_counts(), a.firing_counts()) and b.n_rows == a.n_rows == B
    torch.testing.assert_close(b.reconstruction, a.reconstruction, rtol=1e-12, atol=1e-12)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=f"grad of {name}")
    if act == "batchtopk":
        torch.testing.assert_close(sparse.activation.threshold, dense.activation.threshold)


@pytest.mark.parametrize("act", ["topk", "batchtopk"])
def test_parameters_after_adam_steps_equal_the_dense_path(act):
    dense, sparse = _pair(act)
    kw = {
        "lr": 1e-2,
        "batch_size": B,
        "total_training_tokens": B * 12,
        "dead_after_tokens": B * 2,
        "aux_k": 6,
    }
    a = Trainer(TrainerConfig(**kw, sparse_topk=False), progress=False)
    b = Trainer(TrainerConfig(**kw, sparse_topk=True), progress=False)
    batches = [_batch(False, seed) for seed in range(12)]
    a.fit(dense, batches)
    b.fit(sparse, batches)
    for (name, p), q in zip(dense.state_dict().items(), sparse.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-11, msg=f"{name} after 12 Adam steps")
    assert a.state.history[-1]["loss/aux_k"] == pytest.approx(b.state.history[-1]["loss/aux_k"], rel=1e-9)


def test_auxk_without_dead_latents_is_zero_and_moves_nothing():
    _, sparse = _pair("topk")
    out = sparse.compute_sparse_loss(
        _batch(False), dead_mask=torch.zeros(S, dtype=torch.bool), aux_k=6, aux_k_coefficient=0.5
    )
    assert float(out.parts["aux_k"]) == 0.0


def test_the_transpose_is_computed_once_per_pattern():
    p = Pattern.topk(torch.randn(6, 9, dtype=torch.float64), 2)
    t, order = p.transposed()
    assert p.transposed()[0] is t
    assert torch.equal(p.col[order], t.row) and torch.equal(p.row[order], t.col)


def test_patterns_hold_k_per_row_and_n_over_the_batch():
    scores = torch.randn(5, 11, dtype=torch.float64)
    p = Pattern.topk(scores, 3)
    assert p.crow.tolist() == [0, 3, 6, 9, 12, 15]
    dense = p.dense(scores[p.row, p.col])
    assert torch.equal((dense != 0).sum(-1), torch.full((5,), 3))
    q = Pattern.batch_topk(scores, 7)
    kept = q.dense(scores[q.row, q.col] + 100)
    assert int((kept != 0).sum()) == 7 and scores[kept != 0].min() >= scores[kept == 0].max()
