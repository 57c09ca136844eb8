"""Feature analysis: per-feature statistics, top-activating and quantile-sampled examples, and direct
logit attribution, computed by a Ray Data actor pool, merged exactly and written to MongoDB.

Names are imported on first use, so ``import raysae.analysis.commands`` (the CLI) stays light.
"""

from __future__ import annotations

from raysae._lazy import lazy_exports

_EXPORTS = {
    "AnalysisError": "raysae.analysis.worker",
    "AnalysisResult": "raysae.analysis.job",
    "DLAReadout": "raysae.analysis.dla",
    "FeatureAnalyzer": "raysae.analysis.worker",
    "FeatureLayout": "raysae.analysis.layout",
    "Partial": "raysae.analysis.partial",
    "StatsMerger": "raysae.analysis.merge",
    "analyze": "raysae.analysis.job",
    "feature_documents": "raysae.analysis.documents",
    "histogram_edges": "raysae.analysis.partial",
    "sample_keys": "raysae.analysis.partial",
    "top_dla_tokens": "raysae.analysis.dla",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
