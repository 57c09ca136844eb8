"""The architecture registry and the dictionary config errors (loaded from YAML files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from raysae.config import CLTConfig, ConfigError, CrossCoderConfig, SAEConfig, load_config
from raysae.dictionaries import architectures, build_dictionary, get_architecture, register
from raysae.dictionaries.clt import CrossLayerTranscoder
from raysae.dictionaries.crosscoder import CrossCoder
from raysae.dictionaries.sae import SparseAutoencoder

CLASSES = {
    "sae": SparseAutoencoder,
    "transcoder": SparseAutoencoder,
    "clt": CrossLayerTranscoder,
    "crosscoder": CrossCoder,
}
SMALL = {"d_model": 4, "d_sae": 8, "top_k": 2}


def test_architectures_listed() -> None:
    assert set(CLASSES) <= set(architectures())
    for name, cls in CLASSES.items():
        assert get_architecture(name) is cls


@pytest.mark.parametrize(
    ("name", "extra", "hooks_in", "hooks_out"),
    [
        ("sae", {"hook_point_in": "a"}, ["a"], ["a"]),
        ("transcoder", {"hook_point_in": "a", "hook_point_out": "b"}, ["a"], ["b"]),
        ("clt", {"hook_points_in": ["a", "b"], "hook_points_out": ["c", "d"]}, ["a", "b"], ["c", "d"]),
        ("crosscoder", {"hook_points": ["a", "b"]}, ["a", "b"], ["a", "b"]),
    ],
)
def test_build_by_dict_and_config(name: str, extra: dict, hooks_in: list[str], hooks_out: list[str]) -> None:
    model = build_dictionary({"architecture": name, **SMALL, **extra})
    assert type(model) is CLASSES[name]
    assert model.cfg.architecture == name and model.d_sae == 8 and model.d_model == 4
    assert model.hooks_in == hooks_in and model.hooks_out == hooks_out
    again = build_dictionary(model.cfg)
    assert type(again) is CLASSES[name] and again.cfg == model.cfg


def test_dict_without_architecture_is_an_sae() -> None:
    model = build_dictionary({"d_model": 4, "expansion_factor": 2.0, "top_k": 2})
    assert type(model) is SparseAutoencoder and model.cfg.architecture == "sae" and model.d_sae == 8


def test_unknown_architecture() -> None:
    with pytest.raises(KeyError, match=r"unknown architecture 'nope'.*clt.*crosscoder.*sae.*transcoder"):
        get_architecture("nope")
    with pytest.raises(ValidationError, match="nope"):
        build_dictionary({"architecture": "nope", **SMALL})


def test_register_refuses_a_taken_name() -> None:
    class Impostor(SparseAutoencoder):
        pass

    with pytest.raises(ValueError, match="'clt' is already registered"):
        register("clt")(Impostor)
    assert get_architecture("clt") is CrossLayerTranscoder
    assert register("sae")(SparseAutoencoder) is SparseAutoencoder  # re-registering the same class is fine


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("model", "text", "expected"),
    [
        (SAEConfig, "top_k: 0\n", "top_k: Input should be greater than 0"),
        (SAEConfig, "d_modle: 5\n", "d_modle: Extra inputs are not permitted"),
        (SAEConfig, "act_fn: gelu\n", "act_fn: Input should be"),
        (SAEConfig, "d_model: -3\n", "d_model: Input should be greater than 0"),
        (
            SAEConfig,
            "sparsity_coefficient: -1\n",
            "sparsity_coefficient: Input should be greater than or equal",
        ),
        (
            SAEConfig,
            "batchtopk_threshold_momentum: 1.0\n",
            "batchtopk_threshold_momentum: Input should be less",
        ),
        (SAEConfig, "dtype: float8\n", "dtype: Input should be"),
        (SAEConfig, "d_sae: 8\ntop_k: 9\n", "top_k=9 exceeds d_sae=8"),
        (SAEConfig, "d_sae: null\nexpansion_factor: null\n", "set d_sae or expansion_factor"),
        (SAEConfig, "act_fn: relu\nsparsity_penalty: l0\n", "sparsity_penalty 'l0' needs act_fn 'jumprelu'"),
        (SAEConfig, "architecture: transcoder\n", "transcoder needs hook_point_out"),
        (SAEConfig, "hook_point_out: blocks.7.hook_resid_post\n", "use architecture 'transcoder'"),
        (CLTConfig, "hook_points_in: [a, b]\nhook_points_out: [c]\n", "hook_points_in has 2 layers"),
        (CLTConfig, "hook_points_in: []\nhook_points_out: []\n", "hook_points_in is empty"),
        (CLTConfig, "hook_points_in: a\n", "hook_points_in: Input should be a valid list"),
        (CrossCoderConfig, "hook_points: [a]\n", "at least two hook_points"),
        (CrossCoderConfig, "hook_points: [a, a]\n", "hook_points must be distinct"),
        (CrossCoderConfig, "architecture: clt\n", "architecture: Input should be 'crosscoder'"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, model: type, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, model)
    msg = str(err.value)
    assert expected in msg, msg
    assert str(path) in msg


def test_valid_yaml_and_unparsable_file(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            "d_model: 8\nexpansion_factor: 4\nhook_points_in: [a, b, c]\nhook_points_out: [d, e, f]\n",
        ),
        CLTConfig,
    )
    assert cfg.n_layers == 3 and cfg.latent_count == 32 and cfg.hooks == ["a", "b", "c", "d", "e", "f"]
    model = build_dictionary(cfg.model_copy(update={"top_k": 4}))
    assert model.latent_shape == (3, 32)
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(write(tmp_path, "d_model: [1,\n", "bad.yaml"), SAEConfig)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml", SAEConfig)


def test_bare_register_files_a_class_under_its_architecture_and_aliases() -> None:
    from raysae.dictionaries import registry

    class Renamed(SparseAutoencoder):
        architecture = "renamed_sae_for_test"
        aliases = ("renamed_alias_for_test",)

    try:
        assert register(Renamed) is Renamed
        assert get_architecture("renamed_sae_for_test") is Renamed
        assert get_architecture("renamed_alias_for_test") is Renamed
    finally:
        for name in ("renamed_sae_for_test", "renamed_alias_for_test"):
            registry._REGISTRY.pop(name, None)
