"""MongoDB access through pymongo only: collections, indexes, idempotent writes, the local server launcher."""

from raysae.config.store import StoreConfig
from raysae.home import raysae_home
from raysae.store.client import Store, resolve_db, resolve_uri
from raysae.store.documents import SPILL_KEY
from raysae.store.errors import DocumentTooLargeError, LocalStoreError, StoreError, StoreUnavailableError
from raysae.store.models import (
    AnalysisDoc,
    DictionaryDoc,
    ExplanationDoc,
    FeatureDoc,
    FeatureSummary,
    GraphDoc,
    GraphRequestDoc,
    ScoreDoc,
    StoreDoc,
)
from raysae.store.paths import local_store_dir
from raysae.store.schema import COLLECTIONS, ensure_indexes
from raysae.store.server import (
    DEFAULT_URI,
    LocalStoreServer,
    LocalStoreStatus,
    find_free_port,
    find_server_executable,
    local_uri,
    running_local_store_uri,
)

__all__ = [
    "COLLECTIONS",
    "DEFAULT_URI",
    "SPILL_KEY",
    "AnalysisDoc",
    "DictionaryDoc",
    "DocumentTooLargeError",
    "ExplanationDoc",
    "FeatureDoc",
    "FeatureSummary",
    "GraphDoc",
    "GraphRequestDoc",
    "LocalStoreError",
    "LocalStoreServer",
    "LocalStoreStatus",
    "ScoreDoc",
    "Store",
    "StoreConfig",
    "StoreDoc",
    "StoreError",
    "StoreUnavailableError",
    "ensure_indexes",
    "find_free_port",
    "find_server_executable",
    "local_store_dir",
    "local_uri",
    "raysae_home",
    "resolve_db",
    "resolve_uri",
    "running_local_store_uri",
]
