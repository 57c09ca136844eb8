"""Coercion of query inputs to plain str/int values, so no user input can become a query operator."""

from __future__ import annotations

import operator
from typing import Any

MAX_ID_CHARS = 512
MAX_TEXT_CHARS = 512
MAX_SKIP = 10_000_000


def as_id(value: Any, name: str, max_chars: int = MAX_ID_CHARS) -> str:
    """A non-empty string id of at most ``max_chars`` characters without NUL bytes."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_chars:
        raise ValueError(f"{name} is {len(value)} characters long; the limit is {max_chars}")
    if "\0" in value:
        raise ValueError(f"{name} must not contain NUL bytes")
    return value


def as_optional_id(value: Any, name: str) -> str | None:
    """``None`` or a valid id (see ``as_id``)."""
    return None if value is None else as_id(value, name)


def as_int(value: Any, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    """A Python int (numpy integers accepted; bools, floats and strings rejected) within bounds."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got bool")
    try:
        result = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}") from None
    if result < minimum or (maximum is not None and result > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {result}")
    return result


def as_index(value: Any) -> int:
    """A feature index: a non-negative integer."""
    return as_int(value, "index", 0, 2**63 - 1)


def as_limit(value: Any, maximum: int) -> int:
    """A page size in [1, maximum]."""
    return as_int(value, "limit", 1, maximum)


def as_skip(value: Any) -> int:
    """A page offset in [0, MAX_SKIP]."""
    return as_int(value, "skip", 0, MAX_SKIP)


def as_text(value: Any, name: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """A non-empty search string of at most ``max_chars`` characters."""
    return as_id(value, name, max_chars)


def as_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def feature_identity(dictionary_id: str, hook: str, index: Any) -> dict[str, Any]:
    """The identity filter of one feature (arguments validated)."""
    return {
        "dictionary_id": as_id(dictionary_id, "dictionary_id"),
        "hook": as_id(hook, "hook"),
        "index": as_index(index),
    }


def scope(dictionary_id: str, hook: str | None) -> dict[str, Any]:
    """The filter of a dictionary's features, of one hook when given (arguments validated)."""
    query: dict[str, Any] = {"dictionary_id": as_id(dictionary_id, "dictionary_id")}
    if hook is not None:
        query["hook"] = as_id(hook, "hook")
    return query
