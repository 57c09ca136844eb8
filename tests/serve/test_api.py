"""Every JSON endpoint over real HTTP against the running Serve application and a real MongoDB."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from serve_data import (
    CLT_ID,
    D_SAE,
    DICT_ID,
    EXPLAIN_ID,
    HOOK,
    LITERAL_ID,
    N_FEATURES,
    NAN_INDEX,
    RICH_INDEX,
    feature_docs,
)

pytestmark = pytest.mark.slow

FEATURES = f"/api/dictionaries/{DICT_ID}/features"


def feature_url(index: object, hook: str = HOOK, dictionary_id: str = DICT_ID) -> str:
    return f"/api/dictionaries/{quote(dictionary_id, safe='')}/features/{quote(hook, safe='')}/{index}"


def detail(r: httpx.Response) -> str:
    """The error message of a response, flattened to one string."""
    body = r.json()["detail"]
    return body if isinstance(body, str) else " ".join(f"{e['loc']} {e['msg']}" for e in body)


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["text_endpoint"] is True and body["store_ping_ms"] >= 0


def test_openapi_schema_and_docs(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    schema = r.json()
    paths = schema["paths"]
    expected = {
        "/health": "get",
        "/api/dictionaries": "get",
        "/api/dictionaries/{dictionary_id}": "get",
        "/api/dictionaries/{dictionary_id}/features": "get",
        "/api/dictionaries/{dictionary_id}/features/{hook}/{index}": "get",
        "/api/dictionaries/{dictionary_id}/activations": "post",
        "/api/search/tokens": "get",
        "/api/search/explanations": "get",
        "/browser": "get",
    }
    for path, method in expected.items():
        assert method in paths[path], path
    params = {p["name"]: p for p in paths["/api/dictionaries/{dictionary_id}/features"]["get"]["parameters"]}
    assert params["sort_by"]["schema"]["enum"] == ["frequency", "max_activation", "index"]
    assert params["limit"]["schema"]["anyOf"][0]["maximum"] == 1000
    assert "FeatureDetail" in schema["components"]["schemas"]
    assert "TextQuery" in schema["components"]["schemas"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_list_and_get_dictionaries(client):
    r = client.get("/api/dictionaries")
    assert r.status_code == 200
    ids = [d["dictionary_id"] for d in r.json()["items"]]
    assert ids == sorted([DICT_ID, "empty-dict", LITERAL_ID, CLT_ID, EXPLAIN_ID])
    assert all("path" not in d for d in r.json()["items"])  # server paths are not published
    page = client.get("/api/dictionaries", params={"page": 2, "page_size": 1}).json()
    assert [d["dictionary_id"] for d in page["items"]] == [sorted(ids)[1]] and page["skip"] == 1
    d = client.get(f"/api/dictionaries/{DICT_ID}").json()
    assert d["stored_features"] == N_FEATURES and d["d_sae"] == D_SAE and d["hooks_in"] == [HOOK]
    assert d["model"] == "smollm2-135m-instruct" and d["config"] == {"act_fn": "topk", "top_k": 8}
    assert "path" not in d
    empty = client.get("/api/dictionaries/empty-dict").json()
    assert empty["stored_features"] == 0 and empty["layers"] == 2 and empty["architecture"] == "clt"


def test_operator_like_ids_are_literal(client):
    # A stored id that looks like an operator is found by exactly that string, and nothing else.
    r = client.get(f"/api/dictionaries/{quote(LITERAL_ID, safe='')}")
    assert r.status_code == 200 and r.json()["dictionary_id"] == LITERAL_ID
    for fake in ('{"$ne": null}', '{"$gt": "a"}', "$where", "{'$regex': '.*'}"):
        r = client.get(f"/api/dictionaries/{quote(fake, safe='')}")
        assert r.status_code == 404 and fake in detail(r)
        r = client.get(feature_url(0, dictionary_id=fake))
        assert r.status_code == 404
        r = client.get(feature_url(0, hook=fake))
        assert r.status_code == 404 and "hook" in detail(r)
    # Bracketed query keys are other parameters, not operators: the real one is then missing.
    r = client.get("/api/search/tokens", params={"token[$ne]": "x"})
    assert r.status_code == 422 and "token" in detail(r)
    r = client.get("/api/search/tokens", params={"token": '{"$gt": ""}'})
    assert r.status_code == 200 and r.json()["items"] == []
    r = client.get("/api/search/explanations", params={"q": ".*"})  # regex syntax is literal text
    assert r.status_code == 200 and r.json()["items"] == []
    r = client.post(f"/api/dictionaries/{DICT_ID}/activations", json={"text": {"$gt": ""}})
    assert r.status_code == 422 and "valid string" in detail(r)


def test_get_feature(client):
    r = client.get(feature_url(RICH_INDEX))
    assert r.status_code == 200
    f = r.json()
    stored = feature_docs()[RICH_INDEX]
    for key in ("frequency", "max_activation", "n_fired", "n_tokens", "layer", "dla_positive_tokens"):
        assert f[key] == stored[key], key
    assert f["histogram"] == {"edges": [0.0, 1.0, 2.0, 3.0], "counts": [5, 3, RICH_INDEX]}
    assert f["top_examples"][0]["tokens"] == ["The", " purring", " cat"]
    assert f["top_examples"][0]["activations"] == [0.0, 3.0, 0.5]
    assert f["quantile_examples"][0]["examples"][0]["tokens"] == ["A"]
    assert f["dla_positive"][0]["token_id"] == 100 + RICH_INDEX and f["dla_negative"][0]["value"] == -0.7
    assert [(e["explainer"], e["explanation"]) for e in f["explanations"]] == [
        ("gpt-test", "Fires on cat-related words"),
        ("human", "cats and kittens"),
    ]
    assert [(s["scorer"], s["score"]) for s in f["scores"]] == [("detection", 0.8), ("fuzzing", 0.6)]
    plain = client.get(feature_url(0)).json()
    assert plain["explanations"] == [] and plain["scores"] == []
    # A non-finite float (not JSON) comes back as null instead of failing the response.
    r = client.get(feature_url(NAN_INDEX))
    assert r.status_code == 200 and r.json()["mean_activation"] is None


def test_feature_not_found_messages(client):
    r = client.get(feature_url(D_SAE + 10))
    assert r.status_code == 404 and f"d_sae={D_SAE}" in detail(r)
    r = client.get(feature_url(100))  # in range but not analysed
    assert r.status_code == 404 and "no stored record" in detail(r)
    r = client.get(feature_url(0, hook="blocks.9.hook_resid_post"))
    assert r.status_code == 404 and "not one of" in detail(r)
    r = client.get(feature_url(0, dictionary_id="nope"))
    assert r.status_code == 404 and "'nope' not found" in detail(r)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("-1", "greater than or equal to 0"),
        ("abc", "valid integer"),
        ("1.5", "valid integer"),
        (str(10**30), "less than or equal to"),
        (str(2**63), "less than or equal to"),
    ],
)
def test_bad_feature_index(client, index, message):
    r = client.get(feature_url(index))
    assert r.status_code == 422 and message in detail(r)


def test_page_features_sorted(client):
    docs = feature_docs()
    by_freq = sorted(docs, key=lambda d: -d["frequency"])
    r = client.get(FEATURES, params={"limit": 10})
    assert r.status_code == 200
    page = r.json()
    assert [f["index"] for f in page["items"]] == [d["index"] for d in by_freq[:10]]
    assert page["total"] == N_FEATURES and page["next_skip"] == 10 and page["sort_by"] == "frequency"
    assert "top_examples" not in page["items"][0] and "histogram" not in page["items"][0]
    by_max = sorted(docs, key=lambda d: d["max_activation"])
    page = client.get(
        FEATURES, params={"sort_by": "max_activation", "order": "asc", "page": 3, "page_size": 10}
    )
    body = page.json()
    assert [f["index"] for f in body["items"]] == [d["index"] for d in by_max[20:30]]
    assert body["skip"] == 20 and body["next_skip"] is None
    hook_page = client.get(FEATURES, params={"hook": HOOK, "sort_by": "index", "order": "asc", "skip": 28})
    assert [f["index"] for f in hook_page.json()["items"]] == [28, 29]
    other_hook = client.get(FEATURES, params={"hook": "blocks.2.hook_resid_post"}).json()
    assert other_hook["items"] == [] and other_hook["total"] == 0
    empty = client.get("/api/dictionaries/empty-dict/features").json()
    assert empty["items"] == [] and empty["total"] == 0 and empty["next_skip"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": 21}, "limit must be at most 20"),  # the server's max_page_size
        ({"page_size": 50}, "page_size must be at most 20"),
        ({"limit": 5000}, "less than or equal to 1000"),  # beyond any server's bound
        ({"limit": 0}, "greater than or equal to 1"),
        ({"skip": -1}, "greater than or equal to 0"),
        ({"skip": "ten"}, "valid integer"),
        ({"page": 0}, "greater than or equal to 1"),
        ({"skip": 5, "page": 2}, "not both"),
        ({"sort_by": "bogus"}, "'frequency', 'max_activation' or 'index'"),
        ({"sort_by": '{"$gt": ""}'}, "'frequency', 'max_activation' or 'index'"),
        ({"order": "sideways"}, "'desc' or 'asc'"),
        ({"hook": "x" * 600}, "at most 512 characters"),
    ],
)
def test_bad_page_parameters(client, params, message):
    r = client.get(FEATURES, params=params)
    assert r.status_code == 422, r.text
    assert message in detail(r)


def test_page_unknown_dictionary(client):
    r = client.get("/api/dictionaries/unknown/features")
    assert r.status_code == 404 and "unknown" in detail(r)


def test_bad_ids(client):
    r = client.get(f"/api/dictionaries/{'d' * 600}")
    assert r.status_code == 422 and "at most 512 characters" in detail(r)
    r = client.get("/api/dictionaries/a%00b")  # the store's own check: 422, not 500
    assert r.status_code == 422 and "NUL" in detail(r)
    r = client.get(feature_url(0, hook="h\x00"))
    assert r.status_code == 422 and "hook must not contain NUL" in detail(r)


def test_features_by_dla_token(client):
    r = client.get("/api/search/tokens", params={"token": " cat"})
    assert r.status_code == 200
    assert [(f["dictionary_id"], f["index"]) for f in r.json()["items"]] == [(DICT_ID, RICH_INDEX)]
    docs = feature_docs()
    the = sorted((d for d in docs if " the" in d["dla_positive_tokens"]), key=lambda d: -d["max_activation"])
    r = client.get("/api/search/tokens", params={"token": " the", "dictionary_id": DICT_ID, "limit": 5})
    assert [f["index"] for f in r.json()["items"]] == [d["index"] for d in the[:5]]
    assert "top_examples" not in r.json()["items"][0]
    r = client.get("/api/search/tokens", params={"token": " the", "dictionary_id": DICT_ID, "hook": "other"})
    assert r.json()["items"] == []
    r = client.get("/api/search/tokens", params={"token": "the"})  # exact match: no leading space
    assert r.json()["items"] == []


def test_features_by_token_bad_input(client):
    assert client.get("/api/search/tokens").status_code == 422
    r = client.get("/api/search/tokens", params={"token": ""})
    assert r.status_code == 422 and "at least 1 character" in detail(r)
    r = client.get("/api/search/tokens", params={"token": "x" * 513})
    assert r.status_code == 422 and "at most 512 characters" in detail(r)
    r = client.get("/api/search/tokens", params={"token": " the", "hook": HOOK})
    assert r.status_code == 422 and "hook needs dictionary_id" in detail(r)
    r = client.get("/api/search/tokens", params={"token": " the", "dictionary_id": "missing"})
    assert r.status_code == 404
    r = client.get("/api/search/tokens", params={"token": " the", "limit": 21})
    assert r.status_code == 422 and "at most 20" in detail(r)


def test_search_explanations(client):
    r = client.get("/api/search/explanations", params={"q": "CAT-related"})
    assert r.status_code == 200
    items = r.json()["items"]
    assert [(x["index"], x["explainer"]) for x in items] == [(RICH_INDEX, "gpt-test")]
    assert items[0]["explanation"] == "Fires on cat-related words" and items[0]["hook"] == HOOK
    r = client.get("/api/search/explanations", params={"q": "CAT-related", "case_sensitive": True})
    assert r.json()["items"] == []
    r = client.get("/api/search/explanations", params={"q": "s", "dictionary_id": DICT_ID, "limit": 2})
    assert len(r.json()["items"]) == 2
    r = client.get("/api/search/explanations", params={"q": "s", "dictionary_id": DICT_ID, "skip": 2})
    assert [x["index"] for x in r.json()["items"]] == [4]
    r = client.get("/api/search/explanations", params={"q": "s", "case_sensitive": "maybe"})
    assert r.status_code == 422 and "valid boolean" in detail(r)
    r = client.get("/api/search/explanations", params={"q": "s", "dictionary_id": "nope"})
    assert r.status_code == 404


def test_unreachable_store_answers_503(server):
    with httpx.Client(base_url=server.down_url, timeout=60) as c:
        r = c.get("/health")
        assert r.status_code == 503 and "cannot reach MongoDB" in detail(r)
        r = c.get("/api/dictionaries")
        assert r.status_code == 503 and "store is unavailable" in detail(r)
        r = c.get(f"/api/dictionaries/{DICT_ID}/features/{HOOK}/0")
        assert r.status_code == 503
        # Bad input is still rejected before the store is asked.
        assert c.get(f"/api/dictionaries/{DICT_ID}/features/{HOOK}/-1").status_code == 422
        r = c.post(f"/api/dictionaries/{DICT_ID}/activations", json={"text": "hi"})
        assert r.status_code == 503 and "disabled" in detail(r)


def test_reanalysis_reaches_cached_pages_and_features(client, server, mongo_uri):
    """Pages and features are served from the replica's copy of an analysis; writing the dictionary
    record (what analysis does last) makes the replica read the features again within record_ttl_s."""
    import time

    from raysae.store import Store, StoreConfig

    docs = [{"index": i, "frequency": i / 10, "max_activation": 1.0, "top_examples": []} for i in range(5)]
    url = "/api/dictionaries/reanalysed"
    with Store.connect(StoreConfig(uri=mongo_uri, db=server.db)) as store:
        try:
            store.upsert_features("reanalysed", HOOK, docs)
            store.upsert_dictionary("reanalysed", {"hooks": [HOOK], "d_sae": 8, "analysis_id": "a1"})
            assert client.get(f"{url}/features").json()["items"][0]["index"] == 4
            assert client.get(f"{url}/features/{HOOK}/0").json()["frequency"] == 0.0
            store.upsert_features("reanalysed", HOOK, [{**docs[0], "frequency": 0.9}, {"index": 6}])
            store.upsert_dictionary("reanalysed", {"analysis_id": "a2"}, replace=False)
            deadline = time.monotonic() + 30
            while (page := client.get(f"{url}/features").json())["items"][0]["index"] != 0:
                assert time.monotonic() < deadline, page
                time.sleep(0.2)
            assert page["total"] == 6 and client.get(url).json()["stored_features"] == 6
            assert client.get(f"{url}/features/{HOOK}/0").json()["frequency"] == 0.9
        finally:
            store.delete_dictionary("reanalysed")
