"""One running Serve application for all of tests/serve: built from jobs/serve_config.yaml, bound to
127.0.0.1 on a free port, in the shared Ray session, over a fresh MongoDB database filled through the
Store API; plus a second application whose store is unreachable. Serve shuts down after the package."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_openai import FakeServer, FakeState
from serve_data import (
    D_SAE,
    HOOK,
    TOKEN,
    Server,
    fill_store,
    fill_write_data,
    import_builder,
    save_clt,
    yaml_app_args,
)

from raysae.config.store import StoreConfig
from raysae.store import Store, find_free_port


@pytest.fixture(scope="package")
def saved_dictionary(tmp_root: Path) -> Path:
    """A small TopK SAE on SmolLM2's layer-1 residual stream, saved to the session's tmp folder."""
    import torch

    import raysae
    from raysae.config import SAEConfig

    torch.manual_seed(0)
    cfg = SAEConfig(d_model=576, d_sae=D_SAE, act_fn="topk", top_k=8, hook_point_in=HOOK)
    return raysae.build_dictionary(cfg).save(tmp_root / "serve-dictionary")


@pytest.fixture(scope="package")
def fake_llm() -> Iterator[FakeServer]:
    """The deterministic OpenAI-protocol server the explain endpoint calls."""
    with FakeServer(FakeState()) as server:
        yield server


@pytest.fixture(scope="package")
def server(
    ray_session: None, mongo_uri: str, saved_dictionary: Path, tmp_root: Path, fake_llm: FakeServer
) -> Iterator[Server]:
    """The application from jobs/serve_config.yaml (store args pointed at a fresh database; a bearer
    token; the explain endpoint pointed at ``fake_llm``)."""
    from ray import serve

    from raysae.serve.app import build_app
    from raysae.serve.app import config_from_args as parse

    db = f"test_serve_{uuid.uuid4().hex[:12]}"
    store = Store.connect(StoreConfig(uri=mongo_uri, db=db, retries=2, retry_backoff_s=0.2))
    fill_store(store, saved_dictionary)
    fill_write_data(store, save_clt(tmp_root / "serve-clt"))
    port = find_free_port("127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        import_path, args = yaml_app_args()
        args.update(mongo_uri=mongo_uri, db=db, max_page_size=20, max_text_chars=300, max_text_tokens=40)
        args.update(
            api_token=TOKEN,
            graph_max_prompt_tokens=12,
            graph_wait_s=120,
            graph_defaults={"max_feature_nodes": 32, "batch_size": 16, "memory_budget_gb": 0.12},
            autointerp={
                "endpoint": {
                    "base_url": fake_llm.url,
                    "model": "fake-model",
                    "retries": 1,
                    "backoff_s": 0.01,
                    "cache": False,
                },
                "explainer": {"top_examples": 6, "examples_per_quantile": 0},
                "scorer": {"n_activating": 4, "n_non_activating": 4, "examples_per_prompt": 4},
            },
        )
        serve.run(import_builder(import_path)(args), name="main", route_prefix="/", blocking=False)
        down = parse(
            {
                "mongo_uri": f"mongodb://127.0.0.1:{find_free_port('127.0.0.1')}/?directConnection=true",
                "store": {"retries": 0, "server_selection_timeout_ms": 300, "connect_timeout_ms": 300},
                "text_endpoint": False,
                "graph_endpoint": False,
            }
        )
        serve.run(build_app(down), name="down", route_prefix="/down", blocking=False)
        yield Server(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/down", db, saved_dictionary)
    finally:
        serve.shutdown()
        store.client.drop_database(db)
        store.close()


@pytest.fixture(scope="package")
def model() -> object:
    """The real SmolLM2 (fp32, CPU) in this process, for direct computations."""
    from raysae.config.data import ModelConfig
    from raysae.lm import LanguageModel

    return LanguageModel.from_config(ModelConfig(device="cpu"))


@pytest.fixture(scope="package")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop Serve when the run leaves this folder: a "package" fixture on a folder without
    ``__init__.py`` lives until the session ends, and Serve's replicas would keep CPUs that later
    tests (Ray Train, Ray Data) need on the shared 2-CPU cluster."""
    if nextitem is not None and Path(nextitem.path).parent == Path(item.path).parent:
        return
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
