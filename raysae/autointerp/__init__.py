"""Automatic interpretation: explain stored features with any OpenAI-compatible chat model and score
the explanations (detection, fuzzing) beside a random baseline; results go to the store.

Names are imported on first use, so ``raysae.autointerp.commands`` (the CLI) loads without openai.
"""

from __future__ import annotations

from raysae._lazy import lazy_exports

_EXPORTS = {
    "AutointerpConfig": "raysae.config.autointerp",
    "AutointerpError": "raysae.autointerp.job",
    "AutointerpResult": "raysae.autointerp.job",
    "ChatClient": "raysae.autointerp.client",
    "EndpointError": "raysae.autointerp.client",
    "Usage": "raysae.autointerp.client",
    "explain_and_score": "raysae.autointerp.job",
    "explainer_id": "raysae.autointerp.work",
    "run_autointerp": "raysae.autointerp.job",
    "score_fields": "raysae.autointerp.work",
    "scorer_id": "raysae.autointerp.work",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
