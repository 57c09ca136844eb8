"""The one base class of raysae's user-facing errors.

Every error that a user can fix (a bad config, file, hook, request, cache or checkpoint) derives from
``RaysaeError``; the CLI prints its message on one line, without a traceback, and exits with
``EXIT_USER_ERROR``. Subclasses keep a builtin base too (``ValueError``, ``RuntimeError``) where callers
already catch those.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class RaysaeError(Exception):
    """A problem with what the user gave raysae; the message names it and says what to do."""
