"""Where raysae keeps its local files (model cache, local store), in one place so they share a root."""

from __future__ import annotations

import os
from pathlib import Path


def raysae_home() -> Path:
    """``$RAYSAE_HOME`` when set and non-empty, else ``$XDG_CACHE_HOME/raysae``, else ``~/.cache/raysae``."""
    value = os.environ.get("RAYSAE_HOME", "").strip()
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "raysae"
