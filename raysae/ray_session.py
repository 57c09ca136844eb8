"""Joining or starting Ray the same way in every raysae command."""

from __future__ import annotations

import os


def ensure_ray(address: str | None = None, **init_kwargs) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), else start a private local cluster; returns True when this
    call initialised Ray (so the caller shuts it down). A private local cluster turns token auth off
    (``RAY_AUTH_MODE=disabled``, unless set): nothing else can reach it, and no token file is written."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if address is None and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        address = "local"  # always a new cluster, never a stray one found on this machine
    ray.init(address=address, **init_kwargs)
    return True
