"""Language-model backends behind one interface, with TransformerLens hook names.

``LanguageModel`` is the interface; ``NativeLanguageModel`` (Llama family, block by block) and
``BridgeLanguageModel`` (TransformerLens' TransformerBridge, any architecture it supports) implement
it, and ``LanguageModel.from_config`` picks one by ``ModelConfig.backend``. Names are imported on first
use, so importing ``raysae.lm.hooks`` does not load torch/transformers.
"""

from __future__ import annotations

from raysae._lazy import lazy_exports

_EXPORTS = {
    "BridgeLanguageModel": "raysae.lm.bridge",
    "HookError": "raysae.lm.errors",
    "HookPoint": "raysae.lm.hook_names",
    "LanguageModel": "raysae.lm.model",
    "ModelLoadError": "raysae.lm.errors",
    "NativeLanguageModel": "raysae.lm.native",
    "Unembed": "raysae.lm.model",
    "all_hook_names": "raysae.lm.hooks",
    "bundled_model_folder": "raysae.lm.bundled",
    "is_hook_name": "raysae.lm.hook_names",
    "load_model": "raysae.lm.loader",
    "load_tokenizer": "raysae.lm.loader",
    "parse_hook": "raysae.lm.hook_names",
    "raysae_home": "raysae.lm.loader",
    "resolve_device": "raysae.lm.loader",
    "stop_layer": "raysae.lm.hooks",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
