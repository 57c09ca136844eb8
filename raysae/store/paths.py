"""Where raysae keeps its files: ``$RAYSAE_HOME`` (default ``~/.cache/raysae``)."""

from __future__ import annotations

import os
from pathlib import Path


def raysae_home() -> Path:
    """raysae's home folder: ``$RAYSAE_HOME`` when set and non-empty, else ``~/.cache/raysae``."""
    value = os.environ.get("RAYSAE_HOME", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "raysae"


def local_store_dir() -> Path:
    """Folder of the local store started by ``raysae store start``: ``$RAYSAE_HOME/store``."""
    return raysae_home() / "store"
