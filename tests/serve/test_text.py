"""Text → most active features through the model deployment, with the real SmolLM2 model, checked
against a direct computation (LanguageModel.run_with_hooks + dictionary.encode) in this process."""

from __future__ import annotations

import pytest
import torch
from serve_data import DICT_ID, HOOK

from raysae import load_dictionary

pytestmark = pytest.mark.slow

URL = f"/api/dictionaries/{DICT_ID}/activations"
TEXT = "The cat sat on the mat . Ray Serve answers queries!"  # " ." survives: no space clean-up
TOP_N = 5


def test_text_features_match_direct_computation(client, server, model):
    r = client.post(URL, json={"text": TEXT, "top_n": TOP_N})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dictionary_id"] == DICT_ID and body["hooks"] == [HOOK] and body["top_n"] == TOP_N
    assert body["model"] == "smollm2-135m-instruct"

    dictionary = load_dictionary(server.dictionary_path)
    tokens = model.to_tokens(TEXT)
    with torch.inference_mode():
        z = dictionary.encode(model.run_with_hooks(tokens, [HOOK])[HOOK][0])  # [T, d_sae]
    ids = tokens[0].tolist()
    assert body["n_tokens"] == len(ids) - 1 == len(body["tokens"])  # BOS left out by default
    assert sum(len(t["features"]) for t in body["tokens"]) > 0
    for t in body["tokens"]:
        pos = t["position"]
        token = model.tokenizer.decode([ids[pos]], clean_up_tokenization_spaces=False)  # as the analysis
        assert t["token_id"] == ids[pos] and t["token"] == token
        assert t["n_active"] == int((z[pos] > 0).sum()) <= 8  # TopK with k=8
        values, indices = z[pos].topk(TOP_N)
        expected = [(int(i), float(v)) for v, i in zip(values, indices, strict=True) if v > 0]
        got = [(f["index"], f["activation"]) for f in t["features"]]
        assert [i for i, _ in got] == [i for i, _ in expected], pos
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-4, abs=1e-5)
        assert all(f["hook"] == HOOK for f in t["features"])
    assert "".join(t["token"] for t in body["tokens"]) == TEXT


def test_text_features_with_bos_and_top_n(client):
    r = client.post(URL, json={"text": "Hello", "top_n": 1, "include_bos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [t["position"] for t in body["tokens"]] == [0, 1]
    assert all(len(t["features"]) <= 1 for t in body["tokens"])


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"text": "x" * 301}, 413, "the limit is 300"),  # the server's max_text_chars
        ({"text": " a" * 60}, 413, "the limit is 40 tokens"),  # short in characters, long in tokens
        ({"text": ""}, 422, "at least 1 character"),
        ({"text": 42}, 422, "valid string"),
        ({"text": ["a", "b"]}, 422, "valid string"),
        ({}, 422, "Field required"),
        ({"text": "hi", "top_n": 0}, 422, "greater than or equal to 1"),
        ({"text": "hi", "top_n": 33}, 422, "top_n must be at most 32"),
        ({"text": "hi", "top_n": 10**6}, 422, "less than or equal to 256"),
        ({"text": "hi", "top_n": "many"}, 422, "valid integer"),
        ({"text": "hi", "hook": {"$ne": None}}, 422, "Extra inputs are not permitted"),
    ],
)
def test_text_bad_input(client, payload, status, message):
    r = client.post(URL, json=payload)
    assert r.status_code == status, r.text
    body = r.json()["detail"]
    text = body if isinstance(body, str) else " ".join(e["msg"] for e in body)
    assert message in text


def test_text_bad_requests(client):
    r = client.post(URL, content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON decode error" in r.text
    r = client.post("/api/dictionaries/nope/activations", json={"text": "hi"})
    assert r.status_code == 404 and "'nope' not found" in r.json()["detail"]
    # A record without a saved path (nothing to load) is a conflict, not a server error.
    r = client.post("/api/dictionaries/empty-dict/activations", json={"text": "hi"})
    assert r.status_code == 409 and "no saved path" in r.json()["detail"]
    assert client.get(URL).status_code == 405


def test_feature_of_matches_the_analysis_layout():
    from raysae.analysis.layout import FeatureLayout
    from raysae.serve.activations import feature_of

    hooks = ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre")
    assert feature_of(5, FeatureLayout("sae", hooks[:1], hooks[:1], 16, 1)) == (hooks[0], 5)
    clt = FeatureLayout("clt", hooks, hooks, 16, 3)  # latent group = layer
    assert feature_of(16 + 3, clt) == (hooks[1], 3) and feature_of(47, clt) == (hooks[2], 15)
    assert feature_of(7, FeatureLayout("crosscoder", hooks, hooks, 16, 1)) == ("+".join(hooks), 7)
