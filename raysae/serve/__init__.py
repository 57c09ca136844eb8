"""Ray Serve applications (FastAPI ingress) and the feature-browser page.

Names are imported on first use, so ``raysae.serve.commands`` (the CLI) loads without Ray or FastAPI.
"""

from __future__ import annotations

from raysae._lazy import lazy_exports

_EXPORTS = {
    "ActivationModel": "raysae.serve.activations",
    "FeatureAPI": "raysae.serve.api",
    "FeatureActivations": "raysae.serve.activations",
    "RequestError": "raysae.serve.activations",
    "ServeConfig": "raysae.config.serve",
    "app": "raysae.serve.api",
    "app_builder": "raysae.serve.app",
    "build_app": "raysae.serve.app",
    "config_from_args": "raysae.serve.app",
    "render_browser": "raysae.serve.browser",
    "start_local": "raysae.serve.app",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
