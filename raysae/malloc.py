"""glibc malloc settings for processes that run a model's forward passes on CPU.

A forward pass allocates and frees the same MiB-sized tensors every call. glibc serves blocks over its
mmap threshold with fresh ``mmap`` calls (the threshold starts at 128 KiB and rises only as such blocks
are freed) and returns free memory at the top of a heap to the kernel once it exceeds the trim
threshold, so forward passes fault their pages in again and again: SmolLM2 forwards over 8 windows of
128 tokens in a Ray replica took 1,000-2,000 minor page faults and 16-32 ms of system time each (of
~190 ms), the plain loop up to 17,000 faults and 40 ms. Keeping freed memory: 8 faults, 4 ms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
"""glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit): blocks up to 32 MiB come from the heap and are reused."""
TRIM_THRESHOLD = 2**30
"""Free memory at the top of a heap kept up to 1 GiB (default: twice the mmap threshold)."""
ENV = "RAYSAE_MALLOC_TUNING"
"""Set to 0 to leave malloc's defaults (a benchmark's baseline, or another allocator preloaded)."""

_applied = False


def keep_freed_memory() -> bool:
    """Make this process's glibc malloc keep and reuse freed memory instead of handing it back and
    faulting it in again; True when the settings are in effect. Once per process; a no-op off glibc
    (macOS, musl) or with ``RAYSAE_MALLOC_TUNING=0``. The cost: up to ``TRIM_THRESHOLD`` of freed
    memory stays mapped in a process that holds a model anyway."""
    global _applied
    if _applied or not sys.platform.startswith("linux") or os.environ.get(ENV, "1") == "0":
        return _applied
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError) as err:  # not glibc
        log.debug("malloc settings unavailable: %s", err)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    return _applied
