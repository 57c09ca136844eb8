"""Collections, identity keys, well-known fields and the indexes behind every query of the store.

The shape of each collection's documents is defined once, in ``raysae.store.models``; this module
holds what the database needs: names, identity keys, the queried fields and the indexes.

Every document also gets ``updated_at``. Fields too large for one document live in GridFS (bucket
``blobs``), see ``raysae.store.documents``.

secantusdb (the local store) has no text indexes, so explanation search is an escaped, unanchored
regex over ``explanation``. Measured on secantusd-py 0.7.0b3: an equality prefix plus at most one range
on the next key of a compound index is an index scan, but it decodes every candidate document whole in
Python (~1.5 ms per 210 KB analysed feature) before it filters, sorts (index order is unused under a
filter), skips, limits and projects; ``count_documents`` with a filter decodes the whole collection. So
reads there must name few documents by key (identity, or an index range of one hook): the Serve
replicas page from summaries they read once per analysis (``raysae.serve.reads``). Real MongoDB uses
these indexes for sort, filter and count alike.
"""

from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.database import Database
from pymongo.errors import OperationFailure

from raysae.store.models import FEATURE_HEAVY_FIELDS, FeatureSummary

__all__ = ["FEATURE_HEAVY_FIELDS", "FEATURE_SUMMARY_FIELDS", "INDEXES", "ensure_indexes"]

DICTIONARIES = "dictionaries"
FEATURES = "features"
ANALYSES = "analyses"
EXPLANATIONS = "explanations"
SCORES = "scores"
GRAPHS = "graphs"
GRAPH_REQUESTS = "graph_requests"
COLLECTIONS = (DICTIONARIES, FEATURES, ANALYSES, EXPLANATIONS, SCORES, GRAPHS, GRAPH_REQUESTS)
BLOB_BUCKET = "blobs"
GRAPH_HEAVY_FIELDS = ("adjacency", "nodes", "pruned_nodes", "pruned_edges")

FEATURE_IDENTITY = ("dictionary_id", "hook", "index")
IDENTITY: dict[str, tuple[str, ...]] = {
    DICTIONARIES: ("dictionary_id",),
    FEATURES: FEATURE_IDENTITY,
    ANALYSES: ("dictionary_id", "analysis_id"),
    EXPLANATIONS: (*FEATURE_IDENTITY, "explainer"),
    SCORES: (*FEATURE_IDENTITY, "explainer", "scorer"),
    GRAPHS: ("graph_id",),
    GRAPH_REQUESTS: ("graph_id",),
}

FREQUENCY = "frequency"
MAX_ACTIVATION = "max_activation"
DLA_POSITIVE_TOKENS = "dla_positive_tokens"
EXPLANATION = "explanation"
SCORE = "score"
UPDATED_AT = "updated_at"
FEATURE_SORTS = (FREQUENCY, MAX_ACTIVATION, "index")
# What a page or a search result shows of a feature; they read exactly these fields.
FEATURE_SUMMARY_FIELDS = tuple(FeatureSummary.model_fields)

_ID, _H, _I = "dictionary_id", "hook", "index"


def _identity_index(collection: str) -> IndexModel:
    keys = [(field, ASCENDING) for field in IDENTITY[collection]]
    return IndexModel(keys, name="identity", unique=True)


INDEXES: dict[str, list[IndexModel]] = {
    DICTIONARIES: [_identity_index(DICTIONARIES)],
    FEATURES: [
        _identity_index(FEATURES),
        IndexModel([(_ID, 1), (_H, 1), (FREQUENCY, DESCENDING), (_I, 1)], name="by_frequency"),
        IndexModel([(_ID, 1), (_H, 1), (MAX_ACTIVATION, DESCENDING), (_I, 1)], name="by_max_activation"),
        IndexModel([(_ID, 1), (FREQUENCY, DESCENDING), (_H, 1), (_I, 1)], name="all_hooks_by_frequency"),
        IndexModel(
            [(_ID, 1), (MAX_ACTIVATION, DESCENDING), (_H, 1), (_I, 1)], name="all_hooks_by_max_activation"
        ),
        IndexModel([(DLA_POSITIVE_TOKENS, 1), (_ID, 1), (_H, 1)], name="by_dla_positive_token"),
    ],
    ANALYSES: [_identity_index(ANALYSES)],
    # The identity index's (dictionary_id, hook, index) prefix serves "explanations of a feature".
    EXPLANATIONS: [_identity_index(EXPLANATIONS)],
    SCORES: [_identity_index(SCORES)],
    GRAPHS: [_identity_index(GRAPHS), IndexModel([(_ID, 1), ("graph_id", 1)], name="by_dictionary")],
    GRAPH_REQUESTS: [_identity_index(GRAPH_REQUESTS)],
    f"{BLOB_BUCKET}.files": [
        IndexModel([("metadata.key", 1)], name="by_owner"),
        IndexModel([("metadata.dictionary_id", 1)], name="by_dictionary"),
    ],
}

_INDEX_CONFLICT_CODES = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict


def ensure_indexes(db: Database) -> dict[str, list[str]]:
    """Create every index (idempotent). An index of ours whose spec changed is dropped and rebuilt."""
    created: dict[str, list[str]] = {}
    for collection, models in INDEXES.items():
        coll = db[collection]
        names = []
        for model in models:
            try:
                names.extend(coll.create_indexes([model]))
            except OperationFailure as err:
                if err.code not in _INDEX_CONFLICT_CODES:
                    raise
                coll.drop_index(model.document["name"])
                names.extend(coll.create_indexes([model]))
        created[collection] = names
    return created
