"""``raysae store start|stop|status``: the zero-setup local MongoDB store.

``start`` prints ``export MONGO_URI='...'`` on stdout (messages go to stderr), so
``eval "$(raysae store start)"`` points the shell at the store. Each ``func`` returns the exit code:
0 on success, 1 on an error, 3 from ``status`` when the store is not running (as LSB ``status`` does).
Run standalone with ``python -m raysae.store.commands store start``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from raysae.commandline import reports_user_errors, standalone_main
from raysae.store.errors import LocalStoreError
from raysae.store.paths import local_store_dir
from raysae.store.server import DEFAULT_HOST, DEFAULT_PORT, LOG_LEVELS, LocalStoreServer

NOT_RUNNING = 3


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _export(uri: str) -> None:
    print(f"export MONGO_URI='{uri}'", flush=True)


def _server(args: argparse.Namespace, **kwargs: Any) -> LocalStoreServer:
    return LocalStoreServer(args.path, **kwargs)


@reports_user_errors("store")
def _start(args: argparse.Namespace) -> int:
    port = args.port
    if port is None:  # no --port: reuse a running store's port, else the default
        running = _server(args).status(ping_timeout_s=0)
        port = running.port if running.running else DEFAULT_PORT
    try:
        server = _server(args, port=port or None, host=args.host, log_level=args.log_level)
        uri = server.start(timeout=args.timeout)
    except (LocalStoreError, ValueError) as err:
        _say(f"error: {err}")
        return 1
    current = server.status(ping_timeout_s=0)
    _say(f"local store running (pid {current.pid}); data in {server.data_dir}; log in {server.log_file}")
    _say("use it with:")
    _export(uri)
    return 0


@reports_user_errors("store")
def _stop(args: argparse.Namespace) -> int:
    server = _server(args)
    try:
        stopped = server.stop(timeout=args.timeout)
    except LocalStoreError as err:
        _say(f"error: {err}")
        return 1
    _say(f"local store in {server.path} {'stopped' if stopped else 'was not running'}")
    return 0


@reports_user_errors("store")
def _status(args: argparse.Namespace) -> int:
    current = _server(args).status()
    if not current.running:
        _say(f"local store in {current.path}: not running (start it with `raysae store start`)")
        return NOT_RUNNING
    health = "answering" if current.answering else "NOT answering ping"
    _say(f"local store in {current.path}: running (pid {current.pid}, {health})")
    if current.uri:
        _export(current.uri)
    return 0 if current.answering else 1


def add_parser(subparsers: Any) -> None:
    """Register ``store`` with subcommands start|stop|status on an argparse subparsers object."""
    store = subparsers.add_parser(
        "store",
        help="run the zero-setup local MongoDB store (secantusd-py)",
        description="Start, stop or inspect the local store: a MongoDB wire-protocol server (secantusd-py, "
        "from `pip install raysae[local-store]`) run as a detached process with its files under "
        "$RAYSAE_HOME/store (default ~/.cache/raysae/store).",
    )
    commands = store.add_subparsers(dest="store_command", required=True, metavar="{start,stop,status}")
    path_help = f"folder of data, pid file and log (default: $RAYSAE_HOME/store, now {local_store_dir()})"

    start = commands.add_parser("start", help="start the store (no-op if running) and print MONGO_URI")
    start.add_argument("--path", type=Path, default=None, help=path_help)
    start.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    start.add_argument("--port", type=int, default=None, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    start.add_argument("--log-level", choices=LOG_LEVELS, default="WARNING", help="server log level")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the first ping")
    start.set_defaults(func=_start)

    stop = commands.add_parser("stop", help="stop the store (SIGTERM, then SIGKILL after --timeout)")
    stop.add_argument("--path", type=Path, default=None, help=path_help)
    stop.add_argument("--timeout", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL")
    stop.set_defaults(func=_stop)

    status = commands.add_parser("status", help="say whether the store runs, and its MONGO_URI")
    status.add_argument("--path", type=Path, default=None, help=path_help)
    status.set_defaults(func=_status)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (e.g. ``["store", "start"]``) and run the chosen subcommand."""
    return standalone_main(add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
