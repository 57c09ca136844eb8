"""The endpoints over documents written by the real analysis job (``raysae.analysis.analyze``, in
process, on Shakespeare through SmolLM2): every field passes through unchanged, and the text endpoint
names features by the same (hook, index) identity the job stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import torch

from raysae.config import CLTConfig
from raysae.config.analysis import AnalysisConfig
from raysae.config.store import StoreConfig
from raysae.dictionaries import build_dictionary
from raysae.store import Store

pytestmark = pytest.mark.slow

CLT_ID = "analysed-clt"
HOOKS = ["blocks.0.hook_mlp_in", "blocks.1.hook_mlp_in"]
D_SAE = 16


@pytest.fixture(scope="module")
def analysed(server, mongo_uri, model, tmp_path_factory) -> Iterator[Store]:
    """A small CLT analysed into the served database."""
    from raysae.analysis.job import analyze

    torch.manual_seed(1)
    cfg = CLTConfig(
        d_model=576,
        d_sae=D_SAE,
        act_fn="relu",
        hook_points_in=HOOKS,
        hook_points_out=["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"],
    )
    clt = build_dictionary(cfg)
    with torch.no_grad():
        clt.b_enc.fill_(-0.5)
    path = clt.save(tmp_path_factory.mktemp("dicts") / "clt")
    store = Store.connect(StoreConfig(uri=mongo_uri, db=server.db, retries=2, retry_backoff_s=0.2))
    settings = AnalysisConfig.model_validate(
        {
            "activations": {
                "total_tokens": 640,
                "batch_windows": 4,
                "tokens": {"context_size": 32, "shuffle_buffer_documents": 16, "seed": 1},
                "model": {"device": "cpu"},
            },
            "top_k_examples": 3,
            "quantiles": 2,
            "examples_per_quantile": 2,
            "dla_tokens": 5,
            "store": store.config.model_dump(),
            "dictionary_id": CLT_ID,
        }
    )
    try:
        analyze(Path(path), settings, store=store, use_ray=False, progress=False, lm=model)
        yield store
    finally:
        store.delete_dictionary(CLT_ID)  # leave the served database as the other modules expect it
        store.close()


def _plain(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "updated_at"}


def test_dictionary_record_of_the_job(client, analysed):
    r = client.get(f"/api/dictionaries/{CLT_ID}")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["architecture"] == "clt" and d["layers"] == 2 and d["hooks"] == HOOKS
    assert d["n_features"] == d["stored_features"] == 2 * D_SAE and d["d_sae"] == D_SAE
    assert "path" not in d


def test_job_documents_pass_through(client, analysed):
    for hook in HOOKS:
        page = client.get(
            f"/api/dictionaries/{CLT_ID}/features", params={"hook": hook, "sort_by": "frequency", "limit": 20}
        ).json()
        assert page["total"] == D_SAE
        freqs = [f["frequency"] for f in page["items"]]
        assert freqs == sorted(freqs, reverse=True) and freqs[0] > 0
        top = page["items"][0]
        r = client.get(f"/api/dictionaries/{CLT_ID}/features/{quote(hook, safe='')}/{top['index']}")
        assert r.status_code == 200, r.text
        body = r.json()
        stored = _plain(analysed.get_feature(CLT_ID, hook, top["index"]))
        assert {k: v for k, v in body.items() if k in stored and k != "updated_at"} == stored
        assert body["layer"] == HOOKS.index(hook) and body["top_examples"] and body["dla_positive"]
        token = stored["dla_positive_tokens"][0]
        found = client.get(
            "/api/search/tokens", params={"token": token, "dictionary_id": CLT_ID, "hook": hook}
        )
        assert (hook, top["index"]) in [(f["hook"], f["index"]) for f in found.json()["items"]]


def test_text_features_name_stored_features(client, analysed):
    r = client.post(
        f"/api/dictionaries/{CLT_ID}/activations", json={"text": "To be, or not to be", "top_n": 3}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hooks"] == HOOKS
    named = {(f["hook"], f["index"]) for t in body["tokens"] for f in t["features"]}
    assert named and {h for h, _ in named} <= set(HOOKS)
    for hook, index in sorted(named)[:5]:
        r = client.get(f"/api/dictionaries/{CLT_ID}/features/{quote(hook, safe='')}/{index}")
        assert r.status_code == 200 and r.json()["n_tokens"] > 0
