"""What every route module of the HTTP API shares: the FastAPI ``app``, its JSON response class, the
typed path and query parameters, and the store-call wrapper that maps store errors to HTTP statuses.

No ``from __future__ import annotations``: Serve rewrites the route signatures and FastAPI then reads
their annotations.
"""

import json
import math
from collections.abc import Callable
from importlib.metadata import version as _package_version
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, HTTPException, Path, Query
from fastapi.responses import JSONResponse

from raysae.config.serve import PAGE_SIZE_CEILING
from raysae.store import StoreUnavailableError
from raysae.store.schema import FEATURE_HEAVY_FIELDS
from raysae.store.validate import MAX_ID_CHARS, MAX_SKIP, MAX_TEXT_CHARS

T = TypeVar("T")
# Fields left out of feature summaries (pages and search results): the bulky per-feature arrays.
HEAVY_FIELDS = FEATURE_HEAVY_FIELDS
HIDDEN_DICTIONARY_FIELDS = ("path",)
MAX_INDEX = 2**63 - 1


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
    """JSON responses in which non-finite floats (e.g. a dead feature's mean) become null."""

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except ValueError:
            text = json.dumps(_finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8")


app = FastAPI(
    title="raysae feature browser API",
    version=_package_version("raysae"),
    description="Dictionaries, per-feature statistics, top examples, direct logit attribution, "
    "explanations and scores stored by raysae's analysis jobs; and the most active features of a text.",
    default_response_class=FiniteJSONResponse,
)

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
