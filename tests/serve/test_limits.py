"""Bad input and a store that is down: bodies over max_body_bytes get 413 before any parsing, a 422
never echoes a large input back, and a request to a service whose store is down answers 503 in
about store_timeout_ms (one attempt), not after the store's retry chain (4 × 5 s by default)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from serve_data import DICT_ID, Server

from raysae.config.serve import DEFAULT_MAX_BODY_BYTES, ServeConfig
from raysae.config.store import StoreConfig
from raysae.serve.http import MAX_ECHO_CHARS
from raysae.store import find_free_port

ACTIVATIONS = f"/api/dictionaries/{DICT_ID}/activations"
JSON = {"content-type": "application/json"}


def _invalid_body(size: int) -> bytes:
    """A JSON body of about ``size`` bytes that fails validation (``text`` must be a string)."""
    return json.dumps({"text": [1] * (size // 3)}).encode()


@pytest.fixture(scope="module")
def dead_store_url(server: Server) -> Iterator[str]:
    """A third application whose store is unreachable, with the store's default retries and timeouts
    (the conftest's "down" app shortens them itself); no model deployments."""
    from ray import serve

    from raysae.serve.app import build_app

    dead = f"mongodb://127.0.0.1:{find_free_port('127.0.0.1')}/?directConnection=true"
    config = ServeConfig(
        store=StoreConfig(uri=dead), text_endpoint=False, graph_endpoint=False, chat_endpoint=False
    )
    assert config.store.retries == 3 and config.store.server_selection_timeout_ms == 5000
    serve.run(build_app(config), name="dead", route_prefix="/dead", blocking=False)
    try:
        yield f"{server.url}/dead"
    finally:
        # when this module runs last in the folder, conftest's teardown hook has shut Serve down
        # already (and the app with it); deleting then would start a new controller and fail
        if "dead" in serve_applications():
            serve.delete("dead")


def serve_applications() -> set[str]:
    """Names of the running Serve applications; empty when Serve is not running."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return set() if client is None else set(client.get_serve_details().get("applications", {}))


def test_request_store_makes_one_short_attempt():
    config = ServeConfig(
        store=StoreConfig(retries=5, server_selection_timeout_ms=9000, connect_timeout_ms=800)
    )
    store = config.request_store()
    assert store.retries == 0
    assert store.server_selection_timeout_ms == config.store_timeout_ms == 2000
    assert store.connect_timeout_ms == 800  # the store's own timeout when it is shorter
    assert config.store.retries == 5  # jobs and the graph deployment keep theirs


def test_oversized_body_gets_413_before_parsing(client):
    body = _invalid_body(2 * 1024 * 1024)
    assert len(body) > 2 * DEFAULT_MAX_BODY_BYTES
    start = time.perf_counter()
    r = client.post(ACTIVATIONS, content=body, headers=JSON)
    elapsed = time.perf_counter() - start
    assert r.status_code == 413, r.text[:500]
    assert str(DEFAULT_MAX_BODY_BYTES) in r.json()["detail"]
    assert len(r.content) < 500
    assert elapsed < 5, elapsed


def test_oversized_chunked_body_gets_413(client):
    """No Content-Length: the bytes are counted as they stream in."""
    body = _invalid_body(2 * 1024 * 1024)
    chunks = (body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024))
    r = client.post(ACTIVATIONS, content=chunks, headers=JSON)
    assert r.status_code == 413, r.text[:500]
    assert "limit" in r.json()["detail"]


def test_large_invalid_body_is_not_echoed(client):
    body = _invalid_body(DEFAULT_MAX_BODY_BYTES - 64 * 1024)  # under the limit, so it is parsed
    r = client.post(ACTIVATIONS, content=body, headers=JSON)
    assert r.status_code == 422
    assert len(r.content) < 2000, len(r.content)  # FastAPI's default answer repeats all ~1 MB
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "text"] and "string" in error["msg"]
    assert isinstance(error["input"], str) and error["input"].endswith("characters, cut)")
    assert len(error["input"]) < MAX_ECHO_CHARS + 50


def test_validation_answer_lists_at_most_max_errors():
    from fastapi.exceptions import RequestValidationError

    from raysae.serve.http import MAX_ERRORS, validation_error

    errors = [
        {"type": "int_type", "loc": ("body", i), "msg": "bad", "input": "x" * 10_000} for i in range(50)
    ]
    response = asyncio.run(validation_error(None, RequestValidationError(errors)))  # type: ignore[arg-type]
    detail = json.loads(response.body)["detail"]
    assert response.status_code == 422 and len(detail) == MAX_ERRORS + 1
    assert detail[-1]["type"] == "too_many_errors" and "30 more" in detail[-1]["msg"]
    assert all(len(e["input"]) < MAX_ECHO_CHARS + 50 for e in detail[:-1])
    assert len(response.body) < 10_000


def test_small_invalid_input_is_echoed_whole(client):
    r = client.post(ACTIVATIONS, json={"text": [1, 2]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["input"] == [1, 2]


def test_store_down_answers_503_at_once(dead_store_url):
    with httpx.Client(base_url=dead_store_url, timeout=120) as c:
        for path in ("/api/dictionaries", f"/api/dictionaries/{DICT_ID}"):
            start = time.perf_counter()
            r = c.get(path)
            elapsed = time.perf_counter() - start
            assert r.status_code == 503, r.text
            assert (
                "store is unavailable" in r.json()["detail"] and "cannot reach MongoDB" in r.json()["detail"]
            )
            assert "1 attempt(s)" in r.json()["detail"]
            assert elapsed < 6, elapsed  # one 2 s attempt; the store's retries would take ~24 s


def test_health_names_the_store_when_it_is_down(dead_store_url):
    start = time.perf_counter()
    r = httpx.get(f"{dead_store_url}/health", timeout=120)
    elapsed = time.perf_counter() - start
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable" and body["down"] == ["store"]
    assert "cannot reach MongoDB" in body["detail"]
    assert body["text_endpoint"] is False and body["graph_endpoint"] is False
    assert body["chat_endpoint"] is False
    assert elapsed < 6, elapsed


def test_health_is_ok_with_the_store_up(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and "down" not in r.json()
