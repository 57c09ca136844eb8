"""What every fault drill shares: its figures (one row of the table), bounded waiting, the processes
of a Ray cluster's actors, a local store that can be killed and restarted in place, and duplicate counts.

Each drill kills one thing at one moment and reports what it cost: whether the job still completed, how
many rows/documents/steps were lost or duplicated, how much work was replayed, how long recovery took
and how many failures (errors, retries, failed attempts) were seen meanwhile.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from raysae.net import port_is_free
from raysae.store import LocalStoreServer, find_free_port


@dataclass
class DrillResult:
    """One row of the drill table. ``lost``/``duplicated``/``replayed`` count ``unit`` (rows, documents,
    steps…; None: not applicable); ``replayed`` is work done twice because of the kill."""

    drill: str
    killed: str
    when: str
    completed: bool
    unit: str
    lost: int | None
    duplicated: int | None
    replayed: int | None
    recovery_s: float | None
    failures: int
    notes: str = ""
    same_as_uninterrupted: bool | None = None  # the outcome equals a run that was never interrupted
    replayed_unit: str | None = None  # when replayed work is counted in another unit than ``unit``


COLUMNS = ("drill", "killed", "when", "completed", "lost", "duplicated", "replayed", "recovery s", "failures")


def table(results: Iterable[DrillResult]) -> str:
    """The results as an aligned text table (figures with their unit), notes below it."""

    def cells(r: DrillResult) -> list[str]:
        def count(n: int | None, unit: str | None = None) -> str:
            return "-" if n is None else f"{n} {unit or r.unit}"

        rec = "-" if r.recovery_s is None else f"{r.recovery_s:.1f}"
        completed = "yes" if r.completed else "NO"
        return [
            r.drill,
            r.killed,
            r.when,
            completed,
            count(r.lost),
            count(r.duplicated),
            count(r.replayed, r.replayed_unit),
            rec,
            str(r.failures),
        ]

    results = list(results)
    rows = [list(COLUMNS), *(cells(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"{r.drill}: {r.notes}" for r in results if r.notes]
    return "\n".join(lines + (["", *notes] if notes else []))


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> float:
    """Seconds until ``condition()`` is truthy; AssertionError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def duplicates(keys: Iterable[Hashable]) -> int:
    """How many keys repeat an earlier one."""
    return sum(n - 1 for n in Counter(keys).values())


# ---- Ray actors as processes ------------------------------------------------------------------------
def actor_pids(class_part: str) -> list[int]:
    """Pids of the ALIVE actors of the connected Ray cluster whose class name contains ``class_part``
    (read from the GCS actor table: the state API needs a dashboard, which the test cluster lacks)."""
    from ray._private.state import actors

    return sorted(
        int(info["Pid"])
        for info in actors().values()
        if class_part in info["ActorClassName"] and info["State"] == "ALIVE" and info["Pid"]
    )


def signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


# ---- a store that can die ---------------------------------------------------------------------------
class KillableStore:
    """A secantusd-py server in ``folder`` on a fixed port: ``kill()`` SIGKILLs it (no shutdown, as a
    crash or an OOM kill would), ``restart()`` starts it again on the same data folder and port."""

    def __init__(self, folder: Path):
        self.server = LocalStoreServer(folder, port=find_free_port())
        self.uri = self.server.start(timeout=120)
        self.port = self.server.port

    def kill(self) -> None:
        pid = self.server.status(ping_timeout_s=0).pid
        assert pid is not None, "the store is not running"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: gone(pid), 10, "the killed store to exit")
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        # the kernel releases the listening port a moment after the process is gone
        wait_for(lambda: port_is_free(self.server.host, self.port), 10, "the killed store's port")

    def restart(self) -> None:
        self.server = LocalStoreServer(self.server.path, port=self.port)
        self.server.start(timeout=120)

    def stop(self) -> None:
        self.server.stop()


@contextmanager
def killable_store(folder: Path) -> Iterator[KillableStore]:
    store = KillableStore(folder)
    try:
        yield store
    finally:
        store.stop()


class CountingHandler(logging.Handler):
    """Counts the records of a logger that contain ``text`` (the store's retry warnings)."""

    def __init__(self, text: str):
        super().__init__(logging.WARNING)
        self.text = text
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1


@contextmanager
def counting(logger: str, text: str) -> Iterator[CountingHandler]:
    """Count ``logger``'s warnings containing ``text`` within the block."""
    handler = CountingHandler(text)
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


class Background:
    """``fn()`` in a daemon thread, so that a drill can kill something while the job runs."""

    def __init__(self, fn: Callable[[], object]):
        self.result: object = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            self.result = fn()
        except BaseException as err:  # handed to the drill, which decides
            self.error = err

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        """Wait for the job; AssertionError if it still runs after ``timeout``."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the job still runs after {timeout:.0f} s")
