"""Errors of the store; each message says what failed and what to do about it."""

from __future__ import annotations

from raysae.errors import RaysaeError


class StoreError(RaysaeError, RuntimeError):
    """A store operation failed for a reason other than bad input."""


class StoreUnavailableError(StoreError):
    """The database could not be reached after the configured retries."""


class DocumentTooLargeError(RaysaeError, ValueError):
    """A document is over the size limit and could not be split into GridFS."""


class LocalStoreError(StoreError):
    """The local store server (secantusd-py) could not be found, started or stopped."""
