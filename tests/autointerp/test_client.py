"""The chat client against the real fake HTTP server: retries, failures, cache, rate limit, secrets."""

from __future__ import annotations

import asyncio
import time

import pytest
from fake_openai import FakeServer, FakeState

from raysae.autointerp.client import ChatClient, EndpointError
from raysae.autointerp.prompts import Window, explainer_messages, parse_explanation
from raysae.config.autointerp import EndpointConfig

MSGS = explainer_messages([Window(["a", " cat"], [0.0, 1.0])], 0.3, False)
KEY = "sk-test-SECRET-123"


def endpoint(fake: FakeServer, tmp_path, **over) -> EndpointConfig:
    base = {
        "base_url": fake.url,
        "model": "fake",
        "api_key": KEY,
        "retries": 4,
        "backoff_s": 0.01,
        "timeout_s": 1.0,
        "cache_dir": str(tmp_path),
    }
    return EndpointConfig.model_validate({**base, **over})


def ask(client: ChatClient, messages=MSGS):
    async def go():
        try:
            return await client.complete(messages, lambda c: parse_explanation(c.text), max_tokens=20)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_retries_every_transient_fault(fake, tmp_path):
    fake.state.script = ["429", "500", "malformed", "slow"]
    client = ChatClient(endpoint(fake, tmp_path, cache=False))
    text, comp = ask(client)
    assert text == "cat"
    assert client.usage.retries == 4 and client.usage.requests == 5 and client.usage.failures == 0
    assert (
        comp.completion_tokens == len(comp.text) and client.usage.completion_tokens == comp.completion_tokens
    )
    assert fake.state.auth[-1] == f"Bearer {KEY}"


def test_gives_up_after_the_retries(fake, tmp_path):
    fake.state.script = ["500"] * 10
    client = ChatClient(endpoint(fake, tmp_path, retries=2, cache=False))
    with pytest.raises(EndpointError, match=r"HTTP 500.*after 2 retries"):
        ask(client)
    assert client.usage.requests == 3 and client.usage.failures == 1


def test_client_errors_are_not_retried_and_never_show_the_key(fake, tmp_path):
    fake.state.script = ["400"]
    client = ChatClient(endpoint(fake, tmp_path, cache=False))
    with pytest.raises(EndpointError, match="HTTP 400"):
        ask(client)
    assert client.usage.requests == 1
    fake.state.script = ["401"]
    with pytest.raises(EndpointError) as err:
        ask(ChatClient(endpoint(fake, tmp_path, cache=False)))
    assert "bad key" in str(err.value) and KEY not in str(err.value) and "***" in str(err.value)
    assert KEY not in repr(endpoint(fake, tmp_path)) and KEY not in endpoint(fake, tmp_path).model_dump_json()


def test_unparseable_answers_are_asked_again(fake, tmp_path):
    client = ChatClient(endpoint(fake, tmp_path, cache=False, retries=1))
    calls = []

    def parse(c):
        calls.append(c.text)
        raise __import__("raysae.autointerp.prompts", fromlist=["x"]).AnswerParseError("nope")

    async def go():
        try:
            await client.complete(MSGS, parse, max_tokens=5)
        finally:
            await client.aclose()

    with pytest.raises(EndpointError, match="unparseable answer: nope"):
        asyncio.run(go())
    assert len(calls) == 2 and client.usage.requests == 2


def test_cache_answers_the_same_request(fake, tmp_path):
    ask(ChatClient(endpoint(fake, tmp_path)))
    client = ChatClient(endpoint(fake, tmp_path))
    text, comp = ask(client)
    assert text == "cat" and comp.cached and client.usage.cached == 1 and client.usage.requests == 0
    assert len(fake.state.requests) == 1
    other = ChatClient(endpoint(fake, tmp_path, model="other-model"))
    ask(other)
    assert other.usage.requests == 1  # the model is part of the key
    assert len(list(tmp_path.rglob("*.json"))) == 2


def test_rate_limit_and_concurrency(tmp_path):
    with FakeServer(FakeState(latency_s=0.2)) as fake:
        client = ChatClient(endpoint(fake, tmp_path, cache=False, concurrency=4))
        peak = 0

        async def go():
            nonlocal peak

            async def watch():
                nonlocal peak
                while True:
                    peak = max(peak, client.in_flight)
                    await asyncio.sleep(0.01)

            w = asyncio.create_task(watch())
            await asyncio.gather(*(client.complete(MSGS, lambda c: c.text, max_tokens=5) for _ in range(8)))
            w.cancel()
            await client.aclose()

        t0 = time.perf_counter()
        asyncio.run(go())
        elapsed = time.perf_counter() - t0
        assert peak == 4 and 0.38 < elapsed < 1.5  # two waves of 4 at 0.2 s

        limited = ChatClient(endpoint(fake, tmp_path, cache=False, requests_per_second=10, burst=1))
        fake.state.latency_s = 0.0

        async def burst():
            await asyncio.gather(*(limited.complete(MSGS, lambda c: c.text, max_tokens=5) for _ in range(6)))
            await limited.aclose()

        t0 = time.perf_counter()
        asyncio.run(burst())
        assert time.perf_counter() - t0 >= 0.45  # 1 at once, then one every 0.1 s
