"""A graph as the store's document, and as the JSON that circuit-tracer's and Neuronpedia's viewer read.

Viewer JSON (circuit-tracer ``frontend/graph_models.py`` and ``utils/create_graph_files.py``):
``{"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold, schema_version},
"qParams": {pinnedIds, supernodes, linkType, clickedId, sg_pos}, "nodes": [...], "links": [...]}``.
Node ids: a feature ``"{layer}_{index}_{pos}"`` (``feature_type`` "cross layer transcoder", ``feature``
the Cantor pairing of layer and index), an error ``"{layer}_-1_{pos}"`` ("mlp reconstruction
error"), a token ``"E_{token_id}_{pos}"`` ("embedding"), a logit ``"{n_layers + 1}_{token_id}_{pos}"``
("logit"). Links are the pruned graph's edges ``{source, target, weight}``; nodes left without a link
are dropped, except tokens and logits.

Store document (``GraphDoc``; identity ``graph_id``): counts, scores, settings, every node
(``nodes``: kind, layer, position, feature index or token id, activation, influence), the pruned graph
as an edge list of node indices (``pruned_nodes``; ``pruned_edges`` = {source, target, weight}), and
the full adjacency ``[N, N]`` as row-major float32 little-endian bytes (``adjacency``; rows = targets),
which the store moves to GridFS when large.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raysae.graphs.graph import Graph

SCHEMA_VERSION = 1


def _token(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id]) if tokenizer is not None else str(token_id)


def node_table(graph: Graph, tokenizer: Any = None) -> list[dict[str, Any]]:
    """Every node in node order: kind, layer, position, feature index or token id, activation, influence."""
    layout, result = graph.layout, graph.prune_result
    influence = result.cumulative_scores.tolist() if result is not None else [None] * layout.n_nodes
    feats = graph.feature_nodes().tolist()
    acts = graph.activation_values[graph.selected_features].tolist()
    nodes: list[dict[str, Any]] = []
    for (layer, pos, index), act in zip(feats, acts, strict=True):
        nodes.append({"kind": "feature", "layer": layer, "position": pos, "index": index, "activation": act})
    for layer in range(graph.n_layers):
        nodes += [{"kind": "error", "layer": layer, "position": p} for p in range(graph.n_pos)]
    tokens = graph.tokens.tolist()
    for p, t in enumerate(tokens):
        nodes.append({"kind": "token", "position": p, "token_id": t, "token": _token(tokenizer, t)})
    for t, prob in zip(graph.logit_tokens.tolist(), graph.logit_probabilities.tolist(), strict=True):
        nodes.append(
            {
                "kind": "logit",
                "position": graph.n_pos - 1,
                "token_id": t,
                "token": _token(tokenizer, t),
                "probability": prob,
            }
        )
    for node, value in zip(nodes, influence, strict=True):
        node["influence"] = value
    return nodes


def pruned_edges(graph: Graph) -> tuple[list[int], dict[str, list]]:
    """(kept node indices, {source, target, weight} of the kept edges between them)."""
    if graph.prune_result is None:
        raise ValueError("the graph is not pruned yet (compute_graph prunes it)")
    keep = graph.prune_result.node_mask
    mask = graph.prune_result.edge_mask & keep[:, None] & keep[None, :]
    targets, sources = mask.nonzero(as_tuple=True)
    weights = graph.adjacency[targets, sources]
    edges = {"source": sources.tolist(), "target": targets.tolist(), "weight": weights.tolist()}
    return keep.nonzero().squeeze(1).tolist(), edges


def adjacency_bytes(graph: Graph) -> bytes:
    """The full adjacency as row-major little-endian float32 bytes."""
    return graph.adjacency.detach().to("cpu", torch.float32).numpy().astype("<f4").tobytes()


def adjacency_from_bytes(data: bytes, n_nodes: int) -> np.ndarray:
    """Inverse of ``adjacency_bytes``: ``[n_nodes, n_nodes]`` float32."""
    return np.frombuffer(data, dtype="<f4").reshape(n_nodes, n_nodes)


def graph_document(graph: Graph, tokenizer: Any = None, **extra: Any) -> dict[str, Any]:
    """The store document of ``graph`` (see the module doc); ``extra`` fields are added as given."""
    layout = graph.layout
    kept, edges = pruned_edges(graph)
    doc = {
        **extra,
        "graph_id": graph.graph_id,
        "dictionary_id": graph.dictionary_id,
        "prompt": graph.prompt,
        "model": graph.model_name,
        "token_ids": graph.tokens.tolist(),
        "prompt_tokens": [_token(tokenizer, t) for t in graph.tokens.tolist()],
        "settings": dict(graph.parameters),
        "n_layers": graph.n_layers,
        "covered_layers": list(graph.covered_layers),
        "counts": {
            "active_features": len(graph.active_features),
            "features": layout.n_features,
            "errors": layout.n_errors,
            "tokens": layout.n_tokens,
            "logits": layout.n_logits,
            "nodes": layout.n_nodes,
            "edges": int((graph.adjacency != 0).sum()),
            "pruned_nodes": len(kept),
            "pruned_edges": len(edges["source"]),
        },
        "scores": dict(graph.scores),
        "seconds": graph.seconds,
        "timings": dict(graph.timings),
        "nodes": node_table(graph, tokenizer),
        "pruned_nodes": kept,
        "pruned_edges": edges,
        "adjacency_format": {
            "dtype": "float32",
            "byteorder": "little",
            "shape": [layout.n_nodes, layout.n_nodes],
            "order": "row-major; rows are targets, columns sources",
        },
        "adjacency": adjacency_bytes(graph),
    }
    return doc


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def viewer_json(
    graph: Graph, tokenizer: Any = None, slug: str | None = None, scan: str | None = None
) -> dict[str, Any]:
    """The graph in the JSON schema of circuit-tracer's / Neuronpedia's graph viewer (module doc)."""
    kept, edges = pruned_edges(graph)
    parts = {
        "graph_id": graph.graph_id,
        "dictionary_id": graph.dictionary_id,
        "prompt": graph.prompt,
        "prompt_tokens": [_token(tokenizer, t) for t in graph.tokens.tolist()],
        "settings": dict(graph.parameters),
        "n_layers": graph.n_layers,
        "nodes": node_table(graph, tokenizer),
        "pruned_nodes": kept,
        "pruned_edges": edges,
    }
    return viewer_json_from_document(parts, slug, scan)


def viewer_json_from_document(
    doc: dict[str, Any], slug: str | None = None, scan: str | None = None
) -> dict[str, Any]:
    """Viewer JSON from a stored graph document (``graph_document``; its adjacency is not needed)."""
    table, kept, edges = doc["nodes"], doc["pruned_nodes"], doc["pruned_edges"]
    logit_layer = doc["n_layers"] + 1
    logits = [i for i, n in enumerate(table) if n["kind"] == "logit"]
    first_logit = logits[0] if logits else -1
    ids: dict[int, dict[str, Any]] = {}
    for i in kept:
        n = table[i]
        kind, pos = n["kind"], n["position"]
        if kind == "feature":
            node_id, layer, feature, ftype = (
                f"{n['layer']}_{n['index']}_{pos}",
                str(n["layer"]),
                _cantor(n["layer"], n["index"]),
                "cross layer transcoder",
            )
        elif kind == "error":
            node_id, layer, feature, ftype = (
                f"{n['layer']}_-1_{pos}",
                str(n["layer"]),
                -1,
                "mlp reconstruction error",
            )
        elif kind == "token":
            node_id, layer, feature, ftype = f"E_{n['token_id']}_{pos}", "E", pos, "embedding"
        else:
            node_id, layer, feature, ftype = (
                f"{logit_layer}_{n['token_id']}_{pos}",
                str(logit_layer),
                n["token_id"],
                "logit",
            )
        ids[i] = {
            "node_id": node_id,
            "jsNodeId": node_id,
            "feature": feature,
            "layer": layer,
            "ctx_idx": pos,
            "feature_type": ftype,
            "token_prob": n.get("probability", 0.0),
            "is_target_logit": i == first_logit,
            "run_idx": 0,
            "reverse_ctx_idx": 0,
            "clerp": f'Output "{n["token"]}" (p={n["probability"]:.3f})' if kind == "logit" else "",
            "influence": n["influence"],
            "activation": n.get("activation"),
        }
    links = [
        {"source": ids[s]["node_id"], "target": ids[t]["node_id"], "weight": w}
        for s, t, w in zip(edges["source"], edges["target"], edges["weight"], strict=True)
    ]
    linked = {x for link in links for x in (link["source"], link["target"])}
    nodes = [n for n in ids.values() if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
    metadata = {
        "slug": slug or doc["graph_id"],
        "scan": scan or doc["dictionary_id"],
        "transcoder_list": [],
        "prompt_tokens": doc["prompt_tokens"],
        "prompt": doc["prompt"],
        "node_threshold": doc["settings"].get("node_threshold"),
        "schema_version": SCHEMA_VERSION,
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}
