"""Idempotent writes: every write is an upsert keyed by the record's identity, in batches.

A retried job never duplicates a record and a re-run replaces it (``replace=False`` merges fields
instead). Oversize documents spill their largest fields to GridFS (see ``raysae.store.documents``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import gridfs
from pymongo import ReplaceOne, UpdateOne, WriteConcern
from pymongo.collection import Collection
from pymongo.database import Database

from raysae.config.store import StoreConfig
from raysae.store import schema as s
from raysae.store import validate as v
from raysae.store.documents import Document, check_query_fields, owner_key, spill_oversize, to_storable
from raysae.store.models import (
    AnalysisDoc,
    DictionaryDoc,
    ExplanationDoc,
    FeatureDoc,
    GraphDoc,
    GraphRequestDoc,
    ScoreDoc,
    StoreDoc,
)

Body = StoreDoc | Mapping[str, Any]
MODELS: dict[str, type[StoreDoc]] = {
    s.DICTIONARIES: DictionaryDoc,
    s.FEATURES: FeatureDoc,
    s.ANALYSES: AnalysisDoc,
    s.EXPLANATIONS: ExplanationDoc,
    s.SCORES: ScoreDoc,
    s.GRAPHS: GraphDoc,
    s.GRAPH_REQUESTS: GraphRequestDoc,
}


class StoreWrites:
    """The write half of ``Store`` (a mixin: Store provides the attributes below)."""

    config: StoreConfig
    db: Database
    fs: gridfs.GridFS

    _retry: Callable[[str, Callable[[], Any]], Any]

    def _upsert_many(
        self, collection: str, items: Iterable[tuple[Document, Body]], replace: bool = True
    ) -> int:
        """Upsert (identity, body) pairs in batches; returns the number of documents written."""
        coll = journaled(self.db[collection])
        identity_fields = s.IDENTITY[collection]
        written = 0
        batch: dict[str, tuple[Document, Document, list[str]]] = {}

        def flush() -> None:
            nonlocal written
            if batch:
                written += self._write_batch(coll, list(batch.values()), replace)
                batch.clear()

        for identity, body in items:
            key = owner_key(collection, identity)
            doc = to_storable(_mapping(body, MODELS[collection]))
            for field in identity_fields:
                if field in doc and doc[field] != identity[field]:
                    raise ValueError(
                        f"{key}: document has {field}={doc[field]!r}, expected {identity[field]!r}"
                    )
            doc.pop("_id", None)
            check_query_fields(MODELS[collection], doc, key)
            doc = {**identity, **doc, s.UPDATED_AT: datetime.now(UTC)}
            fs = self.fs if self.config.spill_to_gridfs else None
            meta = {"collection": collection, "dictionary_id": doc.get("dictionary_id")}
            doc, file_ids = self._retry(
                "writing GridFS blobs",
                lambda doc=doc, key=key, fs=fs, meta=meta: spill_oversize(
                    doc,
                    limit=self.config.max_document_bytes,
                    fs=fs,
                    key=key,
                    protected=(*identity_fields, s.UPDATED_AT, "dictionary_id"),
                    metadata=meta,
                ),
            )
            batch[key] = (identity, doc, file_ids)  # the last write of an identity in a batch wins
            if len(batch) >= self.config.batch_size:
                flush()
        flush()
        return written

    def _write_batch(
        self, coll: Collection, batch: list[tuple[Document, Document, list[str]]], replace: bool
    ) -> int:
        if replace:
            ops: list[Any] = [ReplaceOne(ident, doc, upsert=True) for ident, doc, _ in batch]
        else:
            ops = [UpdateOne(ident, {"$set": doc}, upsert=True) for ident, doc, _ in batch]
        result = self._retry(f"writing {len(ops)} {coll.name}", lambda: coll.bulk_write(ops, ordered=False))
        if self.config.spill_to_gridfs:
            self._retry(
                "removing stale GridFS blobs", lambda: self._drop_stale_blobs(coll.name, batch, replace)
            )
        return result.upserted_count + result.matched_count

    def _drop_stale_blobs(
        self, collection: str, batch: list[tuple[Document, Document, list[str]]], replace: bool
    ) -> None:
        """Delete GridFS files of fields that these writes replaced (or, with replace, dropped)."""
        owners = {owner_key(collection, ident): (set(doc), set(ids)) for ident, doc, ids in batch}
        files = self.db[f"{s.BLOB_BUCKET}.files"]
        for f in files.find({"metadata.key": {"$in": list(owners)}}, {"_id": 1, "metadata": 1}):
            fields, keep = owners[f["metadata"]["key"]]
            if f["_id"] not in keep and (replace or f["metadata"].get("field") in fields):
                self.fs.delete(f["_id"])

    def upsert_dictionary(self, dictionary_id: str, doc: Body, *, replace: bool = True) -> None:
        """Write the record of one dictionary (replace=False merges fields into an existing record)."""
        ident = {"dictionary_id": v.as_id(dictionary_id, "dictionary_id")}
        self._upsert_many(s.DICTIONARIES, [(ident, doc)], replace)

    def upsert_features(
        self, dictionary_id: str, hook: str, docs: Iterable[Body], *, replace: bool = True
    ) -> int:
        """Write feature documents (``FeatureDoc`` or mappings) of one hook, each carrying its ``index``;
        returns how many were written."""
        d, h = v.as_id(dictionary_id, "dictionary_id"), v.as_id(hook, "hook")
        items = (
            (v.feature_identity(d, h, _field(doc, "index")), doc)
            for doc in (_mapping(doc, FeatureDoc) for doc in docs)
        )
        return self._upsert_many(s.FEATURES, items, replace)

    def upsert_analysis(
        self, dictionary_id: str, analysis_id: str, doc: Body, *, replace: bool = True
    ) -> None:
        """Write the record of one analysis run of a dictionary."""
        ident = {
            "dictionary_id": v.as_id(dictionary_id, "dictionary_id"),
            "analysis_id": v.as_id(analysis_id, "analysis_id"),
        }
        self._upsert_many(s.ANALYSES, [(ident, doc)], replace)

    def upsert_explanations(self, dictionary_id: str, hook: str, docs: Iterable[Body]) -> int:
        """Write explanations (``ExplanationDoc`` or mappings with ``index``, ``explainer`` and
        ``explanation``, the text)."""
        d, h = v.as_id(dictionary_id, "dictionary_id"), v.as_id(hook, "hook")

        def items() -> Iterable[tuple[Document, Body]]:
            for doc in (_mapping(doc, ExplanationDoc) for doc in docs):
                ident = {
                    **v.feature_identity(d, h, _field(doc, "index")),
                    "explainer": v.as_id(_field(doc, "explainer"), "explainer"),
                }
                yield ident, doc

        return self._upsert_many(s.EXPLANATIONS, items())

    def upsert_explanation(
        self, dictionary_id: str, hook: str, index: int, explainer: str, explanation: str, **extra: Any
    ) -> None:
        """Write one explanation of a feature by ``explainer`` (e.g. the model name)."""
        self.upsert_explanations(
            dictionary_id,
            hook,
            [{**extra, "index": index, "explainer": explainer, s.EXPLANATION: explanation}],
        )

    def upsert_scores(self, dictionary_id: str, hook: str, docs: Iterable[Body]) -> int:
        """Write scores (``ScoreDoc`` or mappings with ``index``, ``explainer``, ``scorer`` and a numeric
        ``score``)."""
        d, h = v.as_id(dictionary_id, "dictionary_id"), v.as_id(hook, "hook")

        def items() -> Iterable[tuple[Document, Body]]:
            for doc in (_mapping(doc, ScoreDoc) for doc in docs):
                ident = {
                    **v.feature_identity(d, h, _field(doc, "index")),
                    "explainer": v.as_id(_field(doc, "explainer"), "explainer"),
                    "scorer": v.as_id(_field(doc, "scorer"), "scorer"),
                }
                yield ident, doc

        return self._upsert_many(s.SCORES, items())

    def upsert_score(
        self,
        dictionary_id: str,
        hook: str,
        index: int,
        explainer: str,
        scorer: str,
        score: float,
        **extra: Any,
    ) -> None:
        """Write the score that ``scorer`` gave to ``explainer``'s explanation of a feature."""
        doc = {**extra, "index": index, "explainer": explainer, "scorer": scorer, s.SCORE: score}
        self.upsert_scores(dictionary_id, hook, [doc])

    def upsert_graph(self, graph_id: str, doc: Body, *, dictionary_id: str | None = None) -> None:
        """Write an attribution graph (large ones spill their biggest fields to GridFS)."""
        body = dict(_mapping(doc, GraphDoc))
        if dictionary_id is not None:
            body["dictionary_id"] = v.as_id(dictionary_id, "dictionary_id")
        self._upsert_many(s.GRAPHS, [({"graph_id": v.as_id(graph_id, "graph_id")}, body)])

    def upsert_graph_request(self, graph_id: str, doc: Body) -> None:
        """Record the state of a requested graph (merged into what is stored)."""
        body = dict(_mapping(doc, GraphRequestDoc))
        self._upsert_many(s.GRAPH_REQUESTS, [({"graph_id": v.as_id(graph_id, "graph_id")}, body)])

    def delete_stale_features(self, dictionary_id: str, hooks: Sequence[str], d_sae: int) -> int:
        """Delete the dictionary's feature documents that a fresh analysis no longer writes: those whose
        hook is not in ``hooks`` or whose index is >= ``d_sae`` (an earlier, differently shaped run),
        and their GridFS blobs. Returns the number of documents deleted; repeatable after interruption
        (blobs are matched by their owner key, not by the documents)."""
        d = v.as_id(dictionary_id, "dictionary_id")
        if isinstance(hooks, str):
            raise ValueError("hooks must be a sequence of hook names, not one string")
        keep = [v.as_id(h, "hook") for h in hooks]
        n = v.as_int(d_sae, "d_sae", 0)
        stale = {"dictionary_id": d, "$or": [{"hook": {"$nin": keep}}, {"index": {"$gte": n}}]}
        coll = self.db[s.FEATURES]
        deleted = self._retry(
            f"deleting stale features of {d}", lambda: coll.delete_many(stale).deleted_count
        )

        def drop_blobs() -> None:
            files = self.db[f"{s.BLOB_BUCKET}.files"]
            query = {"metadata.collection": s.FEATURES, "metadata.dictionary_id": d}
            for f in files.find(query, {"_id": 1, "metadata.key": 1}):
                _, _, hook, index = json.loads(f["metadata"]["key"])
                if hook not in keep or index >= n:
                    self.fs.delete(f["_id"])

        self._retry(f"deleting stale GridFS blobs of {d}", drop_blobs)
        return deleted

    def delete_dictionary(self, dictionary_id: str) -> dict[str, int]:
        """Delete a dictionary and everything about it (features, analyses, explanations, scores, graphs,
        GridFS blobs); returns deleted counts per collection. The dictionary record goes last, so an
        interrupted delete can simply be repeated."""
        d = v.as_id(dictionary_id, "dictionary_id")
        counts: dict[str, int] = {}
        for name in (s.FEATURES, s.ANALYSES, s.EXPLANATIONS, s.SCORES, s.GRAPHS, s.GRAPH_REQUESTS):
            coll = self.db[name]
            counts[name] = self._retry(
                f"deleting {name} of {d}",
                lambda coll=coll: coll.delete_many({"dictionary_id": d}).deleted_count,
            )

        def drop_blobs() -> int:
            ids = [
                f["_id"]
                for f in self.db[f"{s.BLOB_BUCKET}.files"].find({"metadata.dictionary_id": d}, {"_id": 1})
            ]
            for file_id in ids:
                self.fs.delete(file_id)
            return len(ids)

        counts["blobs"] = self._retry(f"deleting GridFS blobs of {d}", drop_blobs)
        coll = self.db[s.DICTIONARIES]
        counts[s.DICTIONARIES] = self._retry(
            f"deleting dictionary {d}", lambda: coll.delete_many({"dictionary_id": d}).deleted_count
        )
        return counts


def journaled(coll: Collection) -> Collection:
    """``coll`` with writes acknowledged only once in the server's journal (``j: true``), other write
    concern options kept. Acknowledged by default, a write may still sit in the journal buffer, which a
    killed server loses (secantusd-py lost the last 1-2 documents of a 16-document batch killed right
    after its acknowledgement; mongod with ``j: false`` can too), while the job, told they were written,
    never writes them again. Costs ~20 % on bulk feature writes. An unacknowledged concern (``w: 0``)
    stays as it is."""
    concern = coll.write_concern.document
    if concern.get("w") == 0 or concern.get("j") or concern.get("fsync"):
        return coll
    return coll.with_options(write_concern=WriteConcern(**{**concern, "j": True}))


def _mapping(doc: Any, model: type[StoreDoc]) -> Any:
    """A model's stored fields; mappings (and anything else, for ``_field`` to reject) as they are."""
    if isinstance(doc, StoreDoc):
        if not isinstance(doc, model):
            raise ValueError(f"expected a {model.__name__} or a mapping, got a {type(doc).__name__}")
        return doc.storable()
    return doc


def _field(doc: Any, name: str) -> Any:
    if not isinstance(doc, Mapping):
        raise ValueError(f"each document must be a mapping, got {type(doc).__name__}")
    return doc.get(name)
