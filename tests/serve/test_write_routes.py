"""The write endpoints over real HTTP to Ray Serve: bearer tokens, attribution graphs computed by the
graph deployment on the real SmolLM2 (checked against a direct computation), explanations through a
real OpenAI-protocol server (the deterministic fake), bad input and failing endpoints."""

from __future__ import annotations

import time

import httpx
import pytest
from fake_openai import FakeServer
from serve_data import CLT_ID, DICT_ID, EXPLAIN_HOOK, EXPLAIN_ID, EXPLAIN_WORDS, TOKEN, Server

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = "The capital of France is"


def _graph(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/api/graphs", json={"prompt": PROMPT, "dictionary_id": CLT_ID, **body}, headers=AUTH)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
)
def test_write_endpoints_need_the_bearer_token(client: httpx.Client, headers: dict) -> None:
    r = client.post("/api/graphs", json={"prompt": PROMPT, "dictionary_id": CLT_ID}, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in r.text
    r = client.post(f"/api/features/{EXPLAIN_ID}/{EXPLAIN_HOOK}/0/explain", headers=headers)
    assert r.status_code == 401


def test_a_server_without_a_token_refuses_every_write(server: Server) -> None:
    """The "down" application has no token configured: 401 even with a token."""
    r = httpx.post(
        f"{server.down_url}/api/graphs", json={"prompt": "x", "dictionary_id": CLT_ID}, headers=AUTH
    )
    assert r.status_code == 401
    assert "no API token" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"prompt": ""}, 422, "prompt"),
        ({"dictionary_id": "no-such"}, 404, "no-such"),
        ({"dictionary_id": DICT_ID}, 422, "not a transcoder"),
        ({"max_feature_nodes": 0}, 422, "max_feature_nodes"),
        ({"node_threshold": 1.5}, 422, "node_threshold"),
        ({"temperature": 1}, 422, "temperature"),
        ({"prompt": "x" * 301}, 413, "300"),
    ],
)
def test_bad_graph_requests_name_the_problem(
    client: httpx.Client, body: dict, status: int, needle: str
) -> None:
    r = _graph(client, **body)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_graph_is_computed_stored_and_exported(client: httpx.Client, model, server: Server) -> None:
    """POST computes the graph on the graph deployment; GET returns it; the export equals the viewer
    JSON of the same graph computed directly in this process."""
    from raysae.config.graphs import GraphConfig
    from raysae.dictionaries import load_dictionary
    from raysae.graphs.compute import compute_graph
    from raysae.graphs.export import viewer_json

    r = _graph(client)
    assert r.status_code == 200, r.text
    state = r.json()
    assert state["status"] == "done" and state["url"] == f"/api/graphs/{state['graph_id']}"
    again = _graph(client)
    assert again.status_code == 200 and again.json()["graph_id"] == state["graph_id"]

    got = client.get(state["url"]).json()
    assert got["status"] == "done"
    graph = got["graph"]
    assert "adjacency" not in graph
    assert graph["prompt"] == PROMPT and graph["dictionary_id"] == CLT_ID
    counts = graph["counts"]
    assert 0 < counts["features"] <= 32 and counts["pruned_nodes"] <= counts["nodes"]
    assert 0 <= graph["scores"]["replacement_score"] <= 1

    exported = client.get(f"{state['url']}/export").json()
    assert exported["metadata"]["prompt"] == PROMPT
    clt = load_dictionary(server.dictionary_path.parent / "serve-clt", device="cpu")
    cfg = GraphConfig(max_feature_nodes=32, batch_size=16, memory_budget_gb=0.12)
    direct = viewer_json(compute_graph(model, clt, PROMPT, cfg, CLT_ID), model.tokenizer)
    assert exported["metadata"]["slug"] == direct["metadata"]["slug"] == state["graph_id"]
    assert [n["node_id"] for n in exported["nodes"]] == [n["node_id"] for n in direct["nodes"]]
    by_pair = {(x["source"], x["target"]): x["weight"] for x in direct["links"]}
    assert len(by_pair) == len(exported["links"])
    for link in exported["links"]:
        assert link["weight"] == pytest.approx(by_pair[(link["source"], link["target"])], rel=1e-3, abs=1e-5)

    listed = client.get("/api/graphs", params={"dictionary_id": CLT_ID}).json()["items"]
    assert [g["graph_id"] for g in listed] == [state["graph_id"]]
    assert "nodes" not in listed[0]


def test_queued_graph_is_polled_and_a_failed_one_says_why(client: httpx.Client) -> None:
    r = _graph(client, prompt="Cats and dogs are", wait=False)
    assert r.status_code in (200, 202), r.text
    url, deadline = r.json()["url"], time.monotonic() + 180
    while (state := client.get(url).json())["status"] != "done":
        assert state["status"] in ("queued", "running"), state
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert state["graph"]["prompt"] == "Cats and dogs are"

    long = " ".join(["word"] * 20)  # 20 tokens; the server allows 12
    r = _graph(client, prompt=long)
    assert r.status_code == 413 and r.json()["detail"] == "the prompt has 20 tokens; the limit is 12"
    state = client.get(f"/api/graphs/{_graph_id(long)}").json()
    assert state["status"] == "failed" and "limit is 12" in state["error"] and state["graph"] is None
    assert client.get(f"/api/graphs/{_graph_id(long)}/export").status_code == 404
    assert client.get("/api/graphs/0123456789abcdef").status_code == 404


def test_a_graph_over_the_memory_budget_is_refused_with_the_estimate(client: httpx.Client) -> None:
    """The server's budget (0.12 GiB) fits the 6-token prompts above, not 12 tokens (~0.17 GiB)."""
    r = _graph(client, prompt=" ".join(["word"] * 12))
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "estimated" in detail and "GiB" in detail and "memory_budget_gb=0.12" in detail


def _graph_id(prompt: str) -> str:
    from raysae.config.graphs import GraphConfig
    from raysae.graphs.graph import graph_id

    return graph_id(
        prompt, CLT_ID, GraphConfig(max_feature_nodes=32, batch_size=16, memory_budget_gb=0.12).parameters()
    )


def test_explain_stores_explanation_and_scores(client: httpx.Client, fake_llm: FakeServer) -> None:
    url = f"/api/features/{EXPLAIN_ID}/{EXPLAIN_HOOK}/0/explain"
    r = client.post(url, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["explanation"]["explanation"] == EXPLAIN_WORDS[0].strip()
    assert body["explanation"]["explainer"] == "fake-model:" + body["explanation"]["prompt_version"]
    kinds = sorted((s["scorer_kind"], s["baseline"]) for s in body["scores"])
    assert kinds == [("detection", False), ("detection", True), ("fuzzing", False), ("fuzzing", True)]
    real = {s["scorer_kind"]: s for s in body["scores"] if not s["baseline"]}
    assert real["detection"]["balanced_accuracy"] == 1.0  # the fake answers by the word itself
    assert all(s["predictions"] for s in body["scores"])
    assert body["usage"]["requests"] >= 3

    stored = client.get(f"/api/features/{EXPLAIN_ID}/{EXPLAIN_HOOK}/0/explanations").json()
    assert [e["explanation"] for e in stored["explanations"]] == ["cat"]
    assert len(stored["scores"]) == 4
    found = client.get("/api/search/explanations", params={"q": "cat", "dictionary_id": EXPLAIN_ID}).json()
    assert [(e["hook"], e["index"]) for e in found["items"]] == [(EXPLAIN_HOOK, 0)]

    n_before = len(fake_llm.state.requests)
    again = client.post(url, headers=AUTH)  # idempotent: same identities, upserted again
    assert again.status_code == 200 and len(fake_llm.state.requests) > n_before
    stored = client.get(f"/api/features/{EXPLAIN_ID}/{EXPLAIN_HOOK}/0/explanations").json()
    assert len(stored["explanations"]) == 1 and len(stored["scores"]) == 4


def test_a_failing_endpoint_marks_the_feature_failed(client: httpx.Client, fake_llm: FakeServer) -> None:
    fake_llm.state.script[:] = ["500", "500", "malformed", "429"]
    try:
        r = client.post(f"/api/features/{EXPLAIN_ID}/{EXPLAIN_HOOK}/1/explain", headers=AUTH)
    finally:
        fake_llm.state.script.clear()
    assert r.status_code == 502 and "marked failed" in r.text
    stored = client.get(f"/api/features/{EXPLAIN_ID}/{EXPLAIN_HOOK}/1/explanations").json()
    (doc,) = stored["explanations"]
    assert doc["status"] == "failed" and doc["explanation"] == "" and doc["error"]
    assert stored["scores"] == []


def test_explain_bad_input(client: httpx.Client) -> None:
    r = client.post(f"/api/features/{EXPLAIN_ID}/{EXPLAIN_HOOK}/99/explain", headers=AUTH)
    assert r.status_code == 404 and "99" in r.text
    r = client.post(f"/api/features/no-such/{EXPLAIN_HOOK}/0/explain", headers=AUTH)
    assert r.status_code == 404 and "no-such" in r.text
    r = client.post(f"/api/features/{EXPLAIN_ID}/{EXPLAIN_HOOK}/-1/explain", headers=AUTH)
    assert r.status_code == 422
