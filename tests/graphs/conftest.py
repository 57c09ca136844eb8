"""Fixtures of the graph tests: the bundled tokenizer and tiny random float64 Llama models."""

from __future__ import annotations

import pytest
from graph_helpers import tiny_llama

from raysae.config.data import ModelConfig
from raysae.lm.loader import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="session")
def lm3(tokenizer):
    return tiny_llama(tokenizer, 3)


@pytest.fixture(scope="session")
def lm2(tokenizer):
    return tiny_llama(tokenizer, 2, seed=1)


@pytest.fixture(scope="session")
def smollm():
    """The bundled SmolLM2-135M in float32 on CPU."""
    from raysae.lm.model import LanguageModel

    return LanguageModel.from_config(ModelConfig(device="cpu"))
