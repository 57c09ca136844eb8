"""The one base class of raysae's user-facing errors, and how every command reports them.

Every error that a user can fix (a bad config, file, hook, request, cache or checkpoint) derives from
``RaysaeError``; subclasses keep a builtin base too (``ValueError``, ``RuntimeError``) where callers
already catch those. ``raysae.commandline`` turns them into one line and ``EXIT_USER_ERROR``.
"""

from __future__ import annotations

from pydantic import ValidationError

EXIT_USER_ERROR = 2


class RaysaeError(Exception):
    """A problem with what the user gave raysae; the message names it and says what to do."""


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``source: field.path: message``."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {e['msg']}")
    return "invalid configuration\n" + "\n".join(lines)
