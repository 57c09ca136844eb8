"""What a command shows in the terminal: one progress bar, a final summary, and errors in full.

``command_console`` wraps a command's work. Unless ``--verbose``, Ray's own output (worker logs,
Train's report dumps, Ray Data's operator bars, deprecation warnings) goes to a log file in the run's
folder (``<folder>/logs/<command>.log``), or under ``$RAYSAE_HOME/logs`` for a command without one,
through ``raysae.ray_session.ray_output_to``. Exceptions pass through untouched; for a failure that is
not a user error the console adds where Ray's log is, since a worker's side of the story is there.
``TrainingProgress`` draws the training bar from the metrics the Ray Train worker puts on the run's
``ProgressBoard`` actor. This module sits at the bottom of the import graph (every command uses it).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from raysae.commandline import USER_ERRORS
from raysae.home import raysae_home

# (key in the metrics, label on the bar, format)
TRAIN_POSTFIX = (
    ("loss/total", "loss", "{:.4g}"),
    ("metrics/explained_variance", "EV", "{:.3f}"),
    ("metrics/l0", "L0", "{:.1f}"),
    ("metrics/dead_fraction", "dead", "{:.1%}"),
)


# What the driver's progress bar shows; the worker puts only these on the board.
BOARD_KEYS = (
    "progress/step",
    "progress/tokens",
    "loss/total",
    "metrics/explained_variance",
    "metrics/l0",
    "metrics/dead_fraction",
    "perf/tokens_per_s",
)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--verbose`` flag every Ray command shares."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own output (worker logs, Ray Data progress) in the terminal instead of a log file",
    )


def log_path(command: str, folder: str | Path | None) -> Path:
    """``<folder>/logs/<command>.log`` (appended across reruns), else a fresh file under
    ``$RAYSAE_HOME/logs`` for commands whose results go elsewhere (MongoDB)."""
    if folder is not None and "://" not in str(folder):
        return Path(folder) / "logs" / f"{command}.log"
    return raysae_home() / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"


class Console:
    """The terminal side of one command: its bar and its summary."""

    def __init__(self, command: str, verbose: bool, log_file: Path | None) -> None:
        self.command = command
        self.verbose = verbose
        self.log_file = log_file  # None when verbose: Ray prints to the terminal
        self.started = time.perf_counter()

    def bar(self, total: float | None, unit: str, desc: str) -> tqdm:
        """A tqdm bar on stderr. Redrawn twice a second on a terminal, every 30 s into a file or
        pipe (each redraw there is a new line of output)."""
        tty = sys.stderr.isatty()
        return tqdm(
            total=total,
            unit=unit,
            unit_scale=True,
            desc=desc,
            file=sys.stderr,
            mininterval=0.5 if tty else 30.0,
            dynamic_ncols=tty,
            smoothing=0.3,
        )

    def summary(self, rows: Sequence[tuple[str, Any]]) -> None:
        """Print the final summary: aligned ``label: value`` lines, the time taken and the log."""
        rows = [*rows, ("time", f"{time.perf_counter() - self.started:.0f} s")]
        if self.log_file is not None and self.log_file.exists():  # none when Ray never started
            rows.append(("Ray log", self.log_file))
        width = max(len(label) for label, _ in rows) + 1
        print(f"raysae {self.command}: done")
        for label, value in rows:
            print(f"  {label + ':':<{width}} {value}")


@contextlib.contextmanager
def command_console(command: str, *, verbose: bool, folder: str | Path | None = None) -> Iterator[Console]:
    """Run a command's body quietly (Ray's output to the log file) unless ``verbose``."""
    if verbose:
        yield Console(command, True, None)
        return
    from raysae.ray_session import ray_output_to

    path = log_path(command, folder)
    console = Console(command, False, path)
    with ray_output_to(path):
        try:
            yield console
        except BaseException as err:
            if path.exists() and not isinstance(err, (*USER_ERRORS, KeyboardInterrupt)):
                print(f"raysae {command}: Ray's output is in {path}", file=sys.stderr)
            raise


def train_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The bar's loss, explained variance, L0 and dead fraction from a report's metrics."""
    return {label: fmt.format(metrics[key]) for key, label, fmt in TRAIN_POSTFIX if key in metrics}


def board_name(run_name: str) -> str:
    """The named actor a run's driver opens for its workers' metrics (named actors are scoped to the
    job's namespace, so two drivers never share one)."""
    return f"raysae-progress:{run_name}"


class ProgressBoard:
    """Holds a run's latest metrics: rank 0 puts (``raysae.train.reporting.RayMetricsSink``), the
    driver polls. A Ray actor because Ray Train reports to the driver only with checkpoints, and the
    workers may run on other machines than the driver, where a file in the output folder is not seen."""

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}

    def put(self, metrics: dict[str, float]) -> None:
        self.latest = metrics

    def get(self) -> dict[str, float]:
        return self.latest


def open_board(run_name: str) -> Any:
    """Create the run's board (no CPU: it must not take one that the run's resource plan counts)."""
    import ray

    board = ray.remote(ProgressBoard).options(name=board_name(run_name), num_cpus=0, get_if_exists=True)
    return board.remote()


class TrainingProgress:
    """The training bar (tokens, rate, ETA, loss, EV, L0, dead fraction), fed by a thread that polls
    the run's ``ProgressBoard``. Needs Ray up: the board is an actor the worker finds by name."""

    def __init__(self, console: Console, run_name: str, total_tokens: int, poll_s: float = 1.0) -> None:
        self.console = console
        self.run_name = run_name
        self.total_tokens = total_tokens
        self.poll_s = poll_s
        self.last: dict[str, float] = {}
        self._board: Any = None
        self._bar: tqdm | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> TrainingProgress:
        try:
            self._board = open_board(self.run_name)
        except Exception as err:  # the run goes on; the bar then shows only the final count
            print(f"raysae: no live progress ({err})", file=sys.stderr)
        self._bar = self.console.bar(self.total_tokens, "tok", "train")
        self._thread = threading.Thread(target=self._poll_loop, name="raysae-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if exc[0] is None:
            self._poll()  # the last report
        if self._bar is not None:
            self._bar.close()
        if self._board is not None:
            with contextlib.suppress(Exception):
                ray.kill(self._board)

    def finish(self, tokens: int) -> None:
        """Set the bar to the tokens the run finished with (reports come every few steps)."""
        if self._bar is not None and tokens > self._bar.n:
            self._bar.update(tokens - self._bar.n)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()

    def _poll(self) -> None:
        import ray

        if self._board is None:
            return
        try:
            metrics = ray.get(self._board.get.remote(), timeout=10)
        except Exception:  # a slow or gone board only freezes the bar
            return
        if not metrics or metrics == self.last or self._bar is None:
            return
        self.last = metrics
        self._bar.set_postfix(train_postfix(metrics), refresh=False)
        tokens = int(metrics.get("progress/tokens", 0))
        if tokens > self._bar.n:
            self._bar.update(tokens - self._bar.n)
        else:
            self._bar.refresh()
