"""The typed store API: idempotent upserts keyed by identity and the bounded queries behind the endpoints.

Every argument that reaches a query is coerced to ``str``/``int`` first (see ``raysae.store.validate``),
so a caller can never smuggle an operator such as ``{"$gt": ""}`` into a filter, and search text is
regex-escaped. Every call retries connection errors with backoff, then raises StoreUnavailableError.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import gridfs
from pymongo import MongoClient
from pymongo.errors import ConfigurationError

from raysae.config.store import DEFAULT_DB, StoreConfig, check_db_name
from raysae.store import schema as s
from raysae.store import validate as v
from raysae.store.documents import Document, resolve_spilled
from raysae.store.retry import redact_uri, with_retries
from raysae.store.server import DEFAULT_URI, running_local_store_uri
from raysae.store.writes import StoreWrites

T = TypeVar("T")
FeatureSort = Literal["frequency", "max_activation", "index"]
_NO_ID = {"_id": 0}
# Pages and searches name the fields they show: an inclusion projection is also what secantusd-py
# applies fastest (measured: 20 analysed features in 20 ms, against 80 ms leaving out the heavy fields).
_SUMMARY = {"_id": 0, **{f: 1 for f in s.FEATURE_SUMMARY_FIELDS}}


def resolve_uri(config: StoreConfig | None = None) -> str:
    """config.uri, else $MONGO_URI, else the running `raysae store start` server, else DEFAULT_URI."""
    if config is not None and config.uri:
        return config.uri
    return os.environ.get("MONGO_URI", "").strip() or running_local_store_uri() or DEFAULT_URI


def resolve_db(config: StoreConfig | None = None) -> str:
    """config.db, else $MONGO_DB, else "mechinterp"."""
    if config is not None and config.db:
        return config.db
    return check_db_name(os.environ.get("MONGO_DB", "").strip() or DEFAULT_DB)


class Store(StoreWrites):
    """Access to raysae's MongoDB database. Construction does not connect; ``connect()`` checks."""

    def __init__(self, config: StoreConfig | None = None, *, uri: str | None = None, db: str | None = None):
        self.config = config or StoreConfig()
        self.uri = uri or resolve_uri(self.config)
        self.db_name = check_db_name(db) if db else resolve_db(self.config)
        c = self.config
        try:
            self.client: MongoClient = MongoClient(
                self.uri,
                serverSelectionTimeoutMS=c.server_selection_timeout_ms,
                connectTimeoutMS=c.connect_timeout_ms,
                socketTimeoutMS=c.socket_timeout_ms,
                appname=c.app_name,
                tz_aware=True,
                connect=False,
            )
        except ConfigurationError as err:
            raise ValueError(f"invalid MongoDB URI {redact_uri(self.uri)!r}: {err}") from err
        self.db = self.client[self.db_name]
        self.fs = gridfs.GridFS(self.db, collection=s.BLOB_BUCKET)

    @classmethod
    def from_config(cls, config: StoreConfig | None = None) -> Store:
        """A store for ``config`` (see ``resolve_uri``/``resolve_db`` for defaults); does not connect."""
        return cls(config)

    @classmethod
    def connect(
        cls, config: StoreConfig | None = None, *, uri: str | None = None, db: str | None = None
    ) -> Store:
        """A store that answered ping and has its indexes; StoreUnavailableError if unreachable."""
        store = cls(config, uri=uri, db=db)
        try:
            store.ping()
            store.ensure_indexes()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        c = self.config
        return with_retries(
            fn,
            what=what,
            uri=self.uri,
            db=self.db_name,
            retries=c.retries,
            backoff_s=c.retry_backoff_s,
            backoff_max_s=c.retry_backoff_max_s,
        )

    def ping(self) -> float:
        """Round-trip time of a ping in seconds; StoreUnavailableError after the retries."""

        def _ping() -> float:
            start = time.perf_counter()
            self.client.admin.command("ping")
            return time.perf_counter() - start

        return self._retry("pinging", _ping)

    def ensure_indexes(self) -> dict[str, list[str]]:
        """Create every collection's indexes (idempotent); returns index names per collection."""
        return self._retry("creating indexes", lambda: s.ensure_indexes(self.db))

    def _find(
        self,
        collection: str,
        query: Document,
        sort: list[tuple[str, int]],
        skip: int,
        limit: int,
        projection: Document | None = None,
    ) -> list[Document]:
        coll = self.db[collection]

        def run() -> list[Document]:
            docs = list(coll.find(query, projection or _NO_ID).sort(sort).skip(skip).limit(limit))
            return [resolve_spilled(doc, self.fs) for doc in docs]  # type: ignore[misc]

        return self._retry(f"reading {collection}", run)

    def _find_one(
        self, collection: str, query: Document, projection: Document | None = None
    ) -> Document | None:
        coll = self.db[collection]
        return self._retry(
            f"reading {collection}",
            lambda: resolve_spilled(coll.find_one(query, projection or _NO_ID), self.fs),
        )

    def _limit(self, limit: int) -> int:
        return v.as_limit(limit, self.config.max_page_size)

    def get_dictionary(self, dictionary_id: str) -> Document | None:
        """The record of one dictionary, or None."""
        return self._find_one(s.DICTIONARIES, {"dictionary_id": v.as_id(dictionary_id, "dictionary_id")})

    def list_dictionaries(self, *, skip: int = 0, limit: int = 100) -> list[Document]:
        """Dictionary records ordered by id."""
        return self._find(s.DICTIONARIES, {}, [("dictionary_id", 1)], v.as_skip(skip), self._limit(limit))

    def get_feature(self, dictionary_id: str, hook: str, index: int) -> Document | None:
        """One feature by identity, or None."""
        return self._find_one(
            s.FEATURES,
            v.feature_identity(v.as_id(dictionary_id, "dictionary_id"), v.as_id(hook, "hook"), index),
        )

    def count_features(self, dictionary_id: str, hook: str | None = None) -> int:
        """Number of stored features of a dictionary (of one hook when given)."""
        query = v.scope(dictionary_id, hook)
        return self._retry("counting features", lambda: self.db[s.FEATURES].count_documents(query))

    def page_features(
        self,
        dictionary_id: str,
        hook: str | None = None,
        *,
        sort_by: FeatureSort = "frequency",
        descending: bool = True,
        skip: int = 0,
        limit: int = 50,
        summary: bool = False,
    ) -> list[Document]:
        """One page of a dictionary's features (all hooks when ``hook`` is None), sorted by ``sort_by``
        with ties broken by (hook, index). Documents lacking the sort field come last when descending.
        ``summary`` reads only the page fields (``FEATURE_SUMMARY_FIELDS``), chosen in the database."""
        field = v.as_choice(sort_by, "sort_by", s.FEATURE_SORTS)
        if not isinstance(descending, bool):
            raise ValueError("descending must be a bool")
        direction = -1 if descending else 1
        sort = (
            [("hook", 1), ("index", direction)]
            if field == "index"
            else [(field, direction), ("hook", 1), ("index", 1)]
        )
        projection = _SUMMARY if summary else None
        return self._find(
            s.FEATURES, v.scope(dictionary_id, hook), sort, v.as_skip(skip), self._limit(limit), projection
        )

    def feature_summaries(
        self,
        dictionary_id: str,
        hook: str | None = None,
        *,
        start: int = 0,
        stop: int | None = None,
        limit: int | None = None,
    ) -> list[Document]:
        """The page fields (``FEATURE_SUMMARY_FIELDS``) of a dictionary's features by (hook, index): of
        one hook with ``start <= index < stop`` when ``hook`` is given, else all of them (at most
        ``limit``). A bounded index range is an index scan on every store, so reading a dictionary in
        ranges reads each document once and holds one range at a time."""
        query = v.scope(dictionary_id, hook)
        if hook is not None:
            bounds = {"$gte": v.as_index(start)}
            if stop is not None:
                bounds["$lt"] = v.as_index(stop)
            query["index"] = bounds
        elif start or stop is not None:
            raise ValueError("an index range needs a hook")
        n = 0 if limit is None else v.as_int(limit, "limit", 1)
        coll = self.db[s.FEATURES]

        def run() -> list[Document]:
            cursor = coll.find(query, _SUMMARY).sort([("hook", 1), ("index", 1)]).limit(n)
            return [resolve_spilled(doc, self.fs) for doc in cursor]  # type: ignore[misc]

        return self._retry("reading features", run)

    def find_features_by_token(
        self,
        token: str,
        *,
        dictionary_id: str | None = None,
        hook: str | None = None,
        limit: int = 50,
        summary: bool = False,
    ) -> list[Document]:
        """Features whose top positive DLA tokens include ``token`` (exact match), by max activation."""
        query: Document = {s.DLA_POSITIVE_TOKENS: v.as_text(token, "token")}
        if dictionary_id is not None:
            query.update(v.scope(dictionary_id, hook))
        elif hook is not None:
            raise ValueError("hook needs dictionary_id")
        sort = [(s.MAX_ACTIVATION, -1), ("dictionary_id", 1), ("hook", 1), ("index", 1)]
        return self._find(s.FEATURES, query, sort, 0, self._limit(limit), _SUMMARY if summary else None)

    def get_explanations(self, dictionary_id: str, hook: str, index: int) -> list[Document]:
        """All explanations of one feature, by explainer."""
        query = v.feature_identity(v.as_id(dictionary_id, "dictionary_id"), v.as_id(hook, "hook"), index)
        return self._find(s.EXPLANATIONS, query, [("explainer", 1)], 0, self.config.max_page_size)

    def search_explanations(
        self,
        text: str,
        *,
        dictionary_id: str | None = None,
        hook: str | None = None,
        case_sensitive: bool = False,
        skip: int = 0,
        limit: int = 50,
    ) -> list[Document]:
        """Explanations containing ``text`` literally (regex-escaped; secantusdb has no text index)."""
        query: Document = {s.EXPLANATION: {"$regex": re.escape(v.as_text(text, "text"))}}
        if not case_sensitive:
            query[s.EXPLANATION]["$options"] = "i"
        if dictionary_id is not None:
            query.update(v.scope(dictionary_id, hook))
        elif hook is not None:
            raise ValueError("hook needs dictionary_id")
        sort = [("dictionary_id", 1), ("hook", 1), ("index", 1), ("explainer", 1)]
        return self._find(s.EXPLANATIONS, query, sort, v.as_skip(skip), self._limit(limit))

    def get_scores(
        self, dictionary_id: str, hook: str, index: int, explainer: str | None = None
    ) -> list[Document]:
        """Scores of one feature's explanations (of one explainer when given)."""
        query = v.feature_identity(v.as_id(dictionary_id, "dictionary_id"), v.as_id(hook, "hook"), index)
        if explainer is not None:
            query["explainer"] = v.as_id(explainer, "explainer")
        return self._find(s.SCORES, query, [("explainer", 1), ("scorer", 1)], 0, self.config.max_page_size)

    def get_analysis(self, dictionary_id: str, analysis_id: str) -> Document | None:
        """The record of one analysis run, or None."""
        query = {
            "dictionary_id": v.as_id(dictionary_id, "dictionary_id"),
            "analysis_id": v.as_id(analysis_id, "analysis_id"),
        }
        return self._find_one(s.ANALYSES, query)

    def list_analyses(self, dictionary_id: str) -> list[Document]:
        """All analysis records of a dictionary, by id."""
        query = {"dictionary_id": v.as_id(dictionary_id, "dictionary_id")}
        return self._find(s.ANALYSES, query, [("analysis_id", 1)], 0, self.config.max_page_size)

    def get_graph(self, graph_id: str, *, exclude: tuple[str, ...] = ()) -> Document | None:
        """One attribution graph (GridFS fields read back, except the ``exclude`` ones), or None."""
        projection = {"_id": 0, **{v.as_id(f, "field"): 0 for f in exclude}}
        query = {"graph_id": v.as_id(graph_id, "graph_id")}
        return self._find_one(s.GRAPHS, query, projection)

    def get_graph_request(self, graph_id: str) -> Document | None:
        """The state of a graph asked for over HTTP (``GraphRequestDoc``), or None."""
        return self._find_one(s.GRAPH_REQUESTS, {"graph_id": v.as_id(graph_id, "graph_id")})

    def list_graphs(
        self, dictionary_id: str | None = None, *, skip: int = 0, limit: int = 50
    ) -> list[Document]:
        """Attribution graphs (of one dictionary when given), by id, without their bulky fields
        (``GRAPH_HEAVY_FIELDS``: adjacency, node table, pruned edges)."""
        query = {} if dictionary_id is None else {"dictionary_id": v.as_id(dictionary_id, "dictionary_id")}
        projection = {"_id": 0, **{f: 0 for f in s.GRAPH_HEAVY_FIELDS}}
        return self._find(s.GRAPHS, query, [("graph_id", 1)], v.as_skip(skip), self._limit(limit), projection)

    def iter_explanations(
        self, dictionary_id: str, explainer: str | None = None, *, fields: list[str] | None = None
    ) -> Iterator[Document]:
        """Every explanation of a dictionary (of one explainer when given), by (hook, index), fetched
        page by page; ``fields`` limits what is read (identity fields always come back)."""
        query: Document = {"dictionary_id": v.as_id(dictionary_id, "dictionary_id")}
        if explainer is not None:
            query["explainer"] = v.as_id(explainer, "explainer")
        return self._iter(s.EXPLANATIONS, query, fields)

    def iter_scores(
        self, dictionary_id: str, explainer: str | None = None, *, fields: list[str] | None = None
    ) -> Iterator[Document]:
        """Every score of a dictionary (of one explainer when given), by (hook, index, scorer), paged."""
        query: Document = {"dictionary_id": v.as_id(dictionary_id, "dictionary_id")}
        if explainer is not None:
            query["explainer"] = v.as_id(explainer, "explainer")
        return self._iter(s.SCORES, query, fields)

    def _iter(self, collection: str, query: Document, fields: list[str] | None) -> Iterator[Document]:
        identity = s.IDENTITY[collection]
        projection = None
        if fields is not None:
            projection = {"_id": 0, **{f: 1 for f in (*identity, *(v.as_id(f, "field") for f in fields))}}
        sort = [(f, 1) for f in identity]
        page, skip = self.config.max_page_size, 0
        while True:
            docs = self._find(collection, query, sort, skip, page, projection)
            yield from docs
            if len(docs) < page:
                return
            skip += page
