"""raysae.malloc: a model process keeps freed memory instead of faulting it in again (page faults
counted in fresh processes, since the setting is process-wide).

glibc's own thresholds move with what was freed before, so a process left to its defaults faults in
some runs and not in others; the baseline here pins them to their starting values (128 KiB, through
glibc's environment variables), and ``keep_freed_memory`` must override them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from raysae.malloc import ENV

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")

# A forward pass's pattern: several MiB-sized blocks allocated, written and freed, over and over.
SCRIPT = """
import json, resource, torch
from raysae.malloc import keep_freed_memory
applied = keep_freed_memory()
torch.set_num_threads(1)  # no OpenMP thread started mid-count
def step():
    blocks = [torch.ones(1024, 1024) for _ in range(6)]  # 6 x 4 MiB, every page written
    del blocks
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _run(tuning: str) -> dict:
    env = {**os.environ, ENV: tuning, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_not_faulted_again():
    tuned, default = _run("1"), _run("0")
    assert tuned["applied"] and not default["applied"]
    # 24 MiB written per step is 6,144 pages: mapped, written and handed back every step
    assert default["faults"] > 6000, default
    # kept: nothing to fault in again (a CI run counted 102 a step, one stray 8 MiB, against 6,150)
    assert tuned["faults"] < default["faults"] / 10, (tuned, default)
