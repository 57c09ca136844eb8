"""Language-model backends: the bundled SmolLM2 loader and a hooked model with TransformerLens hook names.

Names are imported on first use, so importing ``raysae.lm.hooks`` does not load torch/transformers.
"""

from __future__ import annotations

from raysae._lazy import lazy_exports

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
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
