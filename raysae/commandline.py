"""How every ``raysae`` command meets the user: user errors as one line and one exit code.

``reports_user_errors`` wraps each command's ``run(args) -> int``: a user error becomes one line on
stderr, without a traceback, and ``EXIT_USER_ERROR`` (2, argparse's code for bad usage). Exit code 1
stays for failures of the environment (a port in use, a server that does not start).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from raysae.errors import EXIT_USER_ERROR, RaysaeError, format_validation_error

F = TypeVar("F", bound=Callable[..., int])

# What a user's input can raise besides RaysaeError: pydantic on a bad value, the OS on a bad path.
USER_ERRORS: tuple[type[BaseException], ...] = (
    RaysaeError,
    ValidationError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
)


def user_error_message(err: BaseException) -> str:
    """The error as one line (a validation error's problems joined by ``; ``)."""
    text = format_validation_error(err, "settings") if isinstance(err, ValidationError) else str(err)
    parts = [line.strip() for line in text.splitlines() if line.strip()]
    if parts and parts[0] == "invalid configuration" and len(parts) > 1:
        return f"invalid configuration: {'; '.join(parts[1:])}"
    return "; ".join(parts) or type(err).__name__


def reports_user_errors(command: str) -> Callable[[F], F]:
    """Decorate a command's ``run(args) -> int``: user errors print ``raysae COMMAND: error: …``
    on one line and return ``EXIT_USER_ERROR``; anything else (a bug) keeps its traceback."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                return fn(*args, **kwargs)
            except USER_ERRORS as err:
                print(f"raysae {command}: error: {user_error_message(err)}", file=sys.stderr)
                return EXIT_USER_ERROR

        return run  # type: ignore[return-value]

    return wrap


def standalone_main(add_parser: Callable[[Any], None], argv: Sequence[str] | None = None) -> int:
    """A part's own ``python -m raysae.PART.commands`` entry: its subcommands only, same behaviour."""
    parser = argparse.ArgumentParser(prog="raysae")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))
