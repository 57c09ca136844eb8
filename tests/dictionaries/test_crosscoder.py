"""CrossCoder against a plain per-head loop reference: outputs, loss parts and every gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from dict_reference import ACT_CASES, ACT_IDS, COMMON, check_inference, check_loss, close, randomize_
from torch import Tensor

from raysae.config import CrossCoderConfig
from raysae.dictionaries import LATENT, build_dictionary
from raysae.dictionaries.crosscoder import CrossCoder

B, H, D, S = 8, 3, 6, 10
HOOKS = [f"blocks.{i}.hook_resid_post" for i in (2, 4, 6)]


class CrossCoderRef:
    """pre = Σ_h x_h W_enc[h] + b_enc [· σ(Σ_h x_h W_glu[h] + b_glu)]; ŷ_h = z W_dec[h] + b_dec[h]."""

    def __init__(self, glu: bool) -> None:
        self.glu = glu

    def encode_pre(self, P: dict[str, Tensor], x: Tensor) -> Tensor:
        pre = P["b_enc"].expand(x.shape[0], S)
        gate = P["b_glu"].expand(x.shape[0], S) if self.glu else None
        for h in range(H):
            pre = pre + x[:, h] @ P["W_enc"][h]
            if gate is not None:
                gate = gate + x[:, h] @ P["W_glu"][h]
        return pre * torch.sigmoid(gate) if gate is not None else pre

    def decode(self, P: dict[str, Tensor], z: Tensor, bias: bool = True) -> Tensor:
        return torch.stack([z @ P["W_dec"][h] + (P["b_dec"][h] if bias else 0.0) for h in range(H)], dim=1)

    def norms(self, P: dict[str, Tensor]) -> Tensor:
        return sum(P["W_dec"][h].pow(2).sum(-1).sqrt() for h in range(H))  # type: ignore[return-value]


def make(act: str, penalty: str, glu: bool, training: bool = True, **kw) -> CrossCoder:
    cfg = CrossCoderConfig(
        act_fn=act, sparsity_penalty=penalty, glu_encoder=glu, hook_points=HOOKS, **COMMON, **kw
    )
    model = build_dictionary(cfg)
    assert isinstance(model, CrossCoder)
    randomize_(model, seed=0)
    return model.train(training)


def data(seed: int = 1) -> tuple[dict[str, Tensor], Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(B, H, D, dtype=torch.float64, generator=g)
    return {h: x[:, i] for i, h in enumerate(HOOKS)}, x


def test_shapes_and_init() -> None:
    model = build_dictionary(CrossCoderConfig(hook_points=HOOKS, glu_encoder=True, **COMMON))
    assert model.latent_shape == (S,)
    assert model.input_scale.shape == (H,) and model.output_scale.shape == (H,)
    assert model.W_enc.shape == (H, D, S) and model.W_glu.shape == (H, D, S)
    assert model.b_enc.shape == (S,) and model.b_glu.shape == (S,)
    assert model.W_dec.shape == (H, S, D) and model.b_dec.shape == (H, D)
    assert model.hooks_in == HOOKS and model.hooks_out == HOOKS
    for h in range(H):
        torch.testing.assert_close(model.W_enc[h], model.W_dec[h].T, rtol=0, atol=0)
    assert not torch.equal(model.W_dec[0], model.W_dec[1])
    assert model.W_dec.abs().max() <= 1.0  # kaiming bound sqrt(6 / d_model) = 1
    assert torch.all(model.b_enc == 0) and torch.all(model.b_dec == 0)
    randomize_(model)
    model.tie_encoder_to_decoder_()
    for h in range(H):
        torch.testing.assert_close(model.W_enc[h], model.W_dec[h].T, rtol=0, atol=0)
    model.reset_parameters()
    assert all(torch.all(getattr(model, b) == 0) for b in ("b_enc", "b_dec"))


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize(("act", "penalty", "training"), ACT_CASES, ids=ACT_IDS)
def test_matches_reference(act: str, penalty: str, training: bool, glu: bool) -> None:
    model = make(act, penalty, glu, training)
    batch, x = data()
    check_inference(model, x, CrossCoderRef(glu))
    check_loss(model, batch, x, x, CrossCoderRef(glu))


@pytest.mark.parametrize("k_aux", [2, 8])
@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize("act", ["topk", "batchtopk"])
def test_aux_k_loss(act: str, glu: bool, k_aux: int) -> None:
    model = make(act, "l1", glu)
    batch, x = data()
    dead = torch.tensor([i % 3 != 0 for i in range(S)])
    parts = check_loss(model, batch, x, x, CrossCoderRef(glu), dead=dead, k_aux=k_aux, aux_coef=0.5)
    assert parts["aux_k"] > 0


def test_tensor_batch_equals_mapping() -> None:
    model = make("relu", "l1", False)
    batch, x = data()
    a, b = model.compute_loss(batch), model.compute_loss(x)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    torch.testing.assert_close(a.feature_acts, b.feature_acts, rtol=0, atol=0)


def test_decoder_norm_operations() -> None:
    model = make("relu", "l1", False)
    P = {n: p.detach().clone() for n, p in model.named_parameters()}
    close(model.decoder_norms(), CrossCoderRef(False).norms(P), "decoder_norms (sum over heads)")
    model.set_decoder_norm_(1.0)
    close(model.decoder_norms(), torch.ones(S, dtype=torch.float64), "set_decoder_norm_")
    # every head scaled alike: the heads' share of a latent's norm is unchanged
    share_before = P["W_dec"].norm(dim=-1) / P["W_dec"].norm(dim=-1).sum(0)
    close(model.W_dec.norm(dim=-1), share_before, "head shares")
    factor = torch.linspace(0.5, 1.5, S, dtype=torch.float64)
    model.scale_decoder_(factor)
    close(model.decoder_norms(), factor, "scale_decoder_")


def test_project_decoder_grad_keeps_summed_norm() -> None:
    model = make("relu", "l1", False)
    with torch.no_grad():
        model.W_dec[1, 4].zero_()  # latent 4 no longer writes to head 1
    w = model.W_dec.detach().clone()
    g = torch.randn(H, S, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    model.W_dec.grad = g.clone()
    model.project_decoder_grad_()
    for s in range(S):
        heads = [h for h in range(H) if w[h, s].norm() > 0]
        n = torch.zeros(H, D, dtype=torch.float64)
        for h in heads:
            n[h] = w[h, s] / w[h, s].norm()
        expected = g[:, s] - (g[:, s] * n).sum() / len(heads) * n
        close(model.W_dec.grad[:, s], expected, f"projected grad of latent {s}")
    # first-order change of Σ_h ||W_dec[h, s]|| along the projected gradient is zero
    w_var = w.clone().requires_grad_(True)
    torch.linalg.vector_norm(w_var, dim=-1).sum().backward()
    d_norm = torch.nan_to_num(w_var.grad)  # the zeroed head has no defined gradient
    close((model.W_dec.grad * d_norm).sum((0, 2)), torch.zeros(S, dtype=torch.float64), "norm-preserving")
    # norm may still move between heads: the projection is not per-head
    per_head = (model.W_dec.grad * d_norm).sum(-1)
    assert per_head.abs().max() > 1e-3
    model.W_dec.grad = None
    model.project_decoder_grad_()  # no grad: nothing to do


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize("act", ["relu", "topk", "batchtopk", "jumprelu"])
def test_fold_scales_preserves_function(act: str, glu: bool) -> None:
    model = make(act, "l1", glu, training=False)
    x = data()[1]
    assert len(set(model.input_scale.tolist())) == H and len(set(model.output_scale.tolist())) == H
    folded = copy.deepcopy(model)
    folded.fold_scales_()
    assert torch.all(folded.input_scale == 1) and torch.all(folded.output_scale == 1)
    with torch.no_grad():
        close(folded.encode(x), model.encode(x), "encode after fold", {"rtol": 1e-12, "atol": 1e-12})
        close(folded(x), model(x), "forward after fold", {"rtol": 1e-12, "atol": 1e-12})


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize("act", ["relu", "batchtopk", "jumprelu"])
def test_param_dims_cover_every_tensor(act: str, glu: bool) -> None:
    model = make(act, "l1", glu)
    dims = model.param_dims()
    for name, t in model.state_dict().items():
        assert name in dims, name
        assert len(dims[name]) == t.dim(), (name, dims[name], t.shape)
        sizes = dict(zip(dims[name], t.shape, strict=True))
        assert sizes.get(LATENT, S) == S and sizes.get("head", H) == H, name


def test_zero_head_gives_finite_gradients() -> None:
    """L1 drives whole heads of a latent to zero; the summed-norm sparsity term must stay differentiable."""
    model = make("relu", "l1", False)
    with torch.no_grad():
        model.W_dec[0, 2].zero_()
    model.compute_loss(data()[0]).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
