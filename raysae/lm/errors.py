"""Errors of the language-model layer (kept free of heavy imports so the CLI can catch them cheaply)."""


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what was tried."""
