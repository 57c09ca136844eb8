"""Activation functions against plain references: masks, gradients, the JumpReLU STE, BatchTopK threshold."""

from __future__ import annotations

import math

import pytest
import torch
from dict_reference import COMMON, batchtopk_mask, close, topk_mask
from torch import Tensor

from raysae.config import SAEConfig
from raysae.dictionaries.activations import BatchTopK, JumpReLU, ReLU, TopK, build_activation, local_kth_value

B, L, S, K = 8, 3, 10, 3
SHAPES = [(B, S), (B, L, S)]
SHAPE_IDS = ["ungrouped", "grouped"]


def rand(*shape: int, seed: int = 0, positive: bool = False) -> Tensor:
    t = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return t.abs() + 0.01 if positive else t


@pytest.mark.parametrize(
    ("act", "cls"), [("relu", ReLU), ("topk", TopK), ("batchtopk", BatchTopK), ("jumprelu", JumpReLU)]
)
def test_build_activation(act: str, cls: type) -> None:
    cfg = SAEConfig(**COMMON | {"act_fn": act, "sparsity_penalty": "l1"})
    module = build_activation(cfg, (L, S))
    assert type(module) is cls
    if act == "batchtopk":
        assert module.threshold.shape == (L,) and torch.all(module.threshold == -1)
    if act == "jumprelu":
        assert module.log_threshold.shape == (L, S)
        close(module.threshold, torch.full((L, S), 0.3), "initial threshold", {"rtol": 1e-6, "atol": 0})
    if act in ("topk", "batchtopk"):
        assert module.k == K


def test_relu_and_missing_l0_surrogate() -> None:
    pre = rand(B, S)
    torch.testing.assert_close(ReLU()(pre), torch.where(pre > 0, pre, torch.zeros_like(pre)), rtol=0, atol=0)
    for module in (ReLU(), TopK(K)):
        with pytest.raises(NotImplementedError, match="no l0 surrogate"):
            module.l0_surrogate(pre)


def test_local_kth_value() -> None:
    pre = rand(B, L, S)
    expected = torch.tensor(
        [sorted(row.tolist(), reverse=True)[K - 1] for row in pre.reshape(-1, S)], dtype=torch.float64
    )
    close(local_kth_value(pre, K), expected.reshape(B, L, 1), "kth value")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_topk(shape: tuple[int, ...]) -> None:
    pre = rand(*shape).requires_grad_(True)
    z = TopK(K)(pre)
    mask = topk_mask(pre.detach(), K)
    close(z, pre.detach() * mask, "topk")
    grad_out = rand(*shape, seed=1)
    z.backward(grad_out)
    close(pre.grad, grad_out * mask, "topk grad")
    positive = rand(*shape, positive=True)
    assert torch.all((TopK(K)(positive) > 0).sum(-1) == K)


def test_topk_uses_replaceable_kth_value() -> None:
    calls = []

    def recording(x: Tensor, k: int) -> Tensor:
        calls.append((tuple(x.shape), k))
        return local_kth_value(x, k)

    module = TopK(K)
    module.kth_value = recording
    pre = rand(B, L, S)
    close(module(pre), TopK(K)(pre), "same result")
    assert calls == [((B, L, S), K)]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_batchtopk_training_keeps_k_times_batch(shape: tuple[int, ...]) -> None:
    module = BatchTopK(K, shape[1:-1], momentum=0.9).train()
    pre = rand(*shape, positive=True).requires_grad_(True)
    z = module(pre)
    active = (z > 0).reshape(B, -1, S).sum(dim=(0, 2))
    assert torch.all(active == K * B), active
    assert not torch.all((z > 0).sum(-1) == K)  # per-token counts vary: it is not a per-token TopK
    mask = batchtopk_mask(pre.detach(), K)
    close(z, pre.detach() * mask, "batchtopk")
    grad_out = rand(*shape, seed=1)
    z.backward(grad_out)
    close(pre.grad, grad_out * mask, "batchtopk grad")
    # with negative pre-activations, only positive ones among the top k·batch survive
    mixed = rand(*shape, seed=2) - 1.0
    close(module(mixed), mixed * batchtopk_mask(mixed, K), "batchtopk, negatives")


def group_min_positive(z: Tensor) -> Tensor:
    """Smallest active value of each group over the whole batch."""
    flat = z.reshape(B, -1, S)
    return torch.tensor(
        [min(v for v in flat[:, g].flatten().tolist() if v > 0) for g in range(flat.shape[1])], dtype=z.dtype
    )


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_batchtopk_threshold_estimate(shape: tuple[int, ...]) -> None:
    groups = shape[1:-1]
    module = BatchTopK(K, groups, momentum=0.9).to(torch.float64).train()
    z1 = module(rand(*shape, seed=3))
    t1 = group_min_positive(z1).reshape(groups)
    close(module.threshold, t1, "first batch sets the threshold")
    z2 = module(rand(*shape, seed=4))
    t2 = 0.9 * t1 + 0.1 * group_min_positive(z2).reshape(groups)
    close(module.threshold, t2, "momentum update")
    module(-rand(*shape, seed=5, positive=True))  # nothing active: threshold kept
    close(module.threshold, t2, "no active latents")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_batchtopk_eval_uses_threshold(shape: tuple[int, ...]) -> None:
    groups = shape[1:-1]
    module = BatchTopK(K, groups, momentum=0.9).to(torch.float64).eval()
    pre = rand(*shape, seed=6)
    close(module(pre), torch.relu(pre), "unestimated threshold (-1) acts as a ReLU")
    thr = torch.linspace(0.2, 0.9, math.prod(groups), dtype=torch.float64).reshape(groups)
    module.threshold.copy_(thr)
    z = module(pre)
    close(z, pre * (pre > thr.reshape(*groups, 1)), "eval uses the estimated threshold")
    close(module.threshold, thr, "eval does not update the threshold")
    assert not torch.all((z > 0).reshape(B, -1, S).sum(dim=(0, 2)) == K * B)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_jumprelu_ste(shape: tuple[int, ...]) -> None:
    eps = 0.3
    module = JumpReLU(shape[1:], threshold_init=0.3, bandwidth=eps).to(torch.float64)
    with torch.no_grad():
        module.log_threshold.uniform_(
            math.log(0.1), math.log(0.6), generator=torch.Generator().manual_seed(7)
        )
    theta = module.threshold.detach()
    pre = rand(*shape, seed=8).requires_grad_(True)
    grad_out = rand(*shape, seed=9)
    z = module(pre)
    close(z, pre.detach() * (pre.detach() > theta), "jumprelu")
    z.backward(grad_out)
    near = ((pre.detach() - theta).abs() < eps / 2).to(torch.float64)
    assert near.sum() >= 3
    close(pre.grad, grad_out * (pre.detach() > theta), "d z / d pre")
    # dz/dθ = -(θ/ε) K((pre-θ)/ε) with a rectangle K; the parameter is log θ, so times θ
    expected = theta * (grad_out * -(theta / eps) * near).sum(0)
    close(module.log_threshold.grad, expected, "d z / d log θ")


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_jumprelu_l0_surrogate(shape: tuple[int, ...]) -> None:
    eps = 0.3
    module = JumpReLU(shape[1:], threshold_init=0.3, bandwidth=eps).to(torch.float64)
    theta = module.threshold.detach()
    pre = rand(*shape, seed=10).requires_grad_(True)
    grad_out = rand(*shape, seed=11)
    step = module.l0_surrogate(pre)
    close(step, (pre.detach() > theta).to(torch.float64), "step")
    step.backward(grad_out)
    close(pre.grad, torch.zeros_like(pre), "no gradient to pre")
    near = ((pre.detach() - theta).abs() < eps / 2).to(torch.float64)
    assert near.sum() >= 3
    close(module.log_threshold.grad, theta * (grad_out * -near / eps).sum(0), "d H / d log θ")
