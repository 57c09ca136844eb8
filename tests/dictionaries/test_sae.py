"""SAE and transcoder against a plain reference: outputs, loss parts and every gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from dict_reference import ACT_CASES, ACT_IDS, COMMON, check_inference, check_loss, close, randomize_
from torch import Tensor

from raysae.config import SAEConfig
from raysae.dictionaries import LATENT, build_dictionary
from raysae.dictionaries.sae import SparseAutoencoder

B = 8


class SAERef:
    """pre = (x − b_dec?) W_enc + b_enc [· σ((x − b_dec?) W_glu + b_glu)]; ŷ = z W_dec + b_dec."""

    def __init__(self, subtract: bool, glu: bool) -> None:
        self.subtract, self.glu = subtract, glu

    def encode_pre(self, P: dict[str, Tensor], x: Tensor) -> Tensor:
        x_in = x - P["b_dec"] if self.subtract else x
        pre = torch.einsum("bd,ds->bs", x_in, P["W_enc"]) + P["b_enc"]
        if self.glu:
            pre = pre * torch.sigmoid(torch.einsum("bd,ds->bs", x_in, P["W_glu"]) + P["b_glu"])
        return pre

    def decode(self, P: dict[str, Tensor], z: Tensor, bias: bool = True) -> Tensor:
        out = torch.einsum("bs,sd->bd", z, P["W_dec"])
        return out + P["b_dec"] if bias else out

    def norms(self, P: dict[str, Tensor]) -> Tensor:
        return P["W_dec"].pow(2).sum(-1).sqrt()


def make(arch: str, act: str, penalty: str, glu: bool, training: bool = True, **kw) -> SparseAutoencoder:
    hooks = {"hook_point_in": "h.in"} | ({"hook_point_out": "h.out"} if arch == "transcoder" else {})
    cfg = SAEConfig(
        architecture=arch, act_fn=act, sparsity_penalty=penalty, glu_encoder=glu, **hooks, **COMMON, **kw
    )
    model = build_dictionary(cfg)
    assert isinstance(model, SparseAutoencoder)
    randomize_(model, seed=0, same_scales=arch == "sae")
    return model.train(training)


def data(arch: str, seed: int = 1) -> tuple[Tensor | dict[str, Tensor], Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(B, 6, dtype=torch.float64, generator=g)
    if arch == "sae":
        return x, x, x
    y = 1.5 * torch.randn(B, 6, dtype=torch.float64, generator=g)
    return {"h.in": x, "h.out": y}, x, y


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize(("act", "penalty", "training"), ACT_CASES, ids=ACT_IDS)
@pytest.mark.parametrize("arch", ["sae", "transcoder"])
def test_matches_reference(arch: str, act: str, penalty: str, training: bool, glu: bool) -> None:
    model = make(arch, act, penalty, glu, training)
    # A transcoder never subtracts b_dec (its b_dec lives in output space), whatever the flag says.
    ref = SAERef(subtract=arch == "sae", glu=glu)
    batch, x, y = data(arch)
    check_inference(model, x, ref)
    check_loss(model, batch, x, y, ref)


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
def test_sae_without_pre_encoder_bias(glu: bool) -> None:
    model = make("sae", "relu", "l1", glu, apply_decoder_bias_to_pre_encoder=False)
    batch, x, y = data("sae")
    check_inference(model, x, SAERef(subtract=False, glu=glu))
    check_loss(model, batch, x, y, SAERef(subtract=False, glu=glu))


@pytest.mark.parametrize("k_aux", [2, 8])
@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize("act", ["topk", "batchtopk"])
@pytest.mark.parametrize("arch", ["sae", "transcoder"])
def test_aux_k_loss(arch: str, act: str, glu: bool, k_aux: int) -> None:
    model = make(arch, act, "l1", glu)
    batch, x, y = data(arch)
    dead = torch.tensor([i % 2 == 0 for i in range(10)])
    parts = check_loss(model, batch, x, y, SAERef(arch == "sae", glu), dead=dead, k_aux=k_aux, aux_coef=0.5)
    assert parts["aux_k"] > 0


def test_aux_k_skipped_without_dead_latents() -> None:
    model = make("sae", "topk", "l1", False)
    out = model.compute_loss(
        data("sae")[0], dead_mask=torch.zeros(10, dtype=torch.bool), aux_k_coefficient=1.0
    )
    assert float(out.parts["aux_k"]) == 0.0
    assert "aux_k" not in model.compute_loss(data("sae")[0]).parts


def test_sparsity_coefficient_override_and_zero() -> None:
    model = make("sae", "relu", "l1", False)
    batch = data("sae")[0]
    base = model.compute_loss(batch)
    doubled = model.compute_loss(batch, sparsity_coefficient=2 * COMMON["sparsity_coefficient"])
    close(doubled.loss - base.loss, COMMON["sparsity_coefficient"] * base.parts["sparsity"], "override")
    off = model.compute_loss(batch, sparsity_coefficient=0.0)
    assert "sparsity" not in off.parts
    close(off.loss, base.parts["mse"], "zero coefficient")


def test_decoder_norm_operations() -> None:
    model = make("transcoder", "relu", "l1", False)
    w0 = model.W_dec.detach().clone()
    model.set_decoder_norm_(2.0)
    close(model.decoder_norms(), torch.full((10,), 2.0, dtype=torch.float64), "set_decoder_norm_")
    close(model.W_dec / 2, w0 / w0.norm(dim=-1, keepdim=True), "direction kept")
    factor = torch.linspace(0.5, 1.5, 10, dtype=torch.float64)
    model.scale_decoder_(factor)
    close(model.decoder_norms(), 2 * factor, "scale_decoder_")

    g = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model.W_dec.grad = g.clone()
    model.project_decoder_grad_()
    w = model.W_dec.detach()
    expected = torch.stack([g[s] - (g[s] @ w[s]) * w[s] / (w[s] @ w[s]) for s in range(10)])
    close(model.W_dec.grad, expected, "projected grad")
    close((model.W_dec.grad * w).sum(-1), torch.zeros(10, dtype=torch.float64), "orthogonal")


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize("act", ["relu", "topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("arch", ["sae", "transcoder"])
def test_fold_scales_preserves_function(arch: str, act: str, glu: bool) -> None:
    model = make(arch, act, "l1", glu, training=False)
    x = data(arch)[1]
    assert not torch.all(model.input_scale == 1)
    folded = copy.deepcopy(model)
    folded.fold_scales_()
    assert torch.all(folded.input_scale == 1) and torch.all(folded.output_scale == 1)
    with torch.no_grad():
        close(folded.encode(x), model.encode(x), "encode after fold", {"rtol": 1e-12, "atol": 1e-12})
        close(folded(x), model(x), "forward after fold", {"rtol": 1e-12, "atol": 1e-12})


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize("act", ["relu", "batchtopk", "jumprelu"])
def test_param_dims_cover_every_tensor(act: str, glu: bool) -> None:
    model = make("sae", act, "l1", glu)
    dims = model.param_dims()
    for name, t in model.state_dict().items():
        assert name in dims, name
        assert len(dims[name]) == t.dim(), (name, dims[name], t.shape)
        for dim_name, size in zip(dims[name], t.shape, strict=True):
            if dim_name == LATENT:
                assert size == 10, name


def test_init_encoder_is_decoder_transpose() -> None:
    model = build_dictionary(SAEConfig(**COMMON, glu_encoder=True))
    torch.testing.assert_close(model.W_enc, model.W_dec.T, rtol=0, atol=0)
    assert torch.all(model.b_enc == 0) and torch.all(model.b_dec == 0) and torch.all(model.b_glu == 0)
    bound = (6 / 6) ** 0.5  # kaiming-uniform, fan_in = d_model = 6, gain sqrt(2)
    assert model.W_dec.abs().max() <= bound
    assert model.W_glu.abs().max() > 0


def test_float32_matches_float64_reference() -> None:
    m64 = make("transcoder", "topk", "l1", True)
    m32 = build_dictionary(m64.cfg.model_copy(update={"dtype": "float32"}))
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    assert m32.W_enc.dtype == torch.float32 and m32.input_scale.dtype == torch.float32
    x = data("transcoder")[1]
    with torch.no_grad():
        close(m32(x.float()).double(), m64(x), "float32", {"rtol": 1e-5, "atol": 1e-5})


def test_batch_errors() -> None:
    model = make("transcoder", "relu", "l1", False)
    with pytest.raises(KeyError, match=r"h\.out"):
        model.compute_loss({"h.in": torch.zeros(2, 6, dtype=torch.float64)})
    # The message names the architecture class attribute ("sae"), not cfg.architecture: see the report.
    with pytest.raises(ValueError, match=r"needs a \{hook: tensor\} batch with \['h.out'\]"):
        model.compute_loss(torch.zeros(2, 6, dtype=torch.float64))


def test_fold_scales_with_unequal_sae_scales() -> None:
    model = make("sae", "relu", "l1", True, training=False)
    with torch.no_grad():
        model.output_scale.mul_(1.7)  # b_dec is subtracted in input space but stored in output space
    folded = copy.deepcopy(model)
    folded.fold_scales_()
    x = data("sae")[1]
    with torch.no_grad():
        close(folded(x), model(x), "forward after fold", {"rtol": 1e-12, "atol": 1e-12})
