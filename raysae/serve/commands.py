"""``raysae serve``: run the feature-browser service locally until SIGINT or SIGTERM.

It starts a private Ray cluster (or joins ``--address`` / RAY_ADDRESS), binds Serve's proxy to
``--host`` (default 127.0.0.1) and ``--port``, deploys the application and blocks; on SIGINT/SIGTERM it
removes the application (and, on its own cluster, Serve and Ray) and returns 0. For a long-lived
deployment on a cluster use ``serve deploy jobs/serve_config.yaml`` instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from raysae.commandline import reports_user_errors, standalone_main
from raysae.config.base import ConfigError, format_validation_error, load_config
from raysae.console import add_verbose_flag
from raysae.net import port_is_free


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _config(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from raysae.config.serve import ServeConfig
    from raysae.store import resolve_db, resolve_uri

    config = load_config(args.config, ServeConfig) if args.config else ServeConfig()
    data = config.model_dump()
    for key in ("host", "port"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.mongo_uri is not None:
        data["store"]["uri"] = args.mongo_uri
    if args.db is not None:
        data["store"]["db"] = args.db
    if args.model is not None:
        data["model"]["name"] = args.model
    if args.no_text_endpoint:
        data["text_endpoint"] = False
    if args.no_graph_endpoint:
        data["graph_endpoint"] = False
    if args.no_chat_endpoint:
        data["chat_endpoint"] = False
    try:
        config = ServeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "raysae serve")) from err
    # Resolve the store here, so replicas use what this shell sees (MONGO_URI, a running local store).
    store = config.store.model_copy(update={"uri": resolve_uri(config.store), "db": resolve_db(config.store)})
    return config.model_copy(update={"store": store})


class _Stopped(Exception):
    """A stop signal arrived while the service was starting."""


class _Signals:
    """Records SIGINT/SIGTERM (replacing Ray's own SIGTERM handler, which aborts the process). While
    ``starting``, a signal raises ``_Stopped`` so start-up is abandoned; later ones only wake ``wait``."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.starting = True
        self._event = threading.Event()
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, _frame: Any) -> None:
        first = self.received is None
        if first:
            self.received = signum
        self._event.set()
        if self.starting and first:
            raise _Stopped

    def wait(self) -> int:
        """Block until a signal arrived; returns its number."""
        self.starting = False
        while not self._event.wait(0.5):
            pass
        return self.received or signal.SIGTERM

    def restore(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)


@reports_user_errors("serve")
def serve_command(args: argparse.Namespace) -> int:
    """Run the service until SIGINT/SIGTERM; 0 after a clean shutdown, 1 if it could not start."""
    config = _config(args)
    if not port_is_free(config.host, config.port):
        _say(f"error: {config.host}:{config.port} is in use; pick another --port")
        return 1
    from raysae.store import Store, StoreUnavailableError

    probe = Store(config.store.model_copy(update={"retries": 0}))
    try:
        probe.ping()
    except StoreUnavailableError as err:
        _say(f"warning: {err}\n(the service starts anyway; data endpoints answer 503 until the store is up)")
    finally:
        probe.close()

    from raysae.console import command_console

    with command_console("serve", verbose=args.verbose) as console:
        if console.log_file is not None:
            _say(f"raysae serve: Ray's and Serve's logs go to {console.log_file} (--verbose shows them here)")
        return _run(args, config)


def _run(args: argparse.Namespace, config: Any) -> int:
    import ray
    from ray import serve

    from raysae.ray_session import ensure_ray
    from raysae.serve.app import start_local

    own_cluster = not (args.address or os.environ.get("RAY_ADDRESS"))
    cpus = {"num_cpus": args.num_cpus} if own_cluster and args.num_cpus is not None else {}
    ensure_ray(args.address, include_dashboard=False, **cpus)
    signals = _Signals()
    failed = False
    try:
        start_local(config)
        url = f"http://{config.host}:{config.port}{config.route_prefix.rstrip('/')}"
        _say(f"raysae serve: browser {url}/  API docs {url}/docs  (store {config.store.db!r}); Ctrl-C stops")
        if config.token() is None:
            _say(
                "raysae serve: write endpoints (graphs, explain) answer 401: no api_token or RAYSAE_API_TOKEN"
            )
        if config.deploys_chat:
            _say(f"raysae serve: chat model (OpenAI-compatible) at {config.chat_url()}")
        signals.wait()
    except _Stopped:
        pass
    except Exception as err:  # a deployment that cannot start: say why, clean up, exit 1
        _say(f"error: the service could not start: {type(err).__name__}: {err}")
        failed = True
    finally:
        if signals.received is not None:
            _say(f"raysae serve: {signal.Signals(signals.received).name}, shutting down")
        try:
            if own_cluster:
                serve.shutdown()
            else:
                serve.delete(config.app_name)
                if config.deploys_chat:
                    serve.delete(f"{config.app_name}-llm")
        finally:
            ray.shutdown()
            signals.restore()
    _say("raysae serve: stopped")
    return 1 if failed else 0


def add_parser(subparsers: Any) -> None:
    """Register ``serve`` on an argparse subparsers object (sets ``func``)."""
    p = subparsers.add_parser(
        "serve",
        help="run the feature-browser service (Ray Serve + FastAPI) until Ctrl-C",
        description=(__doc__ or "").split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--config", type=Path, default=None, help="ServeConfig file (YAML, TOML or JSON)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    p.add_argument("--mongo-uri", default=None, help="MongoDB URI (default: MONGO_URI, the local store)")
    p.add_argument("--db", default=None, help="database name (default: MONGO_DB, else mechinterp)")
    p.add_argument("--model", default=None, help="model for dictionaries whose record names none")
    p.add_argument("--no-text-endpoint", action="store_true", help="no text → features deployment")
    p.add_argument("--no-graph-endpoint", action="store_true", help="no attribution-graph deployment")
    p.add_argument(
        "--no-chat-endpoint",
        action="store_true",
        help="no bundled chat model (explain needs another endpoint)",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a new one)"
    )
    p.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the private Ray cluster (default: all)"
    )
    add_verbose_flag(p)
    p.set_defaults(func=serve_command)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (e.g. ``["serve", "--port", "8001"]``) and run it."""
    return standalone_main(add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
