"""The one base class of raysae's user-facing errors, and how every command reports them.

Every error that a user can fix (a bad config, file, hook, request, cache or checkpoint) derives from
``RaysaeError``; subclasses keep a builtin base too (``ValueError``, ``RuntimeError``) where callers
already catch those. ``raysae.commandline`` turns them into one line and ``EXIT_USER_ERROR``.

Credentials never reach a message: ``redact_uri`` and ``redact`` are the one place that hides
passwords in URIs (``MONGO_URI``, an endpoint's base_url) and known secrets (API keys, tokens) in text
that is printed, logged, raised or stored.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

EXIT_USER_ERROR = 2


class RaysaeError(Exception):
    """A problem with what the user gave raysae; the message names it and says what to do."""


# scheme://user:password@ — the password runs to the last "@" before whitespace or a quote, so an
# unescaped "@" or "/" in it (which the URI parser then rejects, quoting the URI) is hidden too.
_URI_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@?#'\"]*):[^\s'\"]*@")
# ?api_key=… / &password=… / authMechanismProperties=AWS_SESSION_TOKEN:… (MongoDB's AWS auth)
_SECRET_PARAM = re.compile(
    r"(?i)([?&;][\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key)=|AWS_SESSION_TOKEN:)[^&;,\s'\"]*"
)
REDACTED = "***"


def redact_uri(text: str) -> str:
    """``text`` with the password of every URI in it (``scheme://user:***@host``) and the values of
    secret-looking query parameters replaced by ``***``; user names and hosts stay, for debugging."""
    text = _URI_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    return _SECRET_PARAM.sub(rf"\1{REDACTED}", text)


def redact(text: str, *secrets: str | None) -> str:
    """``redact_uri(text)`` with every occurrence of each given secret (API key, token) replaced too;
    None and "" are skipped (so are placeholders, by the caller: replacing "none" would garble text)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return redact_uri(text)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``source: field.path: message``."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{source}: {where}: {e['msg']}")
    return "invalid configuration\n" + "\n".join(lines)
