"""The zero-setup local store: secantusd-py (a MongoDB wire-protocol server) run as a detached process.

secantusdb is GPL-2.0; raysae never imports it, it only starts the ``secantusd-py`` executable that the
``local-store`` extra installs. The folder of a server holds ``data/`` (WiredTiger files),
``secantusd.pid``, ``secantusd.log``, ``server.json`` (host, port, URI) and an empty ``secantusd.toml``
passed as ``--config`` so that no stray config file on the machine changes the server's settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from raysae.files import file_lock
from raysae.net import free_port, port_is_free
from raysae.store.errors import LocalStoreError
from raysae.store.paths import local_store_dir

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 27017
EXECUTABLE = "secantusd-py"
INSTALL_HINT = "install the local-store extra: pip install 'raysae[local-store]'"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def local_uri(host: str, port: int) -> str:
    """The connection string of a single local server (directConnection: no replica-set discovery)."""
    return f"mongodb://{host}:{port}/?directConnection=true"


DEFAULT_URI = local_uri(DEFAULT_HOST, DEFAULT_PORT)


def find_free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now (``raysae.net.free_port``)."""
    return free_port(host)


def find_server_executable() -> str:
    """Path of ``secantusd-py``: next to the running Python (its venv), else on PATH."""
    beside = Path(sys.executable).parent / EXECUTABLE
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(EXECUTABLE)
    if found:
        return found
    raise LocalStoreError(f"{EXECUTABLE} (the local store server) is not installed; {INSTALL_HINT}")


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that exited: reap it
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


def _is_server_of(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a secantusd-py serving ``data_dir`` (guards against a reused pid)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (macOS): trust the pid file
    except OSError:
        return False
    return any(EXECUTABLE in a for a in args) and str(data_dir) in args


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class LocalStoreStatus:
    """What ``LocalStoreServer.status()`` found."""

    running: bool
    path: Path
    pid: int | None = None
    port: int | None = None
    uri: str | None = None
    answering: bool | None = None


class LocalStoreServer:
    """Start, stop and inspect one secantusd-py server whose files live in ``path``.

    ``port=None`` picks a free port at start. The server runs in its own session, so it outlives the
    process that started it (``raysae store start`` exits at once); ``stop()`` works from any process.
    Used as a context manager it starts on enter and stops on exit.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        port: int | None = None,
        *,
        host: str = DEFAULT_HOST,
        log_level: str = "WARNING",
        executable: str | None = None,
    ):
        if log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {log_level!r}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        self.path = Path(path if path is not None else local_store_dir()).expanduser().resolve()
        self.port = port
        self.host = host
        self.log_level = log_level
        self.executable = executable
        self._proc: subprocess.Popen[bytes] | None = None

    data_dir = property(lambda self: self.path / "data", doc="WiredTiger data folder.")
    log_file = property(lambda self: self.path / "secantusd.log", doc="The server's stdout and stderr.")
    pid_file = property(lambda self: self.path / "secantusd.pid", doc="Process id of the running server.")
    state_file = property(
        lambda self: self.path / "server.json", doc="Host, port and URI of the running server."
    )

    @property
    def uri(self) -> str:
        """The server's connection string (the port must be known: given, or started)."""
        if self.port is None:
            raise LocalStoreError("the port is chosen at start(); start the server first")
        return local_uri(self.host, self.port)

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        """The exclusive lock on this store folder's server state (the folder made first)."""
        self.path.mkdir(parents=True, exist_ok=True)
        return file_lock(self.path / ".lock")

    def _read_state(self) -> tuple[int | None, dict]:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None, {}
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            state = {}
        return pid, state if isinstance(state, dict) else {}

    def _clear_state(self) -> None:
        for f in (self.pid_file, self.state_file):
            f.unlink(missing_ok=True)

    def status(self, ping_timeout_s: float = 1.0) -> LocalStoreStatus:
        """Whether the server of this folder runs, its pid/port/URI, and whether it answers a ping."""
        pid, state = self._read_state()
        if pid is None or not _pid_alive(pid) or not _is_server_of(pid, self.data_dir):
            return LocalStoreStatus(running=False, path=self.path)
        uri = state.get("uri")
        answering = None
        if uri and ping_timeout_s > 0:
            answering = _ping(uri, ping_timeout_s)
        return LocalStoreStatus(True, self.path, pid, state.get("port"), uri, answering)

    def start(self, timeout: float = 60.0) -> str:
        """Start the server (or find it already running) and wait until it answers ping; returns the URI."""
        with self._lock():
            current = self.status(ping_timeout_s=0)
            if current.running:
                if self.port is not None and current.port != self.port:
                    raise LocalStoreError(
                        f"the local store in {self.path} already runs on port {current.port} (pid {current.pid}); "
                        "stop it first to use another port"
                    )
                self.port = current.port
                if not current.uri:
                    raise LocalStoreError(
                        f"{self.state_file} is missing; stop the server (pid {current.pid})"
                    )
                return current.uri
            self._clear_state()
            exe = self.executable or find_server_executable()
            port = self.port if self.port is not None else find_free_port(self.host)
            if not port_is_free(self.host, port):
                raise LocalStoreError(
                    f"port {port} on {self.host} is already in use (another MongoDB or local store?); "
                    "choose another with --port"
                )
            self.data_dir.mkdir(parents=True, exist_ok=True)
            config = self.path / "secantusd.toml"
            config.write_text("# Empty on purpose: raysae passes every setting as a flag.\n")
            cmd = [exe, "--config", str(config), "--host", self.host, "--port", str(port)]
            cmd += ["--storage-path", str(self.data_dir), "--log-level", self.log_level]
            with open(self.log_file, "ab") as log:
                log.write(f"--- {datetime.now(UTC).isoformat()} {' '.join(cmd)}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._proc, self.port = proc, port
            self.pid_file.write_text(f"{proc.pid}\n")
            state = {
                "pid": proc.pid,
                "host": self.host,
                "port": port,
                "uri": self.uri,
                "data": str(self.data_dir),
            }
            self.state_file.write_text(json.dumps(state, indent=2) + "\n")
            try:
                self._wait_ready(proc, timeout)
            except BaseException:
                self._terminate(proc.pid, 5.0)
                self._clear_state()
                raise
            return self.uri

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise LocalStoreError(
                    f"{EXECUTABLE} exited with code {code} before answering; last lines of {self.log_file}:\n"
                    + _tail(self.log_file)
                )
            if _ping(self.uri, 0.5):
                return
            if time.monotonic() > deadline:
                raise LocalStoreError(
                    f"{EXECUTABLE} did not answer at {self.uri} within {timeout:.0f}s; last lines of "
                    f"{self.log_file}:\n" + _tail(self.log_file)
                )
            time.sleep(0.1)

    def _terminate(self, pid: int, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds, to the server's own process group."""
        for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if not _pid_alive(pid):
                    return
                time.sleep(0.05)
        if _pid_alive(pid):
            raise LocalStoreError(f"{EXECUTABLE} (pid {pid}) survived SIGKILL")

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the server (SIGTERM, SIGKILL after ``timeout``); False if it was not running."""
        with self._lock():
            current = self.status(ping_timeout_s=0)
            if not current.running or current.pid is None:
                self._clear_state()
                return False
            self._terminate(current.pid, timeout)
            self._clear_state()
            self._proc = None
            return True

    def __enter__(self) -> LocalStoreServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ping(uri: str, timeout_s: float) -> bool:
    ms = max(1, int(timeout_s * 1000))
    client: MongoClient = MongoClient(
        uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def running_local_store_uri(path: str | Path | None = None) -> str | None:
    """URI of the local store in ``path`` (default ``$RAYSAE_HOME/store``) if it runs, else None."""
    folder = Path(path) if path is not None else local_store_dir()
    if not (folder / "secantusd.pid").exists():
        return None
    current = LocalStoreServer(folder).status(ping_timeout_s=0)
    return current.uri if current.running else None
