"""Where the local store keeps its files: under raysae's one home folder (``raysae.home``)."""

from __future__ import annotations

from pathlib import Path

from raysae.home import raysae_home


def local_store_dir() -> Path:
    """Folder of the local store started by ``raysae store start``: ``raysae_home() / "store"``."""
    return raysae_home() / "store"
