"""The Store against a real server (secantusd-py from the session fixture, or $RAYSAE_TEST_MONGO_URI)."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from raysae.config.store import StoreConfig
from raysae.store import DocumentTooLargeError, Store, StoreUnavailableError, find_free_port, local_uri
from raysae.store.documents import SPILL_KEY
from raysae.store.models import DictionaryDoc, Example, ExplanationDoc, FeatureDoc, ScoreDoc

HOOK = "blocks.3.hook_resid_post"


def _strip(docs):
    return [{k: val for k, val in d.items() if k != "updated_at"} for d in docs]


def _features(n: int, hook: str = HOOK, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    freqs = rng.sample(range(1000), n)
    return [
        {
            "index": i,
            "frequency": freqs[i] / 1000,
            "max_activation": float((i * 7) % n),
            "dla_positive_tokens": [f"tok{i % 3}", " the"] if i % 2 == 0 else [f"tok{i % 3}"],
            "hook_name_copy": hook,
        }
        for i in range(n)
    ]


def test_indexes_created_idempotently(store):
    first = store.ensure_indexes()
    info = {name: store.db[name].index_information() for name in first}
    assert store.ensure_indexes() == first
    assert {name: store.db[name].index_information() for name in first} == info
    assert "by_frequency" in info["features"] and info["features"]["identity"]["unique"]
    # An index of ours whose spec changed is rebuilt, not an error.
    store.db["features"].drop_index("by_frequency")
    store.db["features"].create_index([("frequency", 1)], name="by_frequency")
    store.ensure_indexes()
    assert store.db["features"].index_information()["by_frequency"] == info["features"]["by_frequency"]


def test_upserts_are_idempotent(store):
    store.config.batch_size = 4  # several bulk_write batches
    docs = _features(10)
    assert store.upsert_features("d1", HOOK, docs) == 10
    before = _strip(store.page_features("d1", HOOK, sort_by="index", descending=False, limit=100))
    assert store.upsert_features("d1", HOOK, docs) == 10  # a retried job
    after = _strip(store.page_features("d1", HOOK, sort_by="index", descending=False, limit=100))
    assert after == before and len(after) == 10
    assert store.db.features.count_documents({}) == 10
    # A re-run replaces: removed fields disappear; duplicates inside one call collapse to the last.
    store.upsert_features("d1", HOOK, [{"index": 3, "frequency": 0.5}, {"index": 3, "frequency": 0.25}])
    assert _strip([store.get_feature("d1", HOOK, 3)]) == [
        {"dictionary_id": "d1", "hook": HOOK, "index": 3, "frequency": 0.25}
    ]
    store.upsert_features("d1", HOOK, [{"index": 3, "max_activation": 2.0}], replace=False)
    assert store.get_feature("d1", HOOK, 3)["frequency"] == 0.25  # merged, not replaced
    assert store.count_features("d1") == 10


def test_every_record_kind_round_trips_once(store):
    for _ in range(2):
        store.upsert_dictionary("d1", {"architecture": "sae", "d_sae": np.int64(4608)})
        store.upsert_analysis("d1", "run-1", {"tokens": 1_000_000})
        store.upsert_explanation("d1", HOOK, 5, "smollm", "fires on cats", prompt_version=2)
        store.upsert_score("d1", HOOK, 5, "smollm", "detection", 0.8, n=100)
        store.upsert_score("d1", HOOK, 5, "smollm", "fuzzing", 0.6)
        store.upsert_graph("g1", {"prompt": "The cat", "nodes": [1, 2]}, dictionary_id="d1")
    assert _strip(store.list_dictionaries()) == [
        {"dictionary_id": "d1", "architecture": "sae", "d_sae": 4608}
    ]
    assert store.get_dictionary("d1")["d_sae"] == 4608 and store.get_dictionary("nope") is None
    assert store.get_analysis("d1", "run-1")["tokens"] == 1_000_000 and len(store.list_analyses("d1")) == 1
    [expl] = store.get_explanations("d1", HOOK, 5)
    assert (expl["explanation"], expl["prompt_version"]) == ("fires on cats", 2)
    assert [(s["scorer"], s["score"]) for s in store.get_scores("d1", HOOK, 5)] == [
        ("detection", 0.8),
        ("fuzzing", 0.6),
    ]
    assert store.get_scores("d1", HOOK, 5, explainer="other") == []
    assert store.get_graph("g1")["nodes"] == [1, 2] and len(store.list_graphs("d1")) == 1
    for name in ("explanations", "scores", "graphs", "analyses", "dictionaries"):
        assert store.db[name].count_documents({}) == (2 if name == "scores" else 1)


def test_page_features_sorted_with_stable_ties(store):
    docs = _features(30)
    store.upsert_features("d1", HOOK, docs)
    store.upsert_features("d1", "blocks.4.hook_resid_post", _features(5, seed=1))
    store.upsert_features("d2", HOOK, _features(5, seed=2))  # another dictionary: never returned
    pages = [store.page_features("d1", HOOK, skip=s, limit=7) for s in range(0, 35, 7)]
    got = [d["index"] for page in pages for d in page]
    assert got == [d["index"] for d in sorted(docs, key=lambda d: -d["frequency"])]
    asc = store.page_features("d1", HOOK, sort_by="max_activation", descending=False, limit=1000)
    assert [d["index"] for d in asc] == [
        d["index"] for d in sorted(docs, key=lambda d: (d["max_activation"], d["index"]))
    ]
    everything = store.page_features("d1", None, sort_by="frequency", limit=100)
    assert len(everything) == 35 and {d["hook"] for d in everything} == {HOOK, "blocks.4.hook_resid_post"}
    freqs = [d["frequency"] for d in everything]
    assert freqs == sorted(freqs, reverse=True)
    assert store.count_features("d1", HOOK) == 30 and store.count_features("d1") == 35
    assert store.get_feature("d1", HOOK, 29)["index"] == 29 and store.get_feature("d1", HOOK, 30) is None


def test_find_features_by_token(store):
    store.upsert_features("d1", HOOK, _features(12))
    store.upsert_features("d2", HOOK, _features(6))
    hits = store.find_features_by_token(" the", dictionary_id="d1")
    assert {d["index"] for d in hits} == {i for i in range(12) if i % 2 == 0}
    assert [d["max_activation"] for d in hits] == sorted((d["max_activation"] for d in hits), reverse=True)
    assert len(store.find_features_by_token("tok1")) == 4 + 2  # both dictionaries
    assert store.find_features_by_token("tok", dictionary_id="d1") == []  # exact token, not a prefix
    assert len(store.find_features_by_token("tok0", dictionary_id="d1", hook=HOOK, limit=2)) == 2


def test_search_explanations_is_literal(store):
    texts = ["Fires on cats and dogs", "matches .* regex chars (a|b)", "cat food", "$where: 1"]
    store.upsert_explanations(
        "d1", HOOK, [{"index": i, "explainer": "e", "explanation": t} for i, t in enumerate(texts)]
    )
    store.upsert_explanation("d2", HOOK, 0, "e", "another cat")
    assert [d["index"] for d in store.search_explanations("cat", dictionary_id="d1")] == [0, 2]
    assert len(store.search_explanations("CAT")) == 3
    assert store.search_explanations("CAT", case_sensitive=True) == []
    assert [d["index"] for d in store.search_explanations(".*")] == [1]
    assert [d["index"] for d in store.search_explanations("(a|b)")] == [1]
    assert [d["index"] for d in store.search_explanations("$where")] == [3]
    assert store.search_explanations("^Fires") == []
    assert len(store.search_explanations("a", dictionary_id="d1", skip=1, limit=1)) == 1


def test_injection_like_inputs_rejected_or_literal(store):
    store.upsert_features("d1", HOOK, _features(3))
    for call in (
        lambda: store.get_feature({"$gt": ""}, HOOK, 0),
        lambda: store.get_feature("d1", {"$ne": None}, 0),
        lambda: store.get_feature("d1", HOOK, {"$gte": 0}),
        lambda: store.find_features_by_token({"$exists": True}),
        lambda: store.search_explanations({"$regex": ".*"}),
        lambda: store.page_features("d1", HOOK, sort_by={"$natural": 1}),
        lambda: store.page_features("d1", HOOK, limit=10**6),
        lambda: store.page_features("d1", HOOK, skip=-1),
        lambda: store.upsert_features("d1", HOOK, [{"index": 9, "$set": {"frequency": 1}}]),
        lambda: store.upsert_features("d1", HOOK, [{"index": 9, "meta": {"$where": "1"}}]),
        lambda: store.upsert_features("d1", HOOK, [{"index": 9, "frequency": "high"}]),
        lambda: store.upsert_features("d1", HOOK, [{"index": "9"}]),
        lambda: store.upsert_features("d1", HOOK, ["not a mapping"]),
        lambda: store.upsert_dictionary("d1", {"dictionary_id": "other"}),
        lambda: store.find_features_by_token("tok0", hook=HOOK),
    ):
        with pytest.raises(ValueError):
            call()
    assert store.get_feature("$gt", HOOK, 0) is None  # an operator name as a plain string is literal
    assert store.find_features_by_token("$exists") == []
    assert store.count_features("d1") == 3


def test_oversize_documents_spill_to_gridfs(store):
    store.config.max_document_bytes = 4096
    examples = [{"tokens": list(range(64)), "acts": [0.5] * 64} for _ in range(20)]
    store.upsert_features("d1", HOOK, [{"index": 0, "frequency": 0.1, "top_examples": examples}])
    raw = store.db.features.find_one({"index": 0})
    assert set(raw["top_examples"]) == {SPILL_KEY, "bytes"} and raw["frequency"] == 0.1
    assert store.get_feature("d1", HOOK, 0)["top_examples"] == examples
    assert store.page_features("d1", HOOK)[0]["top_examples"] == examples
    store.upsert_features("d1", HOOK, [{"index": 0, "frequency": 0.1, "top_examples": examples}])
    assert store.db["blobs.files"].count_documents({}) == 1  # a re-run replaces its blob
    store.upsert_features("d1", HOOK, [{"index": 0, "top_examples": examples[:1]}])
    assert store.db["blobs.files"].count_documents({}) == 0  # now inline: the stale blob is gone
    with pytest.raises(DocumentTooLargeError, match="too many small fields"):
        store.upsert_features("d1", HOOK, [{"index": 1, **{f"f{i}": i for i in range(500)}}])
    assert store.db["blobs.files"].count_documents({}) == 0 and store.get_feature("d1", HOOK, 1) is None
    store.config.spill_to_gridfs = False
    with pytest.raises(DocumentTooLargeError, match="4,096-byte limit"):
        store.upsert_features("d1", HOOK, [{"index": 2, "top_examples": examples}])


def test_graph_over_16_mib_round_trips(store):
    edges = bytes(range(256)) * (17 * 4096)  # 17 MiB: over MongoDB's hard limit
    store.upsert_graph("big", {"prompt": "x", "edges": edges, "nodes": [1]}, dictionary_id="d9")
    raw = store.db.graphs.find_one({"graph_id": "big"})
    assert SPILL_KEY in raw["edges"] and raw["nodes"] == [1]
    assert store.get_graph("big")["edges"] == edges
    counts = store.delete_dictionary("d9")
    assert counts["graphs"] == 1 and counts["blobs"] == 1
    assert store.db["blobs.chunks"].count_documents({}) == 0


def test_delete_dictionary_cascades(store):
    for d in ("d1", "d2"):
        store.upsert_dictionary(d, {"architecture": "sae"})
        store.upsert_features(d, HOOK, _features(4))
        store.upsert_explanation(d, HOOK, 0, "e", "text")
        store.upsert_score(d, HOOK, 0, "e", "s", 1.0)
        store.upsert_analysis(d, "a", {})
        store.upsert_graph(f"g-{d}", {"nodes": []}, dictionary_id=d)
        store.upsert_graph_request(f"g-{d}", {"status": "done", "dictionary_id": d})
    counts = store.delete_dictionary("d1")
    assert counts == {
        "features": 4, "analyses": 1, "explanations": 1, "scores": 1, "graphs": 1, "graph_requests": 1,
        "blobs": 0, "dictionaries": 1,
    }  # fmt: skip
    assert store.get_graph_request("g-d1") is None and store.get_graph_request("g-d2")["status"] == "done"
    assert [d["dictionary_id"] for d in store.list_dictionaries()] == ["d2"]
    assert store.count_features("d2") == 4 and store.get_explanations("d2", HOOK, 0)
    assert store.delete_dictionary("d1")["dictionaries"] == 0  # repeatable


def test_unreachable_uri_fails_fast_and_clearly():
    uri = local_uri("127.0.0.1", find_free_port())  # nothing listens there
    config = StoreConfig(
        uri=uri,
        db="x",
        server_selection_timeout_ms=150,
        connect_timeout_ms=150,
        retries=2,
        retry_backoff_s=0.05,
    )
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        Store.connect(config)
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert uri in msg and "3 attempt(s)" in msg and "raysae store start" in msg
    with Store(config) as lazy, pytest.raises(StoreUnavailableError):
        lazy.get_feature("d", HOOK, 0)


def test_invalid_uri_is_a_value_error():
    with pytest.raises(ValueError, match="invalid MongoDB URI"):
        Store(StoreConfig(uri="http://nope", db="x"))


def test_concurrent_writers_never_duplicate(store):
    docs = _features(200)
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda _: store.upsert_features("d1", HOOK, docs), range(4)))
    assert counts == [200] * 4
    assert store.db.features.count_documents({}) == 200


def test_env_configures_from_config(store, monkeypatch):
    monkeypatch.setenv("MONGO_URI", store.uri)
    monkeypatch.setenv("MONGO_DB", store.db_name)
    store.upsert_dictionary("d1", {})
    with Store.from_config(StoreConfig()) as other:
        assert (other.uri, other.db_name) == (store.uri, store.db_name)
        assert other.ping() >= 0 and [d["dictionary_id"] for d in other.list_dictionaries()] == ["d1"]


def test_delete_stale_features_removes_documents_and_blobs(store):
    store.config.max_document_bytes = 4096
    examples = [{"tokens": list(range(64)), "acts": [0.5] * 64} for _ in range(20)]
    store.upsert_features("d1", HOOK, [{"index": i, "top_examples": examples} for i in range(4)])
    store.upsert_features("d1", "blocks.9.hook_resid_post", [{"index": 0}])
    store.upsert_features("d2", HOOK, [{"index": 3, "top_examples": examples}])
    assert store.db["blobs.files"].count_documents({}) == 5
    assert store.delete_stale_features("d1", [HOOK], 2) == 3  # indices 2, 3 and the other hook
    assert [
        d["index"] for d in store.page_features("d1", None, sort_by="index", descending=False, limit=10)
    ] == [0, 1]
    assert store.db["blobs.files"].count_documents({}) == 3  # d1's 0, 1 and d2's 3
    assert store.get_feature("d1", HOOK, 1)["top_examples"] == examples
    assert store.count_features("d2") == 1 and store.delete_stale_features("d1", [HOOK], 2) == 0
    with pytest.raises(ValueError):
        store.delete_stale_features("d1", HOOK, 2)


def test_upserts_take_models(store):
    doc = FeatureDoc(
        hook=HOOK, index=2, frequency=0.5, top_examples=[Example(tokens=["a"], activations=[1.0])]
    )
    assert store.upsert_features("d1", HOOK, [doc]) == 1
    got = _strip([store.get_feature("d1", HOOK, 2)])[0]
    assert got == {
        "dictionary_id": "d1", "hook": HOOK, "index": 2, "frequency": 0.5,
        "top_examples": [{"tokens": ["a"], "activations": [1.0]}],
    }  # fmt: skip
    assert FeatureDoc.model_validate(got).top_examples[0].tokens == ["a"]
    store.upsert_dictionary("d1", DictionaryDoc(d_sae=8, layers=None))
    assert _strip([store.get_dictionary("d1")]) == [{"dictionary_id": "d1", "d_sae": 8, "layers": None}]
    store.upsert_explanations("d1", HOOK, [ExplanationDoc(index=2, explainer="e", explanation="cats")])
    store.upsert_scores("d1", HOOK, [ScoreDoc(index=2, explainer="e", scorer="s", score=0.5)])
    assert store.get_scores("d1", HOOK, 2)[0]["score"] == 0.5
    with pytest.raises(ValueError, match="FeatureDoc"):
        store.upsert_features("d1", HOOK, [ScoreDoc(index=2, explainer="e", scorer="s", score=0.5)])
    with pytest.raises(ValueError, match="another"):
        store.upsert_features("d1", HOOK, [FeatureDoc(hook="another", index=1)])
    with pytest.raises(ValueError, match="score must be a number"):
        store.upsert_scores("d1", HOOK, [{"index": 1, "explainer": "e", "scorer": "s", "score": True}])
