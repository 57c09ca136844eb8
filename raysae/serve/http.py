"""What every route module of the HTTP API shares: the FastAPI ``app``, its JSON response class, the
typed path and query parameters, and the store-call wrapper that maps store errors to HTTP statuses;
and the app's guards against bad input: a request body limit (413 before any parsing) and 422 answers
that never echo a large input back.

No ``from __future__ import annotations``: Serve rewrites the route signatures and FastAPI then reads
their annotations.
"""

import json
import math
from collections.abc import Callable
from importlib.metadata import version as _package_version
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raysae.config.serve import DEFAULT_MAX_BODY_BYTES, PAGE_SIZE_CEILING
from raysae.store import StoreUnavailableError
from raysae.store.schema import FEATURE_HEAVY_FIELDS
from raysae.store.validate import MAX_ID_CHARS, MAX_SKIP, MAX_TEXT_CHARS

T = TypeVar("T")
# Fields left out of feature summaries (pages and search results): the bulky per-feature arrays.
HEAVY_FIELDS = FEATURE_HEAVY_FIELDS
HIDDEN_DICTIONARY_FIELDS = ("path",)
MAX_INDEX = 2**63 - 1
MAX_ECHO_CHARS = 200  # longest input a 422 answer repeats (JSON text); longer ones are cut
MAX_ERRORS = 20  # validation errors listed in one 422 answer; the rest are counted


def _finite(value: Any) -> Any:
    """``value`` with NaN and ±inf floats (not JSON) replaced by None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class FiniteJSONResponse(JSONResponse):
    """JSON responses in which non-finite floats (e.g. a dead feature's mean) become null, and a lone
    surrogate (Python's JSON reads the escape of one, and a 422 echoes it) stays a JSON escape."""

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except ValueError:
            content = _finite(content)
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # no UTF-8 for a surrogate: ASCII JSON escapes every non-ASCII char
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


app = FastAPI(
    title="raysae feature browser API",
    version=_package_version("raysae"),
    description="Dictionaries, per-feature statistics, top examples, direct logit attribution, "
    "explanations and scores stored by raysae's analysis jobs; and the most active features of a text.",
    default_response_class=FiniteJSONResponse,
)


class BodyTooLargeError(HTTPException):
    """A request body over the limit (413); raised from ``receive`` while a route reads the body, so
    FastAPI's exception handling answers it as any HTTPException."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body is over this server's limit of {limit} bytes (max_body_bytes)"
        )


class BodyLimit:
    """ASGI middleware: requests whose body is over ``max_bytes`` get 413 before anything parses them.

    A declared Content-Length over the limit is refused at once, without reading the body; a chunked
    body is counted as it streams in and refused as soon as it passes the limit, so at most
    ``max_bytes`` are ever held. ``max_bytes`` is a class attribute set per process by
    ``limit_bodies``: Serve copies the app when the ingress class is declared, so its middleware cannot
    take the replica's config as an argument, but each replica runs in its own process."""

    max_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reply(BodyTooLargeError(limit), send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLargeError as err:  # read outside a route (FastAPI answers those inside): answer here
            if started:
                raise
            await _reply(err, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply(err: HTTPException, send: Send) -> None:
    body = json.dumps({"detail": err.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the rest of the body is never read
    ]
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def limit_bodies(max_bytes: int) -> None:
    """Set this process's request body limit (``ServeConfig.max_body_bytes``; the ingress calls it)."""
    BodyLimit.max_bytes = max_bytes


def _short(value: Any) -> Any:
    """``value`` if its JSON text is at most MAX_ECHO_CHARS long, else the start of that text, marked.
    A raw body (bytes: a JSON route sent another content type) is echoed as text, bad UTF-8 replaced."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else json.dumps(jsonable_encoder(value), default=str)
    if len(text) <= MAX_ECHO_CHARS:
        return value
    return f"{text[:MAX_ECHO_CHARS]}… ({len(text)} characters, cut)"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with FastAPI's usual error list, but inputs cut to MAX_ECHO_CHARS and at most MAX_ERRORS
    errors: the default answer repeats the whole offending input, so a large bad body came back whole."""
    errors = list(exc.errors())
    shown = [{**e, "input": _short(e["input"])} if "input" in e else dict(e) for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        shown.append(
            {
                "type": "too_many_errors",
                "loc": [],
                "msg": f"{len(errors) - MAX_ERRORS} more errors not listed",
            }
        )
    # Finite: a NaN/inf input (Python's JSON reads NaN) is echoed as null instead of failing with 500.
    return FiniteJSONResponse(status_code=422, content={"detail": jsonable_encoder(shown)})


app.add_middleware(BodyLimit)
app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]

IdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, description="Literal id.")]
HookPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, description="Hook point name.")]
IndexPath = Annotated[int, Path(ge=0, le=MAX_INDEX, description="Feature index in the dictionary.")]
OptionalId = Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS)]
Skip = Annotated[int | None, Query(ge=0, le=MAX_SKIP, description="Items to skip (with limit).")]
Limit = Annotated[
    int | None,
    Query(ge=1, le=PAGE_SIZE_CEILING, description="Page size; at most the server's max_page_size."),
]
Page = Annotated[int | None, Query(ge=1, le=MAX_SKIP, description="1-based page number (with page_size).")]
PageSize = Annotated[
    int | None,
    Query(ge=1, le=PAGE_SIZE_CEILING, description="Page size; at most the server's max_page_size."),
]
SearchText = Annotated[str, Query(min_length=1, max_length=MAX_TEXT_CHARS)]


def store_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the store; its ValueError (bad input) becomes 422, StoreUnavailableError 503."""
    try:
        return fn(*args, **kwargs)
    except StoreUnavailableError as err:
        raise HTTPException(503, f"the store is unavailable: {err}") from err
    except ValueError as err:
        raise HTTPException(422, str(err)) from err


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in HEAVY_FIELDS}


def public_dictionary(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in HIDDEN_DICTIONARY_FIELDS}
