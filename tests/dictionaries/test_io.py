"""Save/load round trips for every architecture, and clear errors for broken dictionary folders."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from dict_reference import COMMON, close, randomize_
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from raysae.dictionaries import DictionaryFormatError, SparseDictionary, build_dictionary, load_dictionary
from raysae.dictionaries.io import CHECKSUMS_KEY, CONFIG_FILE, WEIGHTS_FILE, save_dictionary

B, D, S, G = 5, 6, 10, 3
ARCH_HOOKS = {
    "sae": {"hook_point_in": "h"},
    "transcoder": {"hook_point_in": "h.in", "hook_point_out": "h.out"},
    "clt": {"hook_points_in": ["i0", "i1", "i2"], "hook_points_out": ["o0", "o1", "o2"]},
    "crosscoder": {"hook_points": ["a", "b", "c"]},
}
ARCHS = list(ARCH_HOOKS)
ACTS = ["relu", "topk", "batchtopk", "jumprelu"]


def build(arch: str, act: str = "relu", glu: bool = False) -> SparseDictionary:
    cfg = {"architecture": arch, "act_fn": act, "glu_encoder": glu, **COMMON, **ARCH_HOOKS[arch]}
    model = build_dictionary(cfg)
    randomize_(model, seed=0, same_scales=arch == "sae")
    return model.eval()


def raw_input(arch: str) -> Tensor:
    shape = (B, D) if arch in ("sae", "transcoder") else (B, G, D)
    return 2.0 * torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def assert_same_state(a: SparseDictionary, b: SparseDictionary) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("glu", [False, True], ids=["plain", "glu"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip(tmp_path: Path, arch: str, act: str, glu: bool) -> None:
    model = build(arch, act, glu)
    assert not torch.all(model.input_scale == 1) and not torch.all(model.output_scale == 1)
    before = copy.deepcopy(model)
    path = model.save(tmp_path / "dict")
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert_same_state(model, before)  # saving folds a copy, never the live model

    loaded = load_dictionary(path).eval()
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    assert torch.all(loaded.input_scale == 1) and torch.all(loaded.output_scale == 1)
    folded = copy.deepcopy(model)
    folded.fold_scales_()
    assert_same_state(loaded, folded)
    x = raw_input(arch)
    with torch.no_grad():
        assert torch.equal(loaded(x), folded(x))
        assert torch.equal(loaded.encode(x), folded.encode(x))
        tight = {"rtol": 1e-12, "atol": 1e-12}
        close(loaded.encode(x), model.encode(x), "latents on raw activations", tight)
        close(loaded(x), model(x), "outputs on raw activations", tight)


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_without_folding(tmp_path: Path, arch: str) -> None:
    model = build(arch, "jumprelu", glu=True)
    loaded = load_dictionary(save_dictionary(model, tmp_path / "d", fold_scales=False)).eval()
    assert_same_state(loaded, model)
    x = raw_input(arch)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_metadata_overwrite_and_device(tmp_path: Path) -> None:
    model = build("clt", "batchtopk")
    path = model.save(tmp_path / "d")
    with safe_open(str(path / WEIGHTS_FILE), "pt") as f:
        assert f.metadata() == {"raysae_format": "1", "architecture": "clt"}
        assert "W_dec.2" in set(f.keys())
    assert json.loads((path / CONFIG_FILE).read_text())["architecture"] == "clt"
    other = build("crosscoder")
    other.save(path)  # replaces the old folder, leaves nothing else behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    loaded = load_dictionary(path, device="cpu")
    assert loaded.cfg.architecture == "crosscoder" and loaded.input_scale.device == torch.device("cpu")


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return build("transcoder", "topk").save(tmp_path / "d")


def test_missing_folder_and_files(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(DictionaryFormatError, match=rf"{CONFIG_FILE}: missing"):
        load_dictionary(tmp_path / "nowhere")
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(DictionaryFormatError, match=rf"{WEIGHTS_FILE}: missing"):
        load_dictionary(saved)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_safetensors(saved: Path, damage: str) -> None:
    weights = saved / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(
        {"garbage": b"not a safetensors file", "truncated": data[: len(data) // 2], "empty": b""}[damage]
    )
    with pytest.raises(DictionaryFormatError, match=rf"{WEIGHTS_FILE}: cannot read safetensors") as err:
        load_dictionary(saved)
    assert str(saved) in str(err.value)


def test_shape_mismatch_names_tensor(saved: Path) -> None:
    cfg = json.loads((saved / CONFIG_FILE).read_text())
    (saved / CONFIG_FILE).write_text(json.dumps(cfg | {"d_sae": 12}))
    with pytest.raises(DictionaryFormatError) as err:
        load_dictionary(saved)
    msg = str(err.value)
    assert WEIGHTS_FILE in msg and CONFIG_FILE in msg
    assert "tensor 'W_enc' has shape (6, 10), config implies (6, 12)" in msg
    assert "'W_dec'" in msg and "'b_enc'" in msg


def test_clt_layer_mismatch_names_tensors(tmp_path: Path) -> None:
    path = build("clt").save(tmp_path / "clt")
    cfg = json.loads((path / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text(
        json.dumps(cfg | {"hook_points_in": ["i0", "i1"], "hook_points_out": ["o0", "o1"]})
    )
    with pytest.raises(DictionaryFormatError, match=r"unexpected tensor 'W_dec\.2'") as err:
        load_dictionary(path)
    assert "tensor 'W_dec.0' has shape (10, 3, 6), config implies (10, 2, 6)" in str(err.value)


def test_missing_and_extra_tensors(saved: Path) -> None:
    tensors = load_dictionary(saved).state_dict()
    tensors = {k: v.contiguous() for k, v in tensors.items() if k != "b_dec"}
    tensors["W_extra"] = torch.zeros(2)
    save_file(tensors, str(saved / WEIGHTS_FILE))
    with pytest.raises(DictionaryFormatError, match=r"missing tensor 'b_dec'.*unexpected tensor 'W_extra'"):
        load_dictionary(saved)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", f"{CONFIG_FILE}: not valid JSON"),
        (json.dumps({"architecture": "transcoder", "top_k": 0}), "top_k"),
        (json.dumps({"architecture": "nope"}), "nope"),
        (json.dumps({"architecture": "sae", "d_modle": 4}), "d_modle"),
    ],
    ids=["syntax", "bad-value", "unknown-architecture", "unknown-field"],
)
def test_invalid_config_json(saved: Path, text: str, expected: str) -> None:
    (saved / CONFIG_FILE).write_text(text)
    with pytest.raises(DictionaryFormatError, match=expected) as err:
        load_dictionary(saved)
    assert str(saved / CONFIG_FILE) in str(err.value)


def test_config_json_not_an_object(saved: Path) -> None:
    (saved / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(DictionaryFormatError, match=CONFIG_FILE):
        load_dictionary(saved)


def test_flipped_weight_bytes_fail_the_checksum(saved: Path) -> None:
    weights = saved / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # a tensor byte: safetensors itself still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(DictionaryFormatError, match=r"model\.safetensors: sha256 .* differs"):
        load_dictionary(saved)


def test_edited_settings_fail_the_checksum(saved: Path) -> None:
    cfg_file = saved / CONFIG_FILE
    data = json.loads(cfg_file.read_text())
    data["sparsity_coefficient"] = float(data.get("sparsity_coefficient", 1.0)) + 1.0
    cfg_file.write_text(json.dumps(data))
    with pytest.raises(DictionaryFormatError, match=r"config\.json: sha256 .* differs"):
        load_dictionary(saved)


def test_a_folder_saved_before_checksums_with_a_device_key_still_loads(saved: Path) -> None:
    """Folders written before checksums (and with the retired ``device`` setting) open as before."""
    before = load_dictionary(saved)
    cfg_file = saved / CONFIG_FILE
    data = json.loads(cfg_file.read_text())
    data.pop(CHECKSUMS_KEY)
    data["device"] = "cpu"
    cfg_file.write_text(json.dumps(data))
    after = load_dictionary(saved)
    assert after.cfg == before.cfg
    assert_same_state(before, after)
