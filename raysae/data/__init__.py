"""Text sources, token windows, the Ray Data activation pipeline and the activation cache.

Names are imported on first use, so ``import raysae.data.commands`` (the CLI) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActivationCache": "raysae.data.reader",
    "ActivationExtractor": "raysae.data.extract",
    "ActivationSource": "raysae.data.extract",
    "CacheCorruptError": "raysae.data.manifest",
    "CacheError": "raysae.data.manifest",
    "CacheMismatchError": "raysae.data.manifest",
    "Manifest": "raysae.data.manifest",
    "ResourceError": "raysae.data.resources",
    "ResourcePlan": "raysae.data.resources",
    "TextSourceError": "raysae.data.sources",
    "WindowActivations": "raysae.data.extract",
    "WindowBatch": "raysae.data.tokens",
    "activation_dataset": "raysae.data.pipeline",
    "activation_rows": "raysae.data.extract",
    "cluster_plan": "raysae.data.resources",
    "iter_documents": "raysae.data.sources",
    "iter_row_chunks": "raysae.data.pipeline",
    "pipeline_batches": "raysae.data.pipeline",
    "plan_resources": "raysae.data.resources",
    "read_manifest": "raysae.data.manifest",
    "rebatch": "raysae.data.batching",
    "token_windows": "raysae.data.tokens",
    "write_cache": "raysae.data.cache",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raysae.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
