"""A private Ray cluster dies with the command that started it, also when the command is killed (-9).

``ray.init()`` starts the GCS, the raylet, the dashboard and the monitors as children of the driver
with PR_SET_PDEATHSIG, so the kernel kills those when the driver dies. The raylet's own children do
not die with it: the dashboard and runtime-env agents outlive a SIGKILLed driver by about a minute
(measured with Ray 2.60), and workers (Serve's controller, proxy and replicas, a job's actors) sit in
process groups of their own, out of reach of a kill of the driver's group.

So before ``ray.init`` the driver starts a watchdog (this file run as a script: it imports no raysae
and no Ray) in a session of its own, and marks the cluster's processes with an environment variable,
``RAYSAE_REAPER``, set only while ``ray.init`` starts them: the raylet inherits it, and every agent and
worker inherits it from the raylet. The watchdog waits on a pipe whose write end only the driver holds
(the kernel closes it when the driver dies, whatever killed it) and on its parent's pid, then ends
every process that carries its mark: SIGTERM, then SIGKILL after a grace period. A command that ends
normally closes the pipe after ``ray.shutdown()``, and the watchdog sweeps up whatever is left.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

MARK_ENV = "RAYSAE_REAPER"
GRACE_S = 2.0  # between SIGTERM and SIGKILL: time for a Python worker to flush its logs
SWEEP_S = 20.0  # the most a sweep tries; processes still there after that are not ours to wait for
POLL_S = 0.2


class Reaper:
    """The driver's side: the watchdog process, its mark and the write end of its pipe."""

    def __init__(self, mark: str, process: subprocess.Popen, fd: int) -> None:
        self.mark = mark
        self.process = process
        self._fd: int | None = fd

    @classmethod
    def start(cls) -> Reaper:
        """Start a watchdog of this process (it carries no mark, so it never ends itself); OSError
        where it cannot run (Windows, where Ray's job object already ends the cluster with the driver)."""
        if sys.platform == "win32":
            raise OSError("no watchdog on Windows")
        mark = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
        read_fd, write_fd = os.pipe()  # not inheritable: Ray's children never hold the write end
        env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
        try:
            process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), mark, str(os.getpid())],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # no Ctrl-C, no hang-up and no group kill reaches it
                close_fds=True,
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        return cls(mark, process, write_fd)

    @contextlib.contextmanager
    def marking(self) -> Iterator[None]:
        """Processes started within the block (and all they start) carry this watchdog's mark."""
        previous = os.environ.get(MARK_ENV)
        os.environ[MARK_ENV] = self.mark
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(MARK_ENV, None)
            else:
                os.environ[MARK_ENV] = previous

    @property
    def released(self) -> bool:
        return self._fd is None

    def release(self) -> None:
        """Close the pipe: the watchdog ends the marked processes still running, then exits."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.process.poll()  # reaps it if it is done already

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._fd is not None:
                os.close(self._fd)


def marked_processes(mark: str) -> list[int]:
    """Pids of the running processes whose environment holds ``RAYSAE_REAPER=mark`` (not this one)."""
    needle = f"{MARK_ENV}={mark}".encode()
    me = os.getpid()
    found = []
    if os.path.isdir("/proc"):
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    env = f.read()
            except OSError:  # gone, another user's, or a kernel thread
                continue
            if needle in env.split(b"\0"):
                found.append(int(name))
        return found
    try:
        import psutil  # a dependency of Ray; no /proc on macOS
    except ImportError:
        return found
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != me and proc.environ().get(MARK_ENV) == mark:
                found.append(proc.pid)
    return found


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a running process from /proc; None when gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[19]


def descendants(roots: list[int]) -> dict[int, str]:
    """{pid: start time} of ``roots`` and every process below them (Linux /proc; empty elsewhere)."""
    if not os.path.isdir("/proc"):
        return {}
    parent_of: dict[int, int] = {}
    started: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            parent_of[int(name)], started[int(name)] = st
    found = {pid for pid in roots if pid in started}
    grew = True
    while grew:
        below = {pid for pid, ppid in parent_of.items() if ppid in found and pid not in found}
        found |= below
        grew = bool(below)
    return {pid: started[pid] for pid in found}


def _still(known: dict[int, str]) -> list[int]:
    """The pids of ``known`` that still run as the same process (same start time: no reused pid)."""
    out = []
    for pid, start in known.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            out.append(pid)
    return out


def sweep(
    mark: str, grace_s: float = GRACE_S, limit_s: float = SWEEP_S, known: dict[int, str] | None = None
) -> int:
    """End every process that carries ``mark``, and every process of ``known`` (pid → start time) still
    running, SIGTERM then SIGKILL after ``grace_s``, also those that appear meanwhile; returns how many
    were signalled."""
    deadline = time.monotonic() + limit_s
    termed: dict[int, float] = {}
    known = dict(known or {})
    while time.monotonic() < deadline:
        known.update(descendants(marked_processes(mark)))
        pids = _still(known)
        if not pids:
            break
        now = time.monotonic()
        for pid in pids:
            first = termed.setdefault(pid, now)
            sig = signal.SIGTERM if first == now else signal.SIGKILL if now - first >= grace_s else None
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        time.sleep(POLL_S)
    return len(termed)


def watch(mark: str, parent: int, fd: int = 0) -> None:
    """Wait until ``fd`` reaches end of file (the driver closed it or died) or the parent changes
    (the driver died and this process was handed to another), then sweep. Meanwhile, every second,
    remember the marked processes and all below them: the raylet starts its agents with an
    environment of its own making, which does not always carry the mark (measured with Ray 2.60), and
    once the driver is gone the raylet dies with it and its orphaned agents can only be found so."""
    known: dict[int, str] = {}
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready and not os.read(fd, 4096):
            break
        if os.getppid() != parent:
            break
        known = {pid: known[pid] for pid in _still(known)}  # forget the ones that ended
        known.update(descendants(marked_processes(mark)))
    sweep(mark, known=known)


def main(argv: list[str]) -> int:
    """``python reaper.py MARK PARENT_PID``, stdin the read end of the driver's pipe."""
    mark, parent = argv[0], int(argv[1])
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    watch(mark, parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
