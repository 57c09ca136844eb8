"""Fixtures of the data tests: the real SmolLM2 tokenizer and model, loaded once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from raysae.config.data import ModelConfig
    from raysae.lm.loader import load_tokenizer

    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="session")
def smollm():
    """The bundled model in fp32 on CPU."""
    from raysae.config.data import ModelConfig
    from raysae.lm.model import LanguageModel

    return LanguageModel.from_config(ModelConfig(device="cpu"))
