"""Joining or starting Ray the same way in every raysae command, loudly or quietly.

Quietly (inside ``ray_output_to(path)``, which ``raysae.console`` opens unless ``--verbose``), Ray's
output goes to a log file instead of the terminal: the worker stdout/stderr Ray forwards to the driver
(Train's per-report dumps, Ray Data's execution plans, actor tracebacks, C++ warnings), the driver's
``ray*`` loggers, and Python warnings raised inside Ray's own modules. Ray Data's progress bars are
switched off: they redraw thousands of times and the command draws its own. Exceptions are untouched:
they reach the terminal through the command.

A private local cluster dies with its driver, also on ``kill -9``: ``raysae.reaper`` watches the driver
from outside and ends the cluster's processes, which Ray alone leaves running for up to a minute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from raysae.reaper import Reaper

_TQDM_MAGIC = "__ray_tqdm_magic_token__"  # ray.experimental.tqdm_ray.RAY_TQDM_MAGIC, without its import
_active: RayOutputFile | None = None  # set by ray_output_to(); read by ensure_ray()
_reaper: Reaper | None = None  # the watchdog of the private cluster ensure_ray started, if any


def ensure_ray(address: str | None = None, **init_kwargs: Any) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), else start a private local cluster; returns True when this
    call initialised Ray (so the caller shuts it down). A private local cluster listens on 127.0.0.1 only
    (``_loopback_node``) and, as nothing else can reach it, turns token auth off (``RAY_AUTH_MODE=disabled``,
    unless set) so that no token file is written, and dies with this process (``raysae.reaper``), also
    when it is killed. Inside ``ray_output_to(path)`` Ray's output goes to that file."""
    global _reaper
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    private = address is None and not os.environ.get("RAY_ADDRESS")
    if private:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        address = "local"  # always a new cluster, never a stray one found on this machine
    quiet = _active
    if quiet is not None:
        quiet.before_init()
        init_kwargs.setdefault("log_to_driver", True)  # forwarded, then routed to the file below
    loopback = private and "_node_ip_address" not in init_kwargs
    release_reaper()  # the watchdog of a cluster started and shut down earlier in this process
    reaper = _start_reaper() if private else None
    try:
        with (
            _loopback_node() if loopback else contextlib.nullcontext(),
            reaper.marking() if reaper is not None else contextlib.nullcontext(),
        ):
            ray.init(address=address, **init_kwargs)
    except BaseException:
        if reaper is not None:
            reaper.release()  # ends whatever the failed start left running
        raise
    _reaper = reaper
    if quiet is not None:
        quiet.after_init()
    return True


def _start_reaper() -> Reaper | None:
    """A watchdog for the cluster about to start; None (and a debug line) where one cannot start."""
    from raysae.reaper import Reaper

    try:
        return Reaper.start()
    except OSError as err:
        logging.getLogger(__name__).debug("no watchdog for the Ray cluster: %s", err)
        return None


def release_reaper() -> None:
    """Let the watchdog of the private cluster go (call after ``ray.shutdown()``): it ends the
    cluster's processes still running and exits. A no-op while that cluster still runs."""
    global _reaper
    import ray

    if _reaper is not None and not ray.is_initialized():
        _reaper.release()
        _reaper = None


@contextlib.contextmanager
def ray_started(address: str | None = None, **init_kwargs: Any) -> Iterator[bool]:
    """``ensure_ray`` for the length of a block: a cluster this call started (or joined) is shut down
    when the block ends, also on an error; one Ray already initialised in the process is left running.
    Yields whether this call initialised Ray."""
    import ray

    started = ensure_ray(address, **init_kwargs)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()
            release_reaper()


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Within the block, a new Ray node takes 127.0.0.1 as its IP, so that it listens on loopback only.

    Ray binds the gRPC servers of the GCS, the raylet and every worker (Serve's actors included) to all
    interfaces unless the node's IP is 127.0.0.1, and then its agents and metrics exporters to that IP.
    ``ray.init(_node_ip_address="127.0.0.1")`` does not do it: Ray swaps a loopback address for the
    machine's outward IP unless ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` is False (what
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 sets, but only when read at Ray's import, which may be past).
    Once the node runs, Ray reads its IP from the node, so the flag is restored afterwards."""
    from ray._private import ray_constants

    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


@contextlib.contextmanager
def ray_output_to(path: str | Path) -> Iterator[RayOutputFile]:
    """Within the block, Ray's output goes to ``path`` (appended) instead of the terminal."""
    global _active
    sink = RayOutputFile(Path(path))
    previous, _active = _active, sink
    try:
        sink.start()
        yield sink
    finally:
        _active = previous
        sink.stop()


class RayOutputFile:
    """One log file for everything Ray would print in this process; ``stop`` undoes every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self._handler: logging.Handler | None = None
        self._saved: dict[logging.Logger, list[logging.Handler]] = {}  # handlers before the swap, in order
        self._showwarning = warnings.showwarning
        self._data_flags: dict[str, bool] = {}

    def start(self) -> None:
        import sys

        self._handler = _ToFile(self)
        self._showwarning = warnings.showwarning
        warnings.showwarning = self._show_warning
        self._route_ray_loggers()
        if "ray.data" in sys.modules:
            self._quiet_ray_data()

    def stop(self) -> None:
        import sys

        if "ray" in sys.modules:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

            if any(h is self._forward for _, h in dispatcher.handlers):  # Ray still up: stop forwarding
                dispatcher.remove_handler("ray_print_logs")
        if self._data_flags:
            import ray.data

            ctx = ray.data.DataContext.get_current()
            for key, value in self._data_flags.items():
                setattr(ctx, key, value)
        warnings.showwarning = self._showwarning
        for logger, saved in self._saved.items():  # the saved order, plus what others added meanwhile
            added = [h for h in logger.handlers if h is not self._handler and h not in saved]
            logger.handlers = [*saved, *added]
        self._saved.clear()
        with self._lock:
            self._stopped = True
            if self._file is not None:
                self._file.close()
                self._file = None

    def write(self, text: str) -> None:
        """Append ``text``; the file is created on the first write, so a command that never starts Ray
        (``--local``) leaves none behind."""
        with self._lock:
            if self._file is None:
                if self._stopped:
                    return
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8", errors="replace")
                self._file.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} ====\n")
            self._file.write(text)
            self._file.flush()

    # ---- hooks of ensure_ray ------------------------------------------------------------------
    def before_init(self) -> None:
        """Before ``ray.init``: Ray Data's loggers exist only once it is imported (it adds a console
        handler then), and its context must be quiet before any dataset copies it."""
        self._quiet_ray_data()
        self._route_ray_loggers()

    def after_init(self) -> None:
        """Replace Ray's printer of forwarded worker output with a writer to the file."""
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", self._forward)

    # ---- the routes ---------------------------------------------------------------------------
    def _forward(self, data: dict[str, Any]) -> None:
        """One batch of forwarded worker lines, prefixed as Ray prints them (``(Actor pid=…)``);
        ``ray.experimental.tqdm_ray`` bar updates are dropped. Runs on Ray's log thread, which an
        exception would end, so none escapes."""
        try:
            name = data.get("actor_name") or data.get("task_name") or ""
            ip = data.get("ip")
            where = "" if ip == data.get("localhost") else f", ip={ip}"
            prefix = f"({name} pid={data.get('pid')}{where}) "
            lines = [line for line in data.get("lines", []) if _TQDM_MAGIC not in line]
            if lines:
                self.write("".join(prefix + line + "\n" for line in lines))
        except Exception as err:
            logging.getLogger(__name__).debug("could not write Ray's output: %s", err)

    def _route_ray_loggers(self) -> None:
        """Swap the terminal handlers of the ``ray`` loggers (``ray``, ``ray.data``, …) for the file."""
        assert self._handler is not None
        names = ["ray", *(n for n in logging.root.manager.loggerDict if n.startswith("ray."))]
        for name in names:
            logger = logging.getLogger(name)
            for h in list(logger.handlers):
                if h is not self._handler and _is_terminal_handler(h):
                    self._saved.setdefault(logger, [x for x in logger.handlers if x is not self._handler])
                    logger.removeHandler(h)
                    if self._handler not in logger.handlers:
                        logger.addHandler(self._handler)

    def _quiet_ray_data(self) -> None:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        for key in ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start"):
            self._data_flags.setdefault(key, getattr(ctx, key))
            setattr(ctx, key, False)

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if f"{os.sep}ray{os.sep}" in str(filename):
            self.write(warnings.formatwarning(message, category, filename, lineno, line))
        else:
            self._showwarning(message, category, filename, lineno, file, line)


class _ToFile(logging.Handler):
    """A logging handler writing through ``RayOutputFile.write`` (one lock, a lazily created file)."""

    def __init__(self, sink: RayOutputFile) -> None:
        super().__init__()
        self.sink = sink
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _is_terminal_handler(handler: logging.Handler) -> bool:
    """Ray's own console handlers (``PlainRayHandler`` writes to whatever ``sys.stderr`` is) and
    plain stream handlers on stdout/stderr; file handlers stay."""
    import sys

    if isinstance(handler, logging.FileHandler):
        return False
    if type(handler).__name__ == "PlainRayHandler":
        return True
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)
