"""The store document and the viewer JSON of a graph; graph identity; the memory check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from graph_helpers import PROMPT, random_clt

from raysae.config.graphs import GraphConfig
from raysae.errors import RaysaeError
from raysae.graphs.compute import compute_graph
from raysae.graphs.export import adjacency_from_bytes, graph_document, viewer_json
from raysae.graphs.graph import GraphMemoryError, graph_id


@pytest.fixture(scope="module")
def graph(lm3):
    return compute_graph(lm3, random_clt([0, 1, 2]), PROMPT, GraphConfig(max_feature_nodes=None), "clt-test")


def test_viewer_json_schema(graph, tokenizer):
    v = viewer_json(graph, tokenizer)
    assert set(v) == {"metadata", "qParams", "nodes", "links"}
    assert {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold"} <= set(
        v["metadata"]
    )
    ids = {n["node_id"] for n in v["nodes"]}
    assert len(ids) == len(v["nodes"])
    assert all(link["source"] in ids and link["target"] in ids for link in v["links"])
    kinds = {n["feature_type"] for n in v["nodes"]}
    assert {"embedding", "logit", "cross layer transcoder"} <= kinds
    for n in v["nodes"]:
        parts = n["node_id"].split("_")
        assert len(parts) == 3
        if n["feature_type"] == "cross layer transcoder":
            layer, index, pos = map(int, parts)
            assert (layer, pos, index) in {tuple(x) for x in graph.feature_nodes().tolist()}
        if n["feature_type"] == "mlp reconstruction error":
            assert parts[1] == "-1"
        if n["feature_type"] == "logit":
            assert parts[0] == str(graph.n_layers + 1)
    assert sum(n["feature_type"] == "embedding" for n in v["nodes"]) == graph.n_pos
    assert sum(n["is_target_logit"] for n in v["nodes"]) == 1
    json.dumps(v)  # plain JSON


def test_document_round_trips_the_adjacency(graph, tokenizer):
    doc = graph_document(graph, tokenizer, prompt_id=7)
    n = doc["counts"]["nodes"]
    a = adjacency_from_bytes(doc["adjacency"], n)
    np.testing.assert_allclose(a, graph.adjacency.numpy(), rtol=1e-6, atol=1e-6)
    e = doc["pruned_edges"]
    assert len(e["source"]) == doc["counts"]["pruned_edges"] > 0
    assert set(e["source"]) | set(e["target"]) <= set(doc["pruned_nodes"])
    assert doc["prompt_id"] == 7 and doc["graph_id"] == graph.graph_id
    assert 0 < doc["scores"]["replacement_score"] <= 1 and 0 < doc["scores"]["pruned_completeness_score"] <= 1


def test_graph_id_is_the_identity():
    p = GraphConfig().parameters()
    assert graph_id("a", "d", p) == graph_id("a", "d", dict(p))
    assert graph_id("a", "d", p) != graph_id("b", "d", p)
    assert graph_id("a", "d", p) != graph_id("a", "e", p)
    assert graph_id("a", "d", p) != graph_id("a", "d", {**p, "node_threshold": 0.5})


def test_over_the_memory_budget_is_refused(lm3):
    cfg = GraphConfig(memory_budget_gb=1e-6)
    with pytest.raises(GraphMemoryError, match=r"GiB .* nodes.*memory_budget_gb") as err:
        compute_graph(lm3, random_clt([0, 1, 2]), PROMPT, cfg)
    assert isinstance(err.value, RaysaeError)


def test_store_upsert_and_read_back(store, graph, tokenizer):
    doc = graph_document(graph, tokenizer)
    store.config.max_document_bytes = 50_000  # force the adjacency into GridFS
    store.upsert_graph(graph.graph_id, doc, dictionary_id="clt-test")
    store.upsert_graph(graph.graph_id, doc, dictionary_id="clt-test")  # idempotent
    back = store.get_graph(graph.graph_id)
    assert back["dictionary_id"] == "clt-test" and back["counts"] == doc["counts"]
    assert bytes(back["adjacency"]) == doc["adjacency"]
    assert [g["graph_id"] for g in store.list_graphs("clt-test")] == [graph.graph_id]
