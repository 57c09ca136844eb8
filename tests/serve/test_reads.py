"""The ingress replica's read caches (raysae.serve.reads) against a real store: pages, counts and token
searches from memory in exactly the store's order; reads by index range; invalidation by version; bounds."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from raysae.config.serve import API_MAX_AUTO_REPLICAS, ServeConfig
from raysae.serve import schemas as m
from raysae.serve.reads import ReadCache, SizedLRU, notes_body, page_body, render_feature
from raysae.store.schema import FEATURE_SUMMARY_FIELDS

H1, H2 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
D_SAE = 40


def docs_of(hook: int) -> list[dict[str, Any]]:
    """Features with tied, missing, null and NaN sort values, and DLA tokens to search."""
    docs = []
    for i in range(0, D_SAE, 1 + hook):  # the second hook is sparse
        doc: dict[str, Any] = {
            "index": i,
            "frequency": [0.5, 0.25, None, math.nan][i % 4] if i % 5 else float(i % 3),
            "max_activation": float((i * 7) % 11),
            "dla_positive_tokens": [f" t{i % 3}", " all"],
            "top_examples": [{"tokens": ["a"] * 50, "activations": [1.0] * 50}],
            "histogram": {"edges": [0.0, 1.0], "counts": [i]},
        }
        if i % 9 == 0:
            del doc["frequency"]
        docs.append(doc)
    return docs


def fill(store, dictionary_id: str = "d", **record: Any) -> dict[str, Any]:
    store.upsert_features(dictionary_id, H1, docs_of(0))
    store.upsert_features(dictionary_id, H2, docs_of(1))
    store.upsert_dictionary(dictionary_id, {"hooks": [H1, H2], "d_sae": D_SAE, "analysis_id": "a1", **record})
    return store.get_dictionary(dictionary_id)


def as_json(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a response carries for these store documents: FeatureSummary JSON (NaN as null)."""
    page = m.FeatureList.model_validate({"items": docs})
    return json.loads(page.model_dump_json())["items"]


def cache(store, **config: Any) -> ReadCache:
    return ReadCache(store, ServeConfig(text_endpoint=False, graph_endpoint=False, **config))


def test_pages_and_token_search_in_the_stores_order(store):
    record = fill(store)
    table = cache(store).table(record)
    assert table is not None and len(table) == D_SAE + D_SAE // 2
    for hook in (None, H1, H2):
        assert table.count(hook) == store.count_features("d", hook)
        for sort_by in ("frequency", "max_activation", "index"):
            for descending in (True, False):
                for skip in (0, 17):
                    got = table.page(hook, sort_by, descending, skip, 25)
                    want = store.page_features(
                        "d", hook, sort_by=sort_by, descending=descending, skip=skip, limit=25, summary=True
                    )
                    assert [json.loads(b) for b in got] == as_json(want), (hook, sort_by, descending, skip)
        for token in (" t1", " all", " none"):
            got = [json.loads(b) for b in table.by_token(token, hook, 20)]
            want = store.find_features_by_token(token, dictionary_id="d", hook=hook, limit=20, summary=True)
            assert got == as_json(want), (hook, token)
    assert table.count("other") == 0 and table.page("other", "index", False, 0, 5) == []


def test_summaries_are_read_by_index_range_with_only_the_page_fields(store):
    fill(store)
    docs = store.feature_summaries("d", H1, start=5, stop=9)
    assert [d["index"] for d in docs] == [5, 6, 7, 8]
    assert set(docs[0]) <= set(FEATURE_SUMMARY_FIELDS) and "top_examples" not in docs[0]
    assert (
        len(store.feature_summaries("d", H2, start=30)) == 5
        and len(store.feature_summaries("d", limit=7)) == 7
    )
    with pytest.raises(ValueError, match="needs a hook"):
        store.feature_summaries("d", start=3)
    with pytest.raises(ValueError, match="index"):
        store.feature_summaries("d", H1, start=-1)


def test_reads_stale_features_and_dictionaries_without_hooks(store):
    record = fill(store)
    store.upsert_features("d", H1, [{"index": D_SAE + 3, "frequency": 0.9}])  # left by a wider version
    assert len(cache(store).table(record)) == D_SAE + D_SAE // 2 + 1
    store.upsert_features("plain", H2, docs_of(0))
    store.upsert_dictionary("plain", {"architecture": "sae"})  # no hooks or d_sae: one scope read
    table = cache(store).table(store.get_dictionary("plain"))
    assert table is not None and table.count(H2) == D_SAE


def test_too_many_features_are_paged_by_the_store(store):
    record = fill(store)
    assert cache(store, page_cache_features=D_SAE).table(record) is None  # 2 hooks x d_sae > budget
    store.upsert_features("plain", H2, docs_of(0))
    store.upsert_dictionary("plain", {"architecture": "sae"})
    assert cache(store, page_cache_features=D_SAE - 1).table(store.get_dictionary("plain")) is None
    assert cache(store, page_cache_features=0).table(record) is None


def test_a_new_analysis_is_read_again(store):
    reads = cache(store, record_ttl_s=0)
    record = fill(store)
    first = reads.table(record)
    body = reads.feature(record, "d", H1, 2)
    assert reads.table(reads.record("d")) is first  # same version: the same table
    assert reads.feature(reads.record("d"), "d", H1, 2) is body
    store.upsert_features("d", H1, [{**docs_of(0)[2], "frequency": 7.0}])
    assert reads.table(reads.record("d")) is first  # features alone are not a new version
    store.upsert_dictionary("d", {"analysis_id": "a2"}, replace=False)  # what analysis writes last
    second = reads.table(reads.record("d"))
    assert second is not first and json.loads(second.page(H1, "frequency", True, 0, 1)[0])["index"] == 2
    assert json.loads(reads.feature(reads.record("d"), "d", H1, 2))["frequency"] == 7.0
    assert reads.stats()["tables"] == 1  # the older version was dropped


def test_cached_feature_needs_a_fresh_record_document_and_notes(store):
    fill(store)
    reads = cache(store, record_ttl_s=3600)
    assert reads.cached_feature("d", H1, 2) is None  # nothing read yet: the route goes to the store
    record = reads.record("d")
    body = reads.feature(record, "d", H1, 2)
    assert reads.cached_feature("d", H1, 2) is None  # explanations and scores not read yet
    store.upsert_explanation("d", H1, 2, "human", "round numbers")
    notes = reads.notes("d", H1, 2)
    whole = json.loads(reads.cached_feature("d", H1, 2))
    assert whole == json.loads(body[:-1] + notes + b"}") and whole["explanations"][0]["explanation"] == (
        "round numbers"
    )
    store.upsert_explanation("d", H1, 2, "human", "changed")
    assert b"round numbers" in reads.notes("d", H1, 2)  # reused for record_ttl_s
    assert b"changed" in cache(store, record_ttl_s=0).notes("d", H1, 2)
    assert reads.cached_feature("d", H1, 3) is None  # another feature: its document is not cached


def test_records_are_reused_for_their_ttl(store):
    reads = cache(store, record_ttl_s=3600)
    assert reads.record("d") is None and reads.fresh_table("d") is None
    fill(store)
    assert reads.record("d") is None  # remembered for record_ttl_s, absence included
    fresh = cache(store, record_ttl_s=3600)
    assert fresh.fresh_table("d") is None  # no record read yet: the route must go to the store
    table = fresh.table(fresh.record("d"))
    assert fresh.fresh_table("d") is table  # what async routes answer from without a store call
    stale = cache(store, record_ttl_s=0)
    assert stale.table(stale.record("d")) is not None and stale.fresh_table("d") is None


def test_rendered_feature_is_the_response_models_json():
    doc = {
        **docs_of(0)[1],
        "hook": H1,
        "dictionary_id": "d",
        "mean_activation": math.nan,
        "extra": {"kept": [1, 2]},
        "scores": ["stale"],
    }
    explanations = [{"index": 1, "explainer": "x", "explanation": "cats", "hook": H1}]
    scores = [{"index": 1, "explainer": "x", "scorer": "detection", "score": math.inf}]
    got = json.loads(render_feature(doc)[:-1] + notes_body(explanations, scores) + b"}")
    model = m.FeatureDetail.model_validate({**doc, "explanations": explanations, "scores": scores})
    assert got == json.loads(model.model_dump_json())
    assert (
        got["mean_activation"] is None
        and got["scores"][0]["score"] is None
        and got["extra"]["kept"] == [1, 2]
    )
    assert json.loads(page_body({"total": 2, "hook": None}, [b"{}", b"[1]"])) == {
        "total": 2,
        "hook": None,
        "items": [{}, [1]],
    }
    assert json.loads(page_body({}, [])) == {"items": []}


def test_sized_lru_keeps_the_recently_used_within_capacity():
    lru = SizedLRU(10, len)
    lru.put("a", b"xxxx")
    lru.put("b", b"xxxx")
    assert lru.get("a") == b"xxxx"  # now the most recent
    lru.put("c", b"xxxx")
    assert lru.get("b") is None and lru.get("a") and lru.get("c") and lru.used == 8
    lru.put("huge", b"x" * 11)  # over the capacity alone: not kept, nothing evicted
    assert lru.get("huge") is None and len(lru) == 2
    lru.drop(lambda k: k == "a")
    assert lru.get("a") is None and lru.used == 4


@pytest.mark.parametrize(
    ("replicas", "cpus", "expected"),
    [(None, None, 1), (None, 2, 1), (None, 16, 4), (None, 1000, API_MAX_AUTO_REPLICAS), (3, 2, 3)],
)
def test_ingress_replicas_from_the_cluster(replicas, cpus, expected):
    assert ServeConfig(api_replicas=replicas).ingress_replicas(cpus) == expected


def test_cache_settings_are_checked():
    for bad in (
        {"api_replicas": 0},
        {"record_ttl_s": -1},
        {"page_cache_features": -5},
        {"feature_cache_mb": -1},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServeConfig(**bad)
