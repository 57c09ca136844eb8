"""Cross-layer transcoder against a plain per-layer loop reference: outputs, loss parts, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from dict_reference import ACT_CASES, ACT_IDS, COMMON, check_inference, check_loss, close, randomize_
from torch import Tensor

from raysae.config import CLTConfig
from raysae.dictionaries import LATENT, build_dictionary
from raysae.dictionaries.clt import CrossLayerTranscoder

B, L, D, S = 8, 3, 6, 10
HOOKS_IN = [f"blocks.{i}.hook_mlp_in" for i in range(L)]
HOOKS_OUT = [f"blocks.{i}.hook_mlp_out" for i in range(L)]


def dec(P: dict[str, Tensor], i: int, j: int) -> Tensor:
    """Decoder i→j in the documented storage: W_dec.{i}[:, j - i]."""
    return P[f"W_dec.{i}"][:, j - i]


class CLTRef:
    """Layer by layer: pre_l = x_l W_enc[l] + b_enc[l] [· σ(...)]; ŷ_j = Σ_{i≤j} z_i W[i→j] + b_dec[j]."""

    def __init__(self, glu: bool) -> None:
        self.glu = glu

    def encode_pre(self, P: dict[str, Tensor], x: Tensor) -> Tensor:
        layers = []
        for k in range(L):
            pre = x[:, k] @ P["W_enc"][k] + P["b_enc"][k]
            if self.glu:
                pre = pre * torch.sigmoid(x[:, k] @ P["W_glu"][k] + P["b_glu"][k])
            layers.append(pre)
        return torch.stack(layers, dim=1)

    def decode(self, P: dict[str, Tensor], z: Tensor, bias: bool = True) -> Tensor:
        outs = []
        for j in range(L):
            out = P["b_dec"][j].expand(z.shape[0], D) if bias else torch.zeros(z.shape[0], D, dtype=z.dtype)
            for i in range(j + 1):
                out = out + z[:, i] @ dec(P, i, j)
            outs.append(out)
        return torch.stack(outs, dim=1)

    def norms(self, P: dict[str, Tensor]) -> Tensor:
        rows = []
        for i in range(L):
            concat = torch.cat([dec(P, i, j) for j in range(i, L)], dim=1)  # [S, (L - i) * D]
            rows.append(concat.pow(2).sum(1).sqrt())
        return torch.stack(rows)


def make(act: str, penalty: str, glu: bool, training: bool = True, **kw) -> CrossLayerTranscoder:
    cfg = CLTConfig(
        act_fn=act,
        sparsity_penalty=penalty,
        glu_encoder=glu,
        hook_points_in=HOOKS_IN,
        hook_points_out=HOOKS_OUT,
        **COMMON,
        **kw,
    )
    model = build_dictionary(cfg)
    assert isinstance(model, CrossLayerTranscoder)
    randomize_(model, seed=0)
    return model.train(training)


def data(seed: int = 1) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(B, L, D, dtype=torch.float64, generator=g)
    y = 1.5 * torch.randn(B, L, D, dtype=torch.float64, generator=g)
    batch = {h: x[:, i] for i, h in enumerate(HOOKS_IN)} | {h: y[:, i] for i, h in enumerate(HOOKS_OUT)}
    return batch, x, y


def test_shapes_and_layout() -> None:
    model = make("relu", "l1", True)
    assert model.latent_shape == (L, S)
    assert model.input_scale.shape == (L,) and model.output_scale.shape == (L,)
    assert model.W_enc.shape == (L, D, S) and model.b_enc.shape == (L, S) and model.W_glu.shape == (L, D, S)
    assert model.b_dec.shape == (L, D)
    assert [tuple(w.shape) for w in model.W_dec] == [(S, L - i, D) for i in range(L)]
    n_decoders = sum(w.shape[1] for w in model.W_dec)
    assert n_decoders == L * (L + 1) // 2
    for i in range(L):
        for j in range(i, L):
            d = model.decoder(i, j)
            assert d.shape == (S, D)
            assert d.data_ptr() == model.W_dec[i][:, j - i].data_ptr()  # a view, not a copy
    for i, j in [(1, 0), (0, L), (-1, 0)]:
        with pytest.raises(IndexError, match="no decoder"):
            model.decoder(i, j)
    assert model.hooks_in == HOOKS_IN and model.hooks_out == HOOKS_OUT
    names = {n for n, _ in model.named_parameters()}
    assert {f"W_dec.{i}" for i in range(L)} <= names


def test_init() -> None:
    model = build_dictionary(CLTConfig(hook_points_in=HOOKS_IN, hook_points_out=HOOKS_OUT, **COMMON))
    for layer in range(L):
        torch.testing.assert_close(model.W_enc[layer], model.decoder(layer, layer).T, rtol=0, atol=0)
    assert torch.all(model.b_enc == 0) and torch.all(model.b_dec == 0)
    for i in range(L):
        for j in range(i, L):
            d = model.decoder(i, j)
            assert d.abs().max() <= 1.0 and d.abs().max() > 0.3  # kaiming bound sqrt(6 / d_model) = 1
    assert not torch.equal(model.decoder(0, 0), model.decoder(0, 1))
    randomize_(model)
    model.tie_encoder_to_decoder_()
    for layer in range(L):
        torch.testing.assert_close(model.W_enc[layer], model.decoder(layer, layer).T, rtol=0, atol=0)
    model.reset_parameters()
    assert all(torch.all(getattr(model, b) == 0) for b in ("b_enc", "b_dec"))


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize(("act", "penalty", "training"), ACT_CASES, ids=ACT_IDS)
def test_matches_reference(act: str, penalty: str, training: bool, glu: bool) -> None:
    model = make(act, penalty, glu, training)
    batch, x, y = data()
    check_inference(model, x, CLTRef(glu))
    check_loss(model, batch, x, y, CLTRef(glu))


@pytest.mark.parametrize("k_aux", [2, 8])
@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize("act", ["topk", "batchtopk"])
def test_aux_k_loss(act: str, glu: bool, k_aux: int) -> None:
    model = make(act, "l1", glu)
    batch, x, y = data()
    dead = torch.zeros(L, S, dtype=torch.bool)
    dead[1, ::3] = True  # 4 dead
    dead[2, 1:8] = True  # 7 dead; layer 0 has none
    parts = check_loss(model, batch, x, y, CLTRef(glu), dead=dead, k_aux=k_aux, aux_coef=0.5)
    assert parts["aux_k"] > 0


def test_topk_is_per_layer() -> None:
    model = make("topk", "l1", False)
    with torch.no_grad():
        model.b_enc.fill_(10.0)  # every pre-activation positive: exactly k per token and layer
        z = model.encode(data()[1])
    assert torch.all((z > 0).sum(-1) == COMMON["top_k"])


def test_decoder_is_causal() -> None:
    """A latent of layer i writes to layers j >= i only, through decoder(i, j)."""
    model = make("relu", "l1", False)
    for i in range(L):
        z = torch.zeros(1, L, S, dtype=torch.float64)
        z[0, i, 4] = 2.0
        with torch.no_grad():
            out = model.decode_scaled(z) - model.b_dec
        for j in range(L):
            expected = 2.0 * model.decoder(i, j)[4] if j >= i else torch.zeros(D, dtype=torch.float64)
            close(out[0, j], expected, f"decode {i}->{j}")


def test_decoder_norm_operations() -> None:
    model = make("relu", "l1", False)
    P = {n: p.detach().clone() for n, p in model.named_parameters()}
    close(model.decoder_norms(), CLTRef(False).norms(P), "decoder_norms")
    model.set_decoder_norm_(1.0)
    close(model.decoder_norms(), torch.ones(L, S, dtype=torch.float64), "set_decoder_norm_")
    factor = torch.linspace(0.5, 1.5, L * S, dtype=torch.float64).reshape(L, S)
    model.scale_decoder_(factor)
    close(model.decoder_norms(), factor, "scale_decoder_")
    for i in range(L):  # every decoder of a latent scaled by the same factor
        close(
            model.decoder(i, L - 1),
            dec(P, i, L - 1) * (factor[i] / CLTRef(False).norms(P)[i])[:, None],
            "dir",
        )

    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(w.shape, dtype=torch.float64, generator=g) for w in model.W_dec]
    for w, gr in zip(model.W_dec, grads, strict=True):
        w.grad = gr.clone()
    model.project_decoder_grad_()
    for i, w in enumerate(model.W_dec):
        for s in range(S):
            v, gv = w[s].detach().flatten(), grads[i][s].flatten()  # latent (i, s)'s concatenated decoders
            expected = gv - (gv @ v) * v / (v @ v)
            close(w.grad[s].flatten(), expected, f"projected grad of latent ({i}, {s})")
    directional = [(w.grad * w.detach()).sum((1, 2)) for w in model.W_dec]
    close(torch.stack(directional), torch.zeros(L, S, dtype=torch.float64), "norm-preserving")


def test_project_skips_missing_grad() -> None:
    model = make("relu", "l1", False)
    model.W_dec[1].grad = torch.ones_like(model.W_dec[1])
    model.project_decoder_grad_()  # W_dec.0 and W_dec.2 have no grad: no error
    assert model.W_dec[0].grad is None


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize("act", ["relu", "topk", "batchtopk", "jumprelu"])
def test_fold_scales_preserves_function(act: str, glu: bool) -> None:
    model = make(act, "l1", glu, training=False)
    x = data()[1]
    assert len(set(model.input_scale.tolist())) == L and len(set(model.output_scale.tolist())) == L
    folded = copy.deepcopy(model)
    folded.fold_scales_()
    assert torch.all(folded.input_scale == 1) and torch.all(folded.output_scale == 1)
    with torch.no_grad():
        close(folded.encode(x), model.encode(x), "encode after fold", {"rtol": 1e-12, "atol": 1e-12})
        close(folded(x), model(x), "forward after fold", {"rtol": 1e-12, "atol": 1e-12})
    for i in range(L):  # decoder i→j divided by output_scale[j]
        for j in range(i, L):
            expected = model.decoder(i, j) / model.output_scale[j]
            close(folded.decoder(i, j), expected, f"folded decoder {i}->{j}", {"rtol": 1e-14, "atol": 0})


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize("act", ["relu", "batchtopk", "jumprelu"])
def test_param_dims_cover_every_tensor(act: str, glu: bool) -> None:
    model = make(act, "l1", glu)
    dims = model.param_dims()
    for name, t in model.state_dict().items():
        key = "W_dec" if name.startswith("W_dec.") else name  # ParameterList entries share one entry
        assert key in dims, name
        assert len(dims[key]) == t.dim(), (name, dims[key], t.shape)
        sizes = dict(zip(dims[key], t.shape, strict=True))
        assert sizes.get(LATENT, S) == S, name
        assert sizes.get("layer", L) == L, name


def test_prepare_batch() -> None:
    model = make("relu", "l1", False)
    batch, x, y = data()
    torch.testing.assert_close(model.prepare_input(batch), x, rtol=0, atol=0)
    torch.testing.assert_close(model.prepare_label(batch), y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs a"):
        model.prepare_label(x)
    del batch[HOOKS_OUT[2]]
    with pytest.raises(KeyError, match="hook_mlp_out"):
        model.compute_loss(batch)


def test_single_layer_clt_is_a_transcoder() -> None:
    """With L = 1 a CLT computes exactly what a transcoder with the same weights computes."""
    from raysae.config import SAEConfig

    clt = build_dictionary(
        CLTConfig(hook_points_in=["a"], hook_points_out=["b"], act_fn="topk", glu_encoder=True, **COMMON)
    )
    randomize_(clt)
    tc = build_dictionary(
        SAEConfig(
            architecture="transcoder",
            hook_point_in="a",
            hook_point_out="b",
            act_fn="topk",
            glu_encoder=True,
            **COMMON,
        )
    )
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_glu", "b_glu", "b_dec"):
            getattr(tc, name).copy_(getattr(clt, name)[0])
        tc.W_dec.copy_(clt.decoder(0, 0))
        tc.input_scale.copy_(clt.input_scale[0])
        tc.output_scale.copy_(clt.output_scale[0])
    batch = {"a": torch.randn(5, D, dtype=torch.float64), "b": torch.randn(5, D, dtype=torch.float64)}
    out_clt, out_tc = clt.compute_loss(batch), tc.compute_loss(batch)
    close(out_clt.loss, out_tc.loss, "loss")
    close(out_clt.feature_acts[:, 0], out_tc.feature_acts, "latents")
