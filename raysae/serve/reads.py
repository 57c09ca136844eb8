"""The ingress replica's read caches: dictionary records for ``record_ttl_s``, and, keyed by the record's
version, every feature's page fields (``FeatureTable``) and rendered feature documents.

Why: the store cannot be trusted to page fast. secantusd-py (the local store) decodes every candidate
document whole in Python before it sorts and projects, so one sorted page of a 2,304-feature analysis
read all 2,304 documents (~500 MB of BSON) and took 15 s; its filtered counts decode the whole
collection. Analysis documents only change when an analysis rewrites them, and the analysis writes the
dictionary record after its features, so ``(analysis_id, updated_at)`` of the record names one state of
the features: a replica reads a dictionary's page fields once per version, in index ranges of one hook
(index scans everywhere), then sorts, pages, counts and searches tokens in memory, and answers with JSON
it rendered once. A feature's explanations and scores (which the explain endpoint adds to) are reused
for record_ttl_s, like the record.

Rendering uses the response models' own pydantic serialisation (``dump_json``: NaN and infinities become
null, as ``FiniteJSONResponse`` does), so the bytes are what FastAPI would have sent for the same document.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from fastapi import Response
from pydantic import TypeAdapter

from raysae.config.serve import ServeConfig
from raysae.store import Store
from raysae.store import validate as v
from raysae.store.models import ExplanationDoc, FeatureDoc, FeatureSummary, ScoreDoc

RANGE = 128  # features per store read while loading a table: bounds what the store holds at once
MAX_RECORDS = 4096  # dictionary records a replica remembers
NOTES_BYTES = 64 * 1024**2  # rendered explanations and scores a replica keeps
Version = tuple[Any, Any]

_SUMMARY = TypeAdapter(FeatureSummary)
_FEATURE = TypeAdapter(FeatureDoc)
_EXPLANATIONS = TypeAdapter(list[ExplanationDoc])
_SCORES = TypeAdapter(list[ScoreDoc])


def version_of(record: dict[str, Any]) -> Version:
    """What changes whenever an analysis (or anything else) rewrites the dictionary record."""
    return record.get("analysis_id"), record.get("updated_at")


def sort_key(value: Any) -> tuple[int, Any]:
    """MongoDB's order of a sort field's values: missing and null, then NaN, then numbers, then others."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, 0) if math.isnan(value) else (2, value)
    return (3, str(value))


def json_response(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


def page_body(head: dict[str, Any], items: Sequence[bytes]) -> bytes:
    """``head`` as a JSON object with ``items``: the already rendered item objects."""
    start = json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode()
    return start[:-1] + (b',"items":[' if head else b'"items":[') + b",".join(items) + b"]}"


def notes_body(explanations: list[dict[str, Any]], scores: list[dict[str, Any]]) -> bytes:
    """The explanations and scores members of a ``FeatureDetail`` object: ``doc[:-1] + notes + b"}"``."""
    ex = _EXPLANATIONS.dump_json(_EXPLANATIONS.validate_python(explanations))
    sc = _SCORES.dump_json(_SCORES.validate_python(scores))
    return b',"explanations":' + ex + b',"scores":' + sc


def render_feature(doc: dict[str, Any]) -> bytes:
    """A stored feature document as ``FeatureDoc`` JSON (explanations and scores: notes_body)."""
    doc = {k: value for k, value in doc.items() if k not in ("explanations", "scores")}
    return _FEATURE.dump_json(_FEATURE.validate_python(doc))


class FeatureTable:
    """The page fields of every feature of one dictionary version, with its sort orders built on demand."""

    def __init__(self, docs: list[dict[str, Any]]):
        docs = sorted(docs, key=lambda d: (d["hook"], d["index"]))
        self.hooks = [d["hook"] for d in docs]
        self.indices = [d["index"] for d in docs]
        self.keys = {f: [sort_key(d.get(f)) for d in docs] for f in ("frequency", "max_activation")}
        self.tokens = [d.get("dla_positive_tokens") or () for d in docs]
        self.items = [_SUMMARY.dump_json(_SUMMARY.validate_python(d)) for d in docs]
        self.counts = Counter(self.hooks)
        self._orders: dict[tuple[str | None, str, bool], list[int]] = {}
        self._by_token: dict[str, list[int]] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.items)

    def count(self, hook: str | None) -> int:
        return len(self.items) if hook is None else self.counts.get(hook, 0)

    def _order(self, hook: str | None, sort_by: str, descending: bool) -> list[int]:
        """Row numbers in the store's order: (hook, index) for index, else (field, hook, index)."""
        key = (hook, sort_by, descending)
        with self._lock:
            order = self._orders.get(key)
        if order is not None:
            return order
        rows = [r for r, h in enumerate(self.hooks) if hook is None or h == hook]  # (hook, index) order
        if sort_by != "index":
            values = self.keys[sort_by]
            order = sorted(rows, key=values.__getitem__, reverse=descending)  # stable: ties stay in order
        elif descending:
            order = sorted(rows, key=lambda r: (self.hooks[r], -self.indices[r]))
        else:
            order = rows
        with self._lock:
            self._orders[key] = order
        return order

    def page(self, hook: str | None, sort_by: str, descending: bool, skip: int, limit: int) -> list[bytes]:
        order = self._order(hook, sort_by, descending)
        return [self.items[r] for r in order[skip : skip + limit]]

    def by_token(self, token: str, hook: str | None, limit: int) -> list[bytes]:
        """Features whose top positive DLA tokens include ``token``, by max_activation desc, (hook, index)."""
        if self._by_token is None:  # built once; two threads building it at once build the same
            index: dict[str, list[int]] = {}
            for r in self._order(None, "max_activation", True):
                for t in dict.fromkeys(self.tokens[r]):
                    index.setdefault(t, []).append(r)
            self._by_token = index
        rows = self._by_token.get(token, [])
        rows = [r for r in rows if hook is None or self.hooks[r] == hook]
        return [self.items[r] for r in rows[:limit]]


class SizedLRU:
    """A thread-safe LRU bounded by the total ``size`` of its values (bytes, features...)."""

    def __init__(self, capacity: float, size: Callable[[Any], float]):
        self.capacity = capacity
        self.size = size
        self.used = 0.0
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` unless it alone is over the capacity; evict the least recently used to fit."""
        n = self.size(value)
        if n > self.capacity:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.used -= self.size(old)
            self._data[key] = value
            self.used += n
            while self.used > self.capacity:
                _, dropped = self._data.popitem(last=False)
                self.used -= self.size(dropped)

    def drop(self, match: Callable[[Hashable], bool]) -> None:
        with self._lock:
            for key in [k for k in self._data if match(k)]:
                self.used -= self.size(self._data.pop(key))


class ReadCache:
    """Everything one ingress replica remembers of the store; safe to use from the route thread pool.
    The ``cached_*``/``fresh_*`` methods never call the store: async routes answer from them."""

    def __init__(self, store: Store, config: ServeConfig):
        self.store = store
        self.config = config
        self.ttl = config.record_ttl_s
        self._records: OrderedDict[str, tuple[float, dict[str, Any] | None]] = OrderedDict()
        self._refreshing: set[str] = set()
        self._tables = SizedLRU(config.page_cache_features, len)
        self._features = SizedLRU(config.feature_cache_mb * 1024**2, len)
        self._notes = SizedLRU(NOTES_BYTES, lambda hit: len(hit[1]))
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, Version], threading.Lock] = {}
        self._too_big: set[tuple[str, Version]] = set()  # versions paged by the store instead

    def record(self, dictionary_id: str) -> dict[str, Any] | None:
        """The dictionary's record (None: no such dictionary), read at most once per record_ttl_s; while
        one thread reads it again the others go on with the previous one, so expiry is one store read."""
        with self._lock:
            hit = self._records.get(dictionary_id)
            if hit is not None and (
                dictionary_id in self._refreshing or time.monotonic() - hit[0] < self.ttl
            ):
                return hit[1]
            self._refreshing.add(dictionary_id)
        try:
            now = time.monotonic()
            record = self.store.get_dictionary(dictionary_id)
            with self._lock:
                self._records[dictionary_id] = (now, record)
                self._records.move_to_end(dictionary_id)
                while len(self._records) > MAX_RECORDS:
                    self._records.popitem(last=False)
        finally:
            with self._lock:
                self._refreshing.discard(dictionary_id)
        return record

    def _cached_record(self, dictionary_id: str) -> dict[str, Any] | None:
        """The record ``record`` would return without reading the store, else None."""
        with self._lock:
            hit = self._records.get(dictionary_id)
            refreshing = dictionary_id in self._refreshing
        if hit is None or not (refreshing or time.monotonic() - hit[0] < self.ttl):
            return None
        return hit[1]

    def fresh_table(self, dictionary_id: str) -> FeatureTable | None:
        """The dictionary's loaded table if its record needs no store read now, else None."""
        record = self._cached_record(dictionary_id)
        return None if record is None else self._tables.get((dictionary_id, version_of(record)))

    def cached_feature(self, dictionary_id: str, hook: str, index: int) -> bytes | None:
        """A feature's whole response if its document, explanations and scores are cached and fresh."""
        record = self._cached_record(dictionary_id)
        if record is None:
            return None
        body = self._features.get((dictionary_id, version_of(record), hook, index))
        notes = self._notes.get((dictionary_id, hook, index))
        if body is None or notes is None or time.monotonic() - notes[0] >= self.ttl:
            return None
        return body[:-1] + notes[1] + b"}"

    def table(self, record: dict[str, Any]) -> FeatureTable | None:
        """The page fields of the dictionary's features, read once per version (one reader at a time);
        None when the dictionary has more features than page_cache_features."""
        key = (record["dictionary_id"], version_of(record))
        table = self._tables.get(key)
        if table is not None or self.config.page_cache_features == 0 or key in self._too_big:
            return table
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        try:
            with loading:
                table = self._tables.get(key)
                if table is None:
                    table = self._load(record)
                    if table is None:
                        self._too_big.add(key)
                    else:  # an older version of this dictionary is never asked for again
                        self._tables.drop(lambda k: k[0] == key[0])
                        self._tables.put(key, table)
        finally:
            with self._lock:
                self._loading.pop(key, None)
        return table

    def _load(self, record: dict[str, Any]) -> FeatureTable | None:
        """Read by (hook, index range) when the record names its hooks and d_sae (analysis does), each
        document once; the range from d_sae on catches features a wider earlier version left."""
        dictionary_id, budget = record["dictionary_id"], self.config.page_cache_features
        hooks, d_sae = record.get("hooks"), record.get("d_sae")
        if not (isinstance(hooks, list) and all(isinstance(h, str) for h in hooks) and type(d_sae) is int):
            docs = self.store.feature_summaries(dictionary_id, limit=budget + 1)
            return FeatureTable(docs) if len(docs) <= budget else None
        if len(hooks) * d_sae > budget:
            return None
        docs = []
        for hook in hooks:
            for start in range(0, d_sae, RANGE):
                stop = min(start + RANGE, d_sae)
                docs += self.store.feature_summaries(dictionary_id, hook, start=start, stop=stop)
            docs += self.store.feature_summaries(dictionary_id, hook, start=max(d_sae, 0))
        return FeatureTable(docs) if len(docs) <= budget else None

    def feature(
        self, record: dict[str, Any] | None, dictionary_id: str, hook: str, index: int
    ) -> bytes | None:
        """One feature's rendered document (None: not stored); cached per version when there is a record."""
        hook = v.as_id(hook, "hook")
        key = None if record is None else (dictionary_id, version_of(record), hook, index)
        body = None if key is None else self._features.get(key)
        if body is not None:
            return body
        doc = self.store.get_feature(dictionary_id, hook, index)
        if doc is None:
            return None
        body = render_feature(doc)
        if key is not None:
            self._features.put(key, body)
        return body

    def notes(self, dictionary_id: str, hook: str, index: int) -> bytes:
        """The ``,"explanations":[..],"scores":[..]`` of a feature's response, read at most once per
        record_ttl_s (the explain endpoint adds to them)."""
        key = (dictionary_id, hook, index)
        hit = self._notes.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        now = time.monotonic()
        explanations = self.store.get_explanations(dictionary_id, hook, index)
        fragment = notes_body(explanations, self.store.get_scores(dictionary_id, hook, index))
        self._notes.put(key, (now, fragment))
        return fragment

    def stats(self) -> dict[str, float]:
        """Entries and sizes of the caches (for logs and tests)."""
        return {
            "records": len(self._records),
            "tables": len(self._tables),
            "table_features": self._tables.used,
            "features": len(self._features),
            "feature_bytes": self._features.used,
        }
