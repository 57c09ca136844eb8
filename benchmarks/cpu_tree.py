"""CPU seconds of a process tree during a block: what a Ray run kept busy (driver, Ray's processes,
actors, workers), for the benchmarks' ``cpu util`` columns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil


class TreeCPU:
    """CPU seconds used by this process and every descendant while a block runs (sampled, since Ray's
    workers outlive the block and exiting processes would otherwise drop out of the sum)."""

    def __init__(self, every_s: float = 0.5) -> None:
        self._me = psutil.Process()
        self._every = every_s
        self._seen: dict[int, float] = {}
        self._base: dict[int, float] = {}

    def _sample(self) -> None:
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self._seen[p.pid] = t.user + t.system
            except Exception:  # the process ended between listing and reading
                continue

    def run(self, fn: Callable[[], int]) -> tuple[int, float, float]:
        """(result, wall seconds, CPU seconds of the tree during the call)."""
        self._seen.clear()
        self._sample()
        self._base = dict(self._seen)
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self._every):
                self._sample()

        sampler = threading.Thread(target=loop, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        try:
            n = fn()
        finally:
            wall = time.perf_counter() - t0
            stop.set()
            sampler.join()
            self._sample()
        cpu = sum(c - self._base.get(pid, 0.0) for pid, c in self._seen.items())
        return n, wall, cpu
