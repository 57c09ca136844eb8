"""Settings of the MongoDB store: where it is, how long to wait for it, how to write to it.

Precedence, for ``uri`` and ``db``: a value set in the config (file or constructor) wins; else the
environment (``MONGO_URI``, ``MONGO_DB``); else, for ``uri`` only, the server that ``raysae store start``
runs under ``$RAYSAE_HOME/store`` when it is running; else the built-in default
(``mongodb://127.0.0.1:27017/?directConnection=true`` and ``mechinterp``). ``raysae.store.resolve_uri``
and ``raysae.store.resolve_db`` apply this order; the config itself keeps ``None`` so that a saved
config never carries a password from the environment.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from raysae.config.base import StrictModel

DEFAULT_DB = "mechinterp"
# MongoDB's hard limit is 16 MiB per document; keep 64 KiB spare for identity fields and timestamps.
MAX_BSON_BYTES = 16 * 1024 * 1024
_FORBIDDEN_DB_CHARS = set('/\\. "$*<>:|?\0')


def check_db_name(name: str) -> str:
    """Return ``name`` if MongoDB accepts it as a database name, else raise ValueError."""
    if not name or len(name.encode()) > 63:
        raise ValueError(f"database name must be 1-63 bytes, got {name!r}")
    bad = sorted(set(name) & _FORBIDDEN_DB_CHARS)
    if bad:
        raise ValueError(f"database name {name!r} contains forbidden characters {bad}")
    return name


class StoreConfig(StrictModel):
    """Connection and write settings of the MongoDB store (any MongoDB, Atlas, or the local store)."""

    uri: str | None = None
    """MongoDB connection string. Unset: MONGO_URI, else the running `raysae store start` server, else
    mongodb://127.0.0.1:27017/?directConnection=true (add directConnection=true for a single local server)."""
    db: str | None = None
    """Database name. Unset: MONGO_DB, else "mechinterp"."""
    server_selection_timeout_ms: int = Field(5000, gt=0)
    """How long one attempt waits for a reachable server before it counts as failed."""
    connect_timeout_ms: int = Field(5000, gt=0)
    """Timeout of opening one connection."""
    socket_timeout_ms: int = Field(120_000, gt=0)
    """Timeout of one network round trip (large bulk writes and GridFS uploads take a while)."""
    retries: int = Field(3, ge=0, le=20)
    """Extra attempts after a connection error (AutoReconnect, NetworkTimeout, server selection timeout)
    before StoreUnavailableError. Every write is an idempotent upsert, so retrying is safe."""
    retry_backoff_s: float = Field(0.5, ge=0)
    """Sleep before the first retry; it doubles on each further retry."""
    retry_backoff_max_s: float = Field(8.0, ge=0)
    """Upper bound of one backoff sleep."""
    batch_size: int = Field(500, gt=0, le=100_000)
    """Upserts per bulk_write call."""
    max_document_bytes: int = Field(MAX_BSON_BYTES - 64 * 1024, ge=1024, le=MAX_BSON_BYTES)
    """Largest stored document (BSON bytes). Larger ones spill their biggest fields to GridFS, or fail."""
    spill_to_gridfs: bool = True
    """Move the largest top-level fields of an oversize document into GridFS (read back transparently);
    False makes an oversize document a DocumentTooLargeError."""
    max_page_size: int = Field(1000, gt=0, le=100_000)
    """Upper bound of `limit` in every paged query."""
    app_name: str = "raysae"
    """Client name reported to the server (shows in its logs and currentOp)."""

    @field_validator("db")
    @classmethod
    def _check_db(cls, value: str | None) -> str | None:
        return None if value is None else check_db_name(value)
