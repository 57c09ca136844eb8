"""Errors of the language-model layer (kept free of heavy imports so the CLI can catch them cheaply).

Both are user errors (``RaysaeError``: the CLI prints one line) and keep the builtin base that callers
already catch.
"""

from raysae.errors import RaysaeError


class ModelLoadError(RaysaeError, RuntimeError):
    """The model could not be found or loaded; the message says what was tried."""


class HookError(RaysaeError, ValueError):
    """A hook name that this model does not have."""
