"""Fixtures of the analysis tests: the real SmolLM2, a small corpus, small dictionaries and one store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from analysis_reference import DEAD, HOOK

from raysae.config import CLTConfig, CrossCoderConfig, SAEConfig
from raysae.dictionaries import build_dictionary


@pytest.fixture(scope="session")
def smollm():
    """The bundled model in fp32 on CPU."""
    from raysae.config.data import ModelConfig
    from raysae.lm.model import LanguageModel

    return LanguageModel.from_config(ModelConfig(device="cpu"))


@pytest.fixture(scope="module")
def mstore(mongo_uri: str) -> Iterator[object]:
    """A store on a fresh database shared by one test module (dropped afterwards)."""
    from raysae.store import Store, StoreConfig

    config = StoreConfig(uri=mongo_uri, db=f"test_an_{uuid.uuid4().hex[:16]}", retries=2, retry_backoff_s=0.2)
    store = Store.connect(config)
    try:
        yield store
    finally:
        store.client.drop_database(store.db_name)
        store.close()


@pytest.fixture(scope="module")
def sae_path(tmp_path_factory) -> Path:
    """A TopK SAE (d_sae 256) on blocks.1.hook_resid_post with a random decoder bias and dead features."""
    torch.manual_seed(0)
    sae = build_dictionary(SAEConfig(d_model=576, d_sae=256, act_fn="topk", top_k=8, hook_point_in=HOOK))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.b_enc[list(DEAD)] = -1e4
    return sae.save(tmp_path_factory.mktemp("dicts") / "sae-l1")


@pytest.fixture(scope="module")
def clt_path(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    cfg = CLTConfig(
        d_model=576,
        d_sae=48,
        act_fn="relu",
        hook_points_in=["blocks.0.hook_mlp_in", "blocks.1.hook_mlp_in"],
        hook_points_out=["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"],
    )
    clt = build_dictionary(cfg)
    with torch.no_grad():
        clt.b_enc.fill_(-0.5)  # sparse enough that examples get pruned across shards
        for w in clt.W_dec:
            w.normal_(0, 0.05)
    return clt.save(tmp_path_factory.mktemp("dicts") / "clt")


@pytest.fixture(scope="module")
def crosscoder_path(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    cfg = CrossCoderConfig(
        d_model=576, d_sae=48, act_fn="topk", top_k=4, hook_points=["blocks.0.hook_resid_post", HOOK]
    )
    return build_dictionary(cfg).save(tmp_path_factory.mktemp("dicts") / "crosscoder")
