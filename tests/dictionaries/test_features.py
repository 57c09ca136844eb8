"""What analysis and serving ask of every architecture: groups, their hooks, flat encoding, write
directions and the model-compatibility check, against plain references in float64."""

from __future__ import annotations

import pytest
import torch
from dict_reference import COMMON, close, randomize_
from torch import Tensor

from raysae.dictionaries import DictionaryCompatibilityError, SparseDictionary, build_dictionary
from raysae.errors import RaysaeError
from raysae.lm.hooks import parse_hook

D = COMMON["d_model"]
S = COMMON["d_sae"]
N = 7
CLT_IN = [f"blocks.{i}.hook_mlp_in" for i in range(3)]
CLT_OUT = [f"blocks.{i}.hook_mlp_out" for i in range(3)]
# The head nearest the unembedding is neither first nor last in the list.
CC_HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_mid", "blocks.2.hook_resid_post"]
ARCH_HOOKS = {
    "sae": {"hook_point_in": "blocks.2.hook_resid_post"},
    "transcoder": {"hook_point_in": "blocks.2.hook_mlp_in", "hook_point_out": "blocks.2.hook_mlp_out"},
    "clt": {"hook_points_in": CLT_IN, "hook_points_out": CLT_OUT},
    "crosscoder": {"hook_points": CC_HOOKS},
}
ARCHS = list(ARCH_HOOKS)
# (n_groups, hook of each group, layer of each group)
EXPECTED = {
    "sae": (1, ["blocks.2.hook_resid_post"], [None]),
    "transcoder": (1, ["blocks.2.hook_mlp_in"], [None]),
    "clt": (3, CLT_IN, [0, 1, 2]),
    "crosscoder": (1, ["+".join(CC_HOOKS)], [None]),
}


def build(arch: str, act: str = "relu") -> SparseDictionary:
    model = build_dictionary(
        {"architecture": arch, "act_fn": act, **COMMON, **ARCH_HOOKS[arch]}, device="cpu"
    )
    randomize_(model, seed=3)
    return model.eval()


def rows(model: SparseDictionary, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(5)
    return {h: 2.0 * torch.randn(N, D, generator=g).to(dtype) for h in model.hooks_in}


# ---- the reference write directions: the formulas of analysis/layout.decoder_directions before the move --


def old_decoder_directions(
    model: SparseDictionary, group: int, index: Tensor, n_layers: int | None
) -> Tensor:
    arch = model.cfg.architecture
    out_scale = model.output_scale
    if arch == "clt":
        n = model.latent_shape[0]
        parts = [model.decoder(group, j)[index] / out_scale[j] for j in range(group, n)]  # type: ignore[operator]
        return torch.stack(parts).sum(0)
    if arch == "crosscoder":
        hooks = model.hooks_in
        head = max(range(len(hooks)), key=lambda h: parse_hook(hooks[h], n_layers).order)
        return model.W_dec[head][index] / out_scale[head]  # type: ignore[index]
    return model.W_dec[index] / out_scale  # type: ignore[index]


@torch.no_grad()
def decoded_directions(model: SparseDictionary, group: int, index: Tensor, n_layers: int | None) -> Tensor:
    """From the maths alone: decode a unit latent and subtract the bias; sum what reaches the residual."""
    out = []
    for i in index.tolist():
        z = torch.zeros(1, *model.latent_shape, dtype=torch.float64)
        z.view(1, -1)[0, group * S + i] = 1.0
        delta = (model.decode(z) - model.decode(torch.zeros_like(z)))[0]
        if model.cfg.architecture == "clt":
            out.append(delta.sum(0))  # every layer's output joins the residual stream
        elif model.cfg.architecture == "crosscoder":
            orders = [parse_hook(h, n_layers).order for h in model.hooks_in]
            out.append(delta[orders.index(max(orders))])
        else:
            out.append(delta)
    return torch.stack(out)


# ---- groups and hooks ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_groups_and_their_hooks(arch: str) -> None:
    model = build(arch)
    n_groups, hooks, layers = EXPECTED[arch]
    assert model.n_groups == n_groups and model.n_features == n_groups * S
    assert [model.group_hook(g) for g in range(n_groups)] == hooks == model.feature_hooks()
    assert [model.group_layer(g) for g in range(n_groups)] == layers
    for bad in (-1, n_groups):
        with pytest.raises(IndexError, match="out of range"):
            model.group_hook(bad)
        with pytest.raises(IndexError, match="out of range"):
            model.group_layer(bad)


@pytest.mark.parametrize(("arch", "subtracts"), [("sae", True), ("transcoder", False)])
def test_only_an_sae_subtracts_its_decoder_bias(arch: str, subtracts: bool) -> None:
    assert build(arch).subtracts_b_dec is subtracts  # type: ignore[attr-defined]


# ---- flat encoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["relu", "topk", "jumprelu"])
@pytest.mark.parametrize("arch", ARCHS)
def test_encode_flat(arch: str, act: str) -> None:
    model = build(arch, act)
    acts = rows(model)
    x = model.prepare_input(acts)
    with torch.no_grad():
        want = model.encode(x).reshape(N, -1)
    extra = {"blocks.9.hook_resid_pre": torch.full((N, D), torch.nan), **acts}  # ignored
    got = model.encode_flat(extra)
    assert got.shape == (N, model.n_features) and not got.requires_grad
    close(got, want, "encode_flat")
    # group g's latents sit at g * d_sae + index
    if model.n_groups > 1:
        close(got[:, S : 2 * S], want.reshape(N, model.n_groups, S)[:, 1], "second group")
    # rows of another dtype are cast to the dictionary's
    close(
        model.encode_flat({h: a.float() for h, a in acts.items()}),
        model.encode_flat({h: a.float().double() for h, a in acts.items()}),
        "float32 rows",
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_flat_names_a_missing_hook(arch: str) -> None:
    model = build(arch)
    acts = rows(model)
    acts.pop(model.hooks_in[-1])
    with pytest.raises(KeyError, match=model.hooks_in[-1].replace(".", r"\.")):
        model.encode_flat(acts)


# ---- write directions ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_write_directions_match_the_old_formula_and_the_maths(arch: str) -> None:
    model = build(arch)
    assert not torch.all(model.output_scale == 1)
    index = torch.tensor([7, 0, 3, 3])
    for group in range(model.n_groups):
        got = model.write_directions(group, index, n_layers=6)
        assert got.shape == (len(index), D)
        close(got, old_decoder_directions(model, group, index, 6), f"group {group} vs the old formula")
        close(got, decoded_directions(model, group, index, 6), f"group {group} vs decoding a unit latent")
    with pytest.raises(IndexError, match="out of range"):
        model.write_directions(model.n_groups, index)


@pytest.mark.parametrize("arch", ARCHS)
def test_write_directions_survive_folding_the_scales(arch: str) -> None:
    model = build(arch)
    index = torch.arange(S)
    before = [model.write_directions(g, index, 6) for g in range(model.n_groups)]
    model.fold_scales_()
    for g in range(model.n_groups):
        close(model.write_directions(g, index, 6), before[g], f"group {g}")


def test_crosscoder_writes_through_its_final_norm_head() -> None:
    hooks = ["blocks.2.hook_resid_post", "ln_final.hook_normalized", "blocks.3.hook_resid_post"]
    model = build_dictionary({"architecture": "crosscoder", **COMMON, "hook_points": hooks}, device="cpu")
    randomize_(model, seed=1)
    index = torch.tensor([1, 4])
    close(model.write_directions(0, index, n_layers=4), model.W_dec[1][index] / model.output_scale[1], "head")
    close(model.write_directions(0, index, 4), old_decoder_directions(model, 0, index, 4), "old formula")


# ---- compatibility with a model ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_compatible_model_passes(arch: str) -> None:
    build(arch).check_model_compatible("tiny", d_model=D, n_layers=4)


@pytest.mark.parametrize("arch", ARCHS)
def test_other_width_is_refused(arch: str) -> None:
    with pytest.raises(
        DictionaryCompatibilityError, match=rf"d_model={D} activations but tiny has d_model=64"
    ):
        build(arch).check_model_compatible("tiny", d_model=64, n_layers=4)


@pytest.mark.parametrize(
    ("arch", "hook"), [("sae", "blocks.2"), ("clt", "blocks.2"), ("crosscoder", "blocks.3")]
)
def test_hooks_beyond_the_model_are_refused(arch: str, hook: str) -> None:
    with pytest.raises(
        DictionaryCompatibilityError, match=rf"{hook}\..*tiny \(2 layers\).*layers 0\.\.1"
    ) as err:
        build(arch).check_model_compatible("tiny", d_model=D, n_layers=2)
    assert isinstance(err.value, RaysaeError) and isinstance(err.value, ValueError)


def test_unknown_hook_names_are_refused() -> None:
    model = build_dictionary({"architecture": "sae", **COMMON, "hook_point_in": "h"}, device="cpu")
    with pytest.raises(DictionaryCompatibilityError, match=r"hook 'h' does not fit tiny.*unknown hook point"):
        model.check_model_compatible("tiny", d_model=D, n_layers=4)
