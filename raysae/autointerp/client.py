"""An OpenAI-compatible chat client with bounded concurrency, a token-bucket rate limit, retries with
exponential backoff, an on-disk answer cache and token/request accounting.

Retried: 429, 5xx, timeouts, connection errors, bodies that are not the protocol's JSON, and answers
the caller's parser rejects. Other 4xx (a wrong model name, a bad key) fail at once. The openai client's
own retries are off so that these rules are the only ones.

The cache lives on disk under ``$RAYSAE_HOME/autointerp-cache`` (one JSON file per answer, written
temp-then-rename): every Ray worker on a machine shares it without a store round trip, a cache entry
never bloats the store's documents, and deleting the folder is the whole invalidation story. Keys are
(model, sha256 of the request: messages, max_tokens, temperature, stop, logprobs). Only parsed answers
are cached, so a malformed answer is asked again next time.

The API key is never part of a message: errors pass through ``redact`` before they are raised or stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import openai

from raysae.autointerp import telemetry
from raysae.autointerp.prompts import AnswerParseError, Messages
from raysae.config.autointerp import EndpointConfig
from raysae.errors import RaysaeError, redact
from raysae.files import atomic_write_json
from raysae.home import raysae_home

T = TypeVar("T")


class EndpointError(RaysaeError, RuntimeError):
    """The endpoint did not give a usable answer (after the retries, or a non-retryable error)."""


@dataclass
class Completion:
    """One chat answer: its text, per-token logprobs (OpenAI's shape as plain dicts) and token counts."""

    text: str
    logprobs: list[dict[str, Any]] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


@dataclass
class Usage:
    """What a client has spent; ``add`` merges the accounts of Ray workers."""

    requests: int = 0
    cached: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage | dict[str, int]) -> None:
        for k, v in (asdict(other) if isinstance(other, Usage) else other).items():
            setattr(self, k, getattr(self, k) + int(v))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class TokenBucket:
    """``rate`` requests per second on average, at most ``burst`` at once (asyncio; one per event loop)."""

    def __init__(self, rate: float | None, burst: int):
        self.rate, self.capacity = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.rate is None:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


def cache_dir() -> Path:
    return raysae_home() / "autointerp-cache"


@dataclass
class ChatClient:
    """Chat completions against ``endpoint``; ``share`` scales concurrency and rate to one of N workers."""

    endpoint: EndpointConfig
    share: float = 1.0
    cache_root: Path | None = None
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        e = self.endpoint
        self._key = e.resolved_api_key()
        self._client = openai.AsyncOpenAI(
            base_url=e.url, api_key=self._key, max_retries=0, timeout=e.timeout_s
        )
        self._sem = asyncio.Semaphore(max(1, int(e.concurrency * self.share)))
        rate = None if e.requests_per_second is None else e.requests_per_second * self.share
        self._bucket = TokenBucket(rate, e.burst)
        self.cache_root = Path(self.cache_root or e.cache_dir or cache_dir()).expanduser()
        self.in_flight = 0

    def redact(self, text: str) -> str:
        """``text`` without the API key, nor a password in a URL (a base_url's ``user:password@``)."""
        return redact(text, self._key if self._key != "no-key" else None)

    def _cache_path(self, request: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        model = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.endpoint.model)[:100]
        return Path(self.cache_root) / model / digest[:2] / f"{digest}.json"  # type: ignore[arg-type]

    async def complete(
        self,
        messages: Messages,
        parse: Callable[[Completion], T],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_logprobs: int | None = None,
        stop: list[str] | None = None,
    ) -> tuple[T, Completion]:
        """The parsed answer and the completion; EndpointError after ``endpoint.retries`` retries."""
        request: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if stop:
            request["stop"] = stop
        if top_logprobs:
            request.update(logprobs=True, top_logprobs=top_logprobs)
        path = self._cache_path(request)
        if self.endpoint.cache and path.is_file():
            try:
                comp = Completion(**json.loads(path.read_text()))
                comp.cached = True
                result = parse(comp)
                self.usage.cached += 1
                telemetry.request_done(self.endpoint.model, "cached")
                return result, comp
            except (ValueError, TypeError, KeyError):
                path.unlink(missing_ok=True)  # a stale or foreign file: ask again
        e, last = self.endpoint, "no attempt"
        for attempt in range(e.retries + 1):
            if attempt:
                self.usage.retries += 1
                delay = min(e.backoff_max_s, e.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
            try:
                comp = await self._request(request)
            except _Retry as err:
                last = str(err)
                continue
            try:
                result = parse(comp)
            except AnswerParseError as err:
                last = f"unparseable answer: {err}"
                continue
            if e.cache:
                atomic_write_json(path, {k: v for k, v in asdict(comp).items() if k != "cached"}, None)
            return result, comp
        self.usage.failures += 1
        raise EndpointError(self.redact(f"{e.model} at {e.url}: {last} (after {e.retries} retries)"))

    async def _request(self, request: dict[str, Any]) -> Completion:
        await self._bucket.acquire()
        async with self._sem:
            self.in_flight += 1
            self.usage.requests += 1
            start, outcome = time.monotonic(), "error"
            try:
                resp = await self._client.chat.completions.create(**request)
                outcome = "ok"
            except openai.APIStatusError as err:
                msg = self.redact(f"HTTP {err.status_code}: {str(err)[:200]}")
                if err.status_code == 429 or err.status_code >= 500:
                    raise _Retry(msg) from None
                raise EndpointError(msg) from None
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                raise _Retry(self.redact(f"{type(err).__name__}: {err}")) from None
            except (openai.APIResponseValidationError, ValueError) as err:
                raise _Retry(self.redact(f"malformed response: {str(err)[:200]}")) from None
            finally:
                self.in_flight -= 1
                telemetry.request_done(self.endpoint.model, outcome, time.monotonic() - start)
        return self._completion(resp)

    def _completion(self, resp: Any) -> Completion:
        try:
            choice = resp.choices[0]
            text = choice.message.content or ""
        except (AttributeError, IndexError, TypeError) as err:
            raise _Retry(f"malformed response: no choices[0].message ({err})") from None
        logprobs = None
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content:
            logprobs = [
                {
                    "token": t.token,
                    "logprob": t.logprob,
                    "top_logprobs": [{"token": c.token, "logprob": c.logprob} for c in t.top_logprobs or []],
                }
                for t in content
            ]
        usage = getattr(resp, "usage", None)
        comp = Completion(
            text=text,
            logprobs=logprobs,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        )
        self.usage.prompt_tokens += comp.prompt_tokens
        self.usage.completion_tokens += comp.completion_tokens
        telemetry.tokens_used(self.endpoint.model, comp.prompt_tokens, comp.completion_tokens)
        return comp

    async def aclose(self) -> None:
        await self._client.close()


class _Retry(Exception):
    """A retryable failure of one attempt."""
