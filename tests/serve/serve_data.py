"""Test data of tests/serve: the documents put into the store, and the application spec of
jobs/serve_config.yaml."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raysae.store import Store

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO / "jobs" / "serve_config.yaml"
DICT_ID = "sae-l1"
HOOK = "blocks.1.hook_resid_post"
D_SAE = 256
N_FEATURES = 30
LITERAL_ID = '{"$gt": ""}'  # a real dictionary whose id looks like an operator
RICH_INDEX = 3  # the feature with examples, histogram, DLA, explanations and scores
NAN_INDEX = 5  # a feature whose mean activation is NaN


@dataclass
class Server:
    url: str
    down_url: str
    db: str
    dictionary_path: Path


def feature_docs() -> list[dict[str, Any]]:
    """N_FEATURES feature documents in the analysis job's schema; distinct frequencies and maxima."""
    docs = []
    for i in range(N_FEATURES):
        doc: dict[str, Any] = {
            "index": i,
            "layer": None,
            "frequency": ((i * 7) % N_FEATURES + 1) / 1000,
            "n_fired": (i * 7) % N_FEATURES + 1,
            "n_tokens": 1000,
            "mean_activation": 0.5 + i / 100,
            "max_activation": float((i * 11) % N_FEATURES) + 0.5,
            "histogram": {"edges": [0.0, 1.0, 2.0, 3.0], "counts": [5, 3, i]},
            "dla_positive_tokens": [f" tok{i % 4}", " the"] if i % 2 == 0 else [f" tok{i % 4}"],
            "dla_positive": [{"token": f" tok{i % 4}", "token_id": 100 + i, "value": 1.5}],
            "dla_negative": [{"token": " not", "token_id": 7, "value": -0.7}],
            "top_examples": [
                {
                    "doc_id": 0,
                    "window_id": j,
                    "position": 2,
                    "max_activation": 3.0 - j,
                    "tokens": ["The", " cat", " sat"],
                    "token_ids": [504, 2644, 3290],
                    "activations": [0.0, 3.0 - j, 0.5],
                }
                for j in range(2)
            ],
            "quantile_examples": [
                {
                    "quantile_low": 0.0,
                    "quantile_high": 0.5,
                    "examples": [
                        {
                            "doc_id": 1,
                            "window_id": 0,
                            "position": 0,
                            "max_activation": 0.2,
                            "tokens": ["A"],
                            "token_ids": [46],
                            "activations": [0.2],
                        }
                    ],
                }
            ],
        }
        if i == RICH_INDEX:
            doc["dla_positive_tokens"] = [" cat", " kitten"]
            doc["top_examples"][0]["tokens"] = ["The", " purring", " cat"]
        if i == NAN_INDEX:
            doc["mean_activation"] = math.nan
        docs.append(doc)
    return docs


def fill_store(store: Store, dictionary_path: Path) -> None:
    """The test documents: one analysed SAE (with a saved dictionary), one without features, one
    with an operator-like id."""
    store.upsert_dictionary(
        DICT_ID,
        {
            "architecture": "sae",
            "hooks_in": [HOOK],
            "hooks_out": [HOOK],
            "d_model": 576,
            "d_sae": D_SAE,
            "hooks": [HOOK],
            "n_features": D_SAE,
            "layers": None,
            "path": str(dictionary_path),
            "model": "smollm2-135m-instruct",
            "config": {"act_fn": "topk", "top_k": 8},
            "analysis_id": "a1",
        },
    )
    clt_hooks = ["blocks.0.hook_mlp_in", "blocks.1.hook_mlp_in"]
    store.upsert_dictionary(
        "empty-dict",
        {"architecture": "clt", "hooks_in": clt_hooks, "hooks": clt_hooks, "layers": 2, "d_sae": 16},
    )
    store.upsert_dictionary(LITERAL_ID, {"architecture": "sae", "hooks_in": [HOOK], "d_sae": 8})
    store.upsert_features(DICT_ID, HOOK, feature_docs())
    store.upsert_explanation(DICT_ID, HOOK, RICH_INDEX, "gpt-test", "Fires on cat-related words")
    store.upsert_explanation(DICT_ID, HOOK, RICH_INDEX, "human", "cats and kittens")
    store.upsert_explanation(DICT_ID, HOOK, 4, "gpt-test", "Closing brackets in code")
    store.upsert_score(DICT_ID, HOOK, RICH_INDEX, "gpt-test", "detection", 0.8)
    store.upsert_score(DICT_ID, HOOK, RICH_INDEX, "gpt-test", "fuzzing", 0.6)


def yaml_app_args() -> tuple[str, dict[str, Any]]:
    """(import_path, args) of the first application of jobs/serve_config.yaml, checked by Serve's schema."""
    from ray.serve.schema import ServeDeploySchema

    spec = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_CONFIG.read_text()))
    app = spec.applications[0]
    return app.import_path, dict(app.args or {})


def import_builder(import_path: str) -> Any:
    module, attr = import_path.split(":")
    return getattr(importlib.import_module(module), attr)


# ---- write endpoints: a transcoder for graphs, a dictionary whose features can be explained ----------
TOKEN = "test-token-0123456789"
CLT_ID = "clt-l01"
CLT_HOOKS = ["blocks.0.ln2.hook_out", "blocks.1.ln2.hook_out"]
CLT_D_SAE = 64
GRAPH_PROMPT = "The capital of France is"
VIEWER_CLT_ID = "clt-viewer"  # CLT_ID's weights with stored features: the browser tests' graph
EXPLAIN_ID = "explain-dict"
EXPLAIN_HOOK = "blocks.2.hook_resid_post"
EXPLAIN_WORDS = (" cat", " river", " seven", " blue")  # the word each feature of EXPLAIN_ID fires on


def save_clt(folder: Path) -> Path:
    """A random TopK CLT on SmolLM2's MLPs 0 and 1 (attribution needs only its shapes and weights)."""
    import torch

    import raysae

    torch.manual_seed(1)
    cfg = {
        "architecture": "clt",
        "d_model": 576,
        "d_sae": 64,
        "act_fn": "topk",
        "top_k": 4,
        "hook_points_in": CLT_HOOKS,
        "hook_points_out": ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"],
    }
    return raysae.build_dictionary(cfg).save(folder)


def clt_feature_docs(layer: int) -> list[dict[str, Any]]:
    """A stored record for every feature of the CLT's layer ``layer``, so that each feature node of a
    graph through it opens a feature page (statistics, one example, logit effects)."""
    docs = []
    for i in range(CLT_D_SAE):
        act = 1.0 + (i % 7) / 2
        docs.append(
            {
                "index": i,
                "layer": layer,
                "frequency": (i % 5 + 1) / 500,
                "n_fired": i % 5 + 1,
                "n_tokens": 500,
                "mean_activation": act / 2,
                "max_activation": act,
                "histogram": {"edges": [0.0, act / 2, act], "counts": [3, i % 4 + 1]},
                "dla_positive_tokens": [f" clt{layer}x{i}"],
                "dla_positive": [{"token": f" clt{layer}x{i}", "token_id": 9000 + i, "value": 0.9}],
                "dla_negative": [{"token": f" anti{layer}x{i}", "token_id": 9500 + i, "value": -0.4}],
                "top_examples": [
                    {
                        "doc_id": 7,
                        "window_id": 100 * layer + i,
                        "position": 4,
                        "max_activation": act,
                        "tokens": ["The", " capital", " of", " France", " is"],
                        "token_ids": [504, 3575, 282, 4649, 314],
                        "activations": [0.0, 0.0, 0.0, act / 3, act],
                    }
                ],
            }
        )
    return docs


def _example(window_id: int, word: str, fires: bool) -> dict[str, Any]:
    tokens = ["The", " old", word if fires else " dog", " was", " here"]
    acts = [0.0, 0.0, 2.0 if fires else 0.0, 0.1 if fires else 0.0, 0.0]
    return {
        "doc_id": window_id,
        "window_id": window_id,
        "position": 2,
        "max_activation": max(acts),
        "tokens": tokens,
        "token_ids": list(range(len(tokens))),
        "activations": acts,
    }


def explain_feature_docs() -> list[dict[str, Any]]:
    """One feature per word of EXPLAIN_WORDS: 12 activating windows each (own window ids)."""
    docs = []
    for i, word in enumerate(EXPLAIN_WORDS):
        top = [_example(1000 * (i + 1) + j, word, True) for j in range(12)]
        quantiles = [{"quantile_low": 0.0, "quantile_high": 1.0, "examples": top[10:]}]
        docs.append(
            {
                "index": i,
                "frequency": 0.01,
                "max_activation": 2.0,
                "top_examples": top[:10],
                "quantile_examples": quantiles,
            }
        )
    return docs


def fill_write_data(store: Store, clt_path: Path) -> None:
    store.upsert_dictionary(
        CLT_ID,
        {
            "architecture": "clt",
            "hooks_in": ["blocks.0.ln2.hook_out", "blocks.1.ln2.hook_out"],
            "hooks_out": ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"],
            "d_model": 576,
            "d_sae": 64,
            "layers": 2,
            "path": str(clt_path),
            "model": "smollm2-135m-instruct",
        },
    )
    store.upsert_dictionary(
        EXPLAIN_ID, {"architecture": "sae", "hooks_in": [EXPLAIN_HOOK], "hooks": [EXPLAIN_HOOK], "d_sae": 4}
    )
    store.upsert_features(EXPLAIN_ID, EXPLAIN_HOOK, explain_feature_docs())


def fill_viewer_data(store: Store, clt_path: Path) -> None:
    """VIEWER_CLT_ID: a record of the CLT saved at ``clt_path``, every feature stored with an
    explanation. Its own id, so that its graphs leave CLT_ID's graph list as the write tests expect;
    ``store.delete_dictionary(VIEWER_CLT_ID)`` removes it and its graphs again."""
    record = {
        "architecture": "clt",
        "hooks_in": CLT_HOOKS,
        "hooks_out": ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"],
        "hooks": CLT_HOOKS,
        "d_model": 576,
        "d_sae": CLT_D_SAE,
        "layers": 2,
        "n_features": 2 * CLT_D_SAE,
        "path": str(clt_path),
        "model": "smollm2-135m-instruct",
    }
    store.upsert_dictionary(VIEWER_CLT_ID, record)
    for layer, hook in enumerate(CLT_HOOKS):
        store.upsert_features(VIEWER_CLT_ID, hook, clt_feature_docs(layer))
        texts = [f"Layer {layer} transcoder latent {i}" for i in range(CLT_D_SAE)]
        docs = [{"index": i, "explainer": "human", "explanation": t} for i, t in enumerate(texts)]
        store.upsert_explanations(VIEWER_CLT_ID, hook, docs)
