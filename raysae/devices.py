"""Turning a device name from a config into a ``torch.device``."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``"auto"`` (or None) is cuda when available, else cpu; anything else goes to ``torch.device``."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
