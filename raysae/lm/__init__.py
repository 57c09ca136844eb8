"""Language-model backends: the bundled SmolLM2 loader and a hooked model with TransformerLens hook names.

Names are imported on first use, so importing ``raysae.lm.hooks`` does not load torch/transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "HookError": "raysae.lm.hooks",
    "HookPoint": "raysae.lm.hooks",
    "LanguageModel": "raysae.lm.model",
    "ModelLoadError": "raysae.lm.errors",
    "Unembed": "raysae.lm.model",
    "all_hook_names": "raysae.lm.hooks",
    "bundled_model_folder": "raysae.lm.loader",
    "load_model": "raysae.lm.loader",
    "load_tokenizer": "raysae.lm.loader",
    "parse_hook": "raysae.lm.hooks",
    "raysae_home": "raysae.lm.loader",
    "resolve_device": "raysae.lm.loader",
    "stop_layer": "raysae.lm.hooks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raysae.lm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
