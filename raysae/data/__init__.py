"""Text sources, token windows, the Ray Data activation pipeline and the activation cache.

Names are imported on first use, so ``import raysae.data.commands`` (the CLI) stays light.
"""

from __future__ import annotations

from raysae._lazy import lazy_exports

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
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
