"""A real ``raysae`` command in a child process with its own Ray folder, and the processes it leaves.

Every process of the command's Ray cluster (GCS, raylet, agents, workers, whose command lines Ray
rewrites to ``ray::…``) inherits the command's environment, so the folder set in ``RAY_TMPDIR`` (unique
per test, short enough for Ray's socket paths) finds them in ``/proc/PID/environ``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from raysae.store import find_free_port

REPO = Path(__file__).resolve().parents[1]


def processes_with(text: str) -> dict[int, str]:
    """{pid: command line} of the processes whose environment or command line contains ``text``."""
    needle = text.encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if cmdline and (needle in cmdline or needle in env):  # a zombie has neither
            found[int(name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def read_tree(folder: Path, max_bytes: int = 50 * 1024**2) -> str:
    """The text of every file under ``folder`` (logs, caches), each with its path in front."""
    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            data = path.read_bytes()[:max_bytes]
        except OSError:
            continue
        parts.append(f"==> {path}\n{data.decode(errors='replace')}")
    return "\n".join(parts)


@dataclass
class Command:
    proc: subprocess.Popen
    tmp: Path
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace")


@contextmanager
def raysae_command(
    args: list[str], env: dict[str, str] | None = None, files: dict[str, str] | None = None
) -> Iterator[Command]:
    """``raysae ARGS`` with its own RAY_TMPDIR and RAYSAE_HOME under a fresh short folder, which holds
    ``files`` ({name: text}; "{tmp}" in ARGS is that folder); whatever of it still runs at the end is
    killed, and the folder removed."""
    tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    args = [a.replace("{tmp}", str(tmp)) for a in args]
    full_env = {
        **os.environ,
        "RAY_TMPDIR": str(tmp),
        "RAYSAE_HOME": str(tmp / "home"),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(REPO),
        **(env or {}),
    }
    full_env.pop("RAY_ADDRESS", None)
    output = tmp / "command.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raysae.cli", *args],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Command(proc, tmp, output)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        kill_all(list(processes_with(str(tmp))))
        shutil.rmtree(tmp, ignore_errors=True)


def serve_args(port: int, *extra: str) -> list[str]:
    """``raysae serve`` with the store lookups only (no model deployments): quick to start."""
    return [
        "serve",
        "--port",
        str(port),
        "--num-cpus",
        "1",
        "--no-text-endpoint",
        "--no-graph-endpoint",
        "--no-chat-endpoint",
        *extra,
    ]


def wait_until_serving(command: Command, url: str, timeout: float = 240) -> float:
    """Seconds until raysae's app answers ``url`` (any status of its own); fails the test if the
    command exits first. Serve's proxy listens before the app's routes are deployed and answers 404
    "Path ... not found. Ping .../-/routes" until then: that is not raysae answering yet."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if command.proc.poll() is not None:
            raise AssertionError(f"raysae exited with {command.proc.returncode}:\n{command.text()[-3000:]}")
        try:
            answer = httpx.get(url, timeout=10)
            if not (answer.status_code == 404 and "/-/routes" in answer.text):
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{command.text()[-3000:]}")


def free_port() -> int:
    return find_free_port("127.0.0.1")
