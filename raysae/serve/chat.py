"""An OpenAI-compatible ``/v1/chat/completions`` over the bundled SmolLM2-135M-Instruct (or any chat model
``raysae.lm`` loads), so autointerp can run with no external service.

The prompt is the tokenizer's chat template; decoding is greedy (``temperature`` 0) or sampled, token by
token with the KV cache, until EOS, a ``stop`` string or ``max_tokens``. With ``logprobs`` each generated
token comes with its log-probability under the model's (untempered) distribution and the
``top_logprobs`` most likely alternatives, in OpenAI's shape. One generation runs at a time per replica
(CPU forwards do not overlap usefully); scale with Serve replicas.

Two ways to run the same routes: ``ChatModel`` is a Ray Serve deployment
(``serve.run(ChatModel.bind({"device": "cpu"}), route_prefix="/")``), and ``run_chat_server`` serves
``create_chat_app(ChatGenerator.load())`` with uvicorn in a thread on 127.0.0.1 (tests, small runs).

Serve's class-based ingress binds request bodies only from evaluated annotations, so this module does
not use ``from __future__ import annotations``.
"""

import inspect
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from raysae.config.data import ModelConfig
from raysae.errors import RaysaeError
from raysae.net import free_port


class ChatRequestError(RaysaeError, ValueError):
    """A request this server cannot answer; the message says why (HTTP 400)."""


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat request that this server honours; others are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(1.0, ge=0, le=2)
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False


class ChatGenerator:
    """Token-by-token generation with a chat model; ``complete`` answers one ChatRequest."""

    def __init__(self, hf_model: Any, tokenizer: Any, name: str, max_tokens_limit: int = 512):
        self.model, self.tokenizer, self.name = hf_model, tokenizer, name
        self.max_tokens_limit = max_tokens_limit
        self.context = int(getattr(hf_model.config, "max_position_embeddings", 2048))
        eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        self.eos = {t for t in eos if isinstance(t, int) and t >= 0 and t != tokenizer.unk_token_id}
        self._lock = threading.Lock()
        # transformers 5.2x renamed the KV-cache argument and output field; earlier 5.x used the old name
        params = inspect.signature(hf_model.forward).parameters
        self._cache_field = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def load(cls, cfg: ModelConfig | None = None, max_tokens_limit: int = 512) -> "ChatGenerator":
        """Load the model ``cfg`` names (default: the bundled SmolLM2 on the best device)."""
        from raysae.lm.model import LanguageModel

        cfg = cfg or ModelConfig()
        lm = LanguageModel.from_config(cfg)
        if not getattr(lm.tokenizer, "chat_template", None):
            raise ChatRequestError(f"{cfg.name}: the tokenizer has no chat template; use an instruct model")
        return cls(lm.hf_model, lm.tokenizer, cfg.name, max_tokens_limit)

    def _prompt_ids(self, req: ChatRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in req.messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _token(self, token_id: int, logp: torch.Tensor | None, k: int) -> dict[str, Any]:
        text = self.tokenizer.decode([token_id])
        entry: dict[str, Any] = {"token": text, "bytes": list(text.encode("utf-8"))}
        if logp is not None:
            entry["logprob"] = float(logp[token_id])
            top = torch.topk(logp, k) if k else None
            entry["top_logprobs"] = (
                []
                if top is None
                else [
                    {
                        "token": (t := self.tokenizer.decode([int(i)])),
                        "logprob": float(v),
                        "bytes": list(t.encode()),
                    }
                    for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                ]
            )
        return entry

    def complete(self, req: ChatRequest) -> dict[str, Any]:
        """The chat.completion object answering ``req``; ChatRequestError for what it cannot do."""
        if req.stream:
            raise ChatRequestError("stream is not supported")
        limit = req.max_completion_tokens or req.max_tokens or self.max_tokens_limit
        if limit > self.max_tokens_limit:
            raise ChatRequestError(f"max_tokens {limit} exceeds this server's limit {self.max_tokens_limit}")
        prompt = self._prompt_ids(req)
        if len(prompt) + limit > self.context:
            raise ChatRequestError(
                f"the prompt has {len(prompt)} tokens; with max_tokens {limit} it exceeds the context {self.context}"
            )
        stops = [req.stop] if isinstance(req.stop, str) else [s for s in (req.stop or []) if s]
        k = req.top_logprobs or 0
        gen = torch.Generator().manual_seed(req.seed if req.seed is not None else 0)
        with self._lock, torch.no_grad():
            ids, entries, text, finish = self._generate(prompt, limit, req, stops, k, gen)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model or self.name,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish,
                    "logprobs": {"content": entries} if req.logprobs else None,
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(ids),
                "total_tokens": len(prompt) + len(ids),
            },
        }

    def _generate(
        self, prompt: list[int], limit: int, req: ChatRequest, stops: list[str], k: int, gen: torch.Generator
    ) -> tuple[list[int], list[dict[str, Any]], str, str]:
        device = next(self.model.parameters()).device
        inp = torch.tensor([prompt], device=device)
        past, ids, entries = None, [], []
        for _ in range(limit):
            out = self.model(input_ids=inp, use_cache=True, **{self._cache_field: past})
            past = getattr(out, self._cache_field)
            logits = out.logits[0, -1].float().cpu()
            logp = torch.log_softmax(logits, dim=-1)
            if req.temperature <= 0:
                tok = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / req.temperature, dim=-1)
                tok = int(torch.multinomial(probs, 1, generator=gen))
            if tok in self.eos:
                return ids, entries, self.tokenizer.decode(ids), "stop"
            ids.append(tok)
            if req.logprobs:
                entries.append(self._token(tok, logp, k))
            text = self.tokenizer.decode(ids)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                return ids, _trim(entries, cut), text[:cut], "stop"
            inp = torch.tensor([[tok]], device=device)
        return ids, entries, self.tokenizer.decode(ids), "length"


def _trim(entries: list[dict[str, Any]], n_chars: int) -> list[dict[str, Any]]:
    """The logprob entries of the tokens that start before character ``n_chars``."""
    out, offset = [], 0
    for e in entries:
        if offset >= n_chars:
            break
        out.append(e)
        offset += len(e["token"])
    return out


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return _error(400, f"invalid request: {where}")

    @app.exception_handler(ChatRequestError)
    async def _bad(request: Request, err: ChatRequestError) -> JSONResponse:
        return _error(400, str(err))


def _models(generator: ChatGenerator) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": generator.name, "object": "model", "owned_by": "raysae"}]}


def create_chat_app(generator: ChatGenerator) -> FastAPI:
    """A FastAPI app with ``POST /v1/chat/completions`` and ``GET /v1/models`` over ``generator``."""
    app = FastAPI(title="raysae chat")
    _add_handlers(app)

    @app.post("/v1/chat/completions")
    def chat(body: ChatRequest) -> dict[str, Any]:  # sync: FastAPI runs it in its thread pool
        return generator.complete(body)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return _models(generator)

    return app


@contextmanager
def run_chat_server(
    generator: ChatGenerator, host: str = "127.0.0.1", port: int | None = None
) -> Iterator[str]:
    """Serve ``create_chat_app(generator)`` with uvicorn in a thread; yields the API root (``.../v1``)."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(create_chat_app(generator), host=host, port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the chat server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


serve_app = FastAPI(title="raysae chat")
_add_handlers(serve_app)


@serve.deployment(name="ChatModel")
@serve.ingress(serve_app)
class ChatModel:
    """Ray Serve deployment of the chat routes; ``model`` holds ModelConfig fields (default: SmolLM2)."""

    def __init__(self, model: dict[str, Any] | None = None, max_tokens_limit: int = 512):
        self.generator = ChatGenerator.load(ModelConfig.model_validate(model or {}), max_tokens_limit)

    @serve_app.post("/v1/chat/completions")
    def chat(self, body: ChatRequest) -> dict[str, Any]:
        return self.generator.complete(body)

    @serve_app.get("/v1/models")
    def models(self) -> dict[str, Any]:
        return _models(self.generator)
