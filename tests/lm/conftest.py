"""The real SmolLM2-135M, loaded once for the language-model tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm():
    """The bundled model in fp32 on CPU (dequantised once into $RAYSAE_HOME, then ~0.3 s per load)."""
    from raysae.config.data import ModelConfig
    from raysae.lm.model import LanguageModel

    return LanguageModel.from_config(ModelConfig(device="cpu"))
