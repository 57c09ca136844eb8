"""Model loading: the raysae home, the cached bundled folder, local folders, atomic saves, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from raysae.config.data import ModelConfig
from raysae.lm.bundled import _atomic_save
from raysae.lm.errors import ModelLoadError
from raysae.lm.loader import bundled_model_folder, load_model, raysae_home, resolve_device
from raysae.lm.model import LanguageModel


def test_raysae_home_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYSAE_HOME", str(tmp_path / "home"))
    assert raysae_home() == tmp_path / "home"
    monkeypatch.delenv("RAYSAE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert raysae_home() == tmp_path / "xdg" / "raysae"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.slow
def test_bundled_model_is_cached_as_a_plain_folder(smollm):
    folder = bundled_model_folder("float32")
    assert folder.is_relative_to(raysae_home() / "models")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not list(folder.parent.glob(".tmp-*")), "a temporary folder was left behind"
    assert (smollm.n_layers, smollm.d_model, smollm.d_vocab) == (30, 576, 49152)
    # Loading the folder by path gives the same model.
    other = LanguageModel.from_config(ModelConfig(name=str(folder), device="cpu"))
    assert torch.equal(other.hf_model.lm_head.weight, smollm.hf_model.lm_head.weight)


@pytest.mark.slow
def test_bfloat16_model(smollm):
    lm16 = LanguageModel.from_config(ModelConfig(dtype="bfloat16", device="cpu"))
    assert lm16.dtype == torch.bfloat16
    tokens = smollm.to_tokens("To be, or not to be, that is the question.")
    a16 = lm16.run_with_hooks(tokens, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]
    a32 = smollm.run_with_hooks(tokens, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]
    assert a16.dtype == torch.bfloat16
    rel = (a16.float() - a32).norm() / a32.norm()
    assert rel < 0.05


def test_atomic_save_and_local_folder(tmp_path, smollm_tokenizer):
    cfg = LlamaConfig(
        vocab_size=smollm_tokenizer.vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    folder = tmp_path / "tiny"
    _atomic_save(model, smollm_tokenizer, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    lm = LanguageModel.from_config(ModelConfig(name=str(folder), device="cpu"))
    tokens = lm.to_tokens("hello world")
    cache = lm.run_with_hooks(tokens, ["blocks.1.hook_resid_post"])
    assert cache["blocks.1.hook_resid_post"].shape == (1, tokens.shape[1], 16)
    with torch.inference_mode():
        torch.testing.assert_close(lm.forward(tokens)[0], model(tokens).logits)


def test_load_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(ModelConfig(name=str(tmp_path / "empty")))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import: patch it
    with pytest.raises(ModelLoadError, match="cannot load model 'nobody/no-such-model'"):
        load_model(ModelConfig(name="nobody/no-such-model"))


@pytest.fixture(scope="module")
def smollm_tokenizer():
    from raysae.lm.loader import load_tokenizer

    return load_tokenizer(ModelConfig())


def test_unsupported_architecture(smollm_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=8, n_layer=1, n_head=1, vocab_size=100))
    with pytest.raises(ModelLoadError, match="model type 'gpt2' is not supported"):
        LanguageModel(gpt2, smollm_tokenizer)


def test_model_path_that_is_a_file(tmp_path):
    f = Path(tmp_path / "model.bin")
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError):
        load_model(ModelConfig(name=str(f)))
