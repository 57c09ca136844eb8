"""The HTTP API: a FastAPI app behind Ray Serve (``@serve.ingress``) over the store and the model deployment.

Inputs are validated by FastAPI/pydantic (422 with the offending field), ids are literal strings (the
store coerces every query value to str/int, so ``{"$gt": ""}`` is just an unknown id: 404), the store's
ValueError becomes 422 and StoreUnavailableError 503. Store calls are blocking (pymongo), so their
routes are plain ``def``: FastAPI runs them in its thread pool. The OpenAPI schema is at /openapi.json,
its pages at /docs and /redoc, the feature browser at / and /browser. No ``from __future__ import
annotations`` here: Serve rewrites the route signatures and FastAPI then reads their annotations.
"""

import json
import math
from collections.abc import Callable
from importlib.metadata import version as _package_version
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Body, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from raysae.config.serve import PAGE_SIZE_CEILING, ServeConfig
from raysae.serve import schemas as m
from raysae.serve.activations import RequestError
from raysae.serve.browser import render_browser
from raysae.store import Store, StoreUnavailableError
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


def _store_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the store; its ValueError (bad input) becomes 422, StoreUnavailableError 503."""
    try:
        return fn(*args, **kwargs)
    except StoreUnavailableError as err:
        raise HTTPException(503, f"the store is unavailable: {err}") from err
    except ValueError as err:
        raise HTTPException(422, str(err)) from err


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in HEAVY_FIELDS}


def _public_dictionary(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in HIDDEN_DICTIONARY_FIELDS}


@serve.deployment(name="FeatureAPI")
@serve.ingress(app)
class FeatureAPI:
    """The ingress deployment: store lookups here, text queries forwarded to ``ActivationModel``."""

    def __init__(self, config: ServeConfig, model: DeploymentHandle | None = None):
        self.config = config
        self.store = Store(config.store)  # connects lazily; an unreachable store answers 503
        self.probe = Store(config.store.model_copy(update={"retries": 0}))  # health: one attempt, no backoff
        self.model = model

    # ---- helpers ---------------------------------------------------------------------------------
    def _page(
        self, skip: int | None, limit: int | None, page: int | None, size: int | None
    ) -> tuple[int, int]:
        """(skip, limit) from either skip/limit or page/page_size, checked against max_page_size."""
        if page is not None or size is not None:
            if skip is not None or limit is not None:
                raise HTTPException(422, "give either skip/limit or page/page_size, not both")
            name, n = "page_size", size or self.config.page_size
            start = ((page or 1) - 1) * n
        else:
            name, n = "limit", limit or self.config.page_size
            start = skip or 0
        if n > self.config.max_page_size:
            raise HTTPException(422, f"{name} must be at most {self.config.max_page_size}, got {n}")
        if start > MAX_SKIP:
            raise HTTPException(422, f"the page starts at item {start}; the limit is {MAX_SKIP}")
        return start, n

    def _dictionary(self, dictionary_id: str) -> dict[str, Any]:
        doc = _store_call(self.store.get_dictionary, dictionary_id)
        if doc is None:
            raise HTTPException(404, f"dictionary {dictionary_id!r} not found")
        return doc

    # ---- endpoints -------------------------------------------------------------------------------
    @app.get("/health", response_model=m.Health, tags=["service"])
    def health(self) -> dict[str, Any]:
        """Whether the service runs and its store answers (503 when it does not)."""
        ping_s = _store_call(self.probe.ping)
        return {"status": "ok", "store_ping_ms": ping_s * 1000, "text_endpoint": self.model is not None}

    @app.get("/api/dictionaries", response_model=m.DictionaryList, tags=["dictionaries"])
    def list_dictionaries(
        self, skip: Skip = None, limit: Limit = None, page: Page = None, page_size: PageSize = None
    ) -> dict[str, Any]:
        """Dictionary records ordered by id."""
        start, n = self._page(skip, limit, page, page_size)
        docs = _store_call(self.store.list_dictionaries, skip=start, limit=n)
        return {"items": [_public_dictionary(d) for d in docs], "skip": start, "limit": n}

    @app.get("/api/dictionaries/{dictionary_id}", response_model=m.DictionaryDetail, tags=["dictionaries"])
    def get_dictionary(self, dictionary_id: IdPath) -> dict[str, Any]:
        """One dictionary record and the number of feature documents stored now."""
        doc = self._dictionary(dictionary_id)
        n = _store_call(self.store.count_features, dictionary_id)
        return {**_public_dictionary(doc), "stored_features": n}

    @app.get("/api/dictionaries/{dictionary_id}/features", response_model=m.FeaturePage, tags=["features"])
    def page_features(
        self,
        dictionary_id: IdPath,
        hook: OptionalId = None,
        sort_by: Literal["frequency", "max_activation", "index"] = "frequency",
        order: Literal["desc", "asc"] = "desc",
        skip: Skip = None,
        limit: Limit = None,
        page: Page = None,
        page_size: PageSize = None,
    ) -> dict[str, Any]:
        """A page of the dictionary's features (of one hook when given), without their bulky arrays."""
        start, n = self._page(skip, limit, page, page_size)
        self._dictionary(dictionary_id)
        docs = _store_call(
            self.store.page_features,
            dictionary_id,
            hook,
            sort_by=sort_by,
            descending=order == "desc",
            skip=start,
            limit=n,
            summary=True,
        )
        total = _store_call(self.store.count_features, dictionary_id, hook)
        return {
            "dictionary_id": dictionary_id,
            "hook": hook,
            "sort_by": sort_by,
            "order": order,
            "total": total,
            "skip": start,
            "limit": n,
            "next_skip": start + n if start + n < total else None,
            "items": [_summary(d) for d in docs],
        }

    @app.get(
        "/api/dictionaries/{dictionary_id}/features/{hook}/{index}",
        response_model=m.FeatureDetail,
        tags=["features"],
    )
    def get_feature(self, dictionary_id: IdPath, hook: HookPath, index: IndexPath) -> dict[str, Any]:
        """Everything stored about one feature: statistics, histogram, top and quantile examples,
        direct logit attribution, explanations and their scores."""
        doc = _store_call(self.store.get_feature, dictionary_id, hook, index)
        if doc is None:
            record = self._dictionary(dictionary_id)
            d_sae = record.get("d_sae")
            if isinstance(d_sae, int) and index >= d_sae:
                raise HTTPException(
                    404, f"index {index} is out of range: {dictionary_id!r} has d_sae={d_sae}"
                )
            hooks = record.get("hooks") or record.get("hooks_in")  # "hooks": the stored hook values
            if isinstance(hooks, list) and hooks and hook not in hooks:
                raise HTTPException(404, f"hook {hook!r} is not one of {dictionary_id!r}'s hooks {hooks}")
            raise HTTPException(404, f"feature {index} of {hook!r} in {dictionary_id!r} has no stored record")
        explanations = _store_call(self.store.get_explanations, dictionary_id, hook, index)
        scores = _store_call(self.store.get_scores, dictionary_id, hook, index)
        return {**doc, "explanations": explanations, "scores": scores}

    @app.get("/api/search/tokens", response_model=m.FeatureList, tags=["search"])
    def features_by_token(
        self,
        token: SearchText,
        dictionary_id: OptionalId = None,
        hook: OptionalId = None,
        limit: Limit = None,
    ) -> dict[str, Any]:
        """Features whose top positive DLA tokens include ``token`` exactly (mind leading spaces),
        strongest max activation first."""
        _, n = self._page(None, limit, None, None)
        if dictionary_id is not None:
            self._dictionary(dictionary_id)
        docs = _store_call(
            self.store.find_features_by_token,
            token,
            dictionary_id=dictionary_id,
            hook=hook,
            limit=n,
            summary=True,
        )
        return {"items": [_summary(d) for d in docs]}

    @app.get("/api/search/explanations", response_model=m.ExplanationList, tags=["search"])
    def search_explanations(
        self,
        q: SearchText,
        dictionary_id: OptionalId = None,
        hook: OptionalId = None,
        case_sensitive: bool = False,
        skip: Skip = None,
        limit: Limit = None,
    ) -> dict[str, Any]:
        """Explanations that contain ``q`` literally (case-insensitive unless case_sensitive)."""
        start, n = self._page(skip, limit, None, None)
        if dictionary_id is not None:
            self._dictionary(dictionary_id)
        docs = _store_call(
            self.store.search_explanations,
            q,
            dictionary_id=dictionary_id,
            hook=hook,
            case_sensitive=case_sensitive,
            skip=start,
            limit=n,
        )
        return {"items": docs, "skip": start, "limit": n}

    @app.post(
        "/api/dictionaries/{dictionary_id}/activations", response_model=m.TextFeatures, tags=["features"]
    )
    async def text_features(
        self, dictionary_id: IdPath, query: Annotated[m.TextQuery, Body()]
    ) -> dict[str, Any]:
        """Run the language model and the dictionary on ``text``; the ``top_n`` most active features of
        every token (413 when the text is over the server's character or token limit)."""
        if self.model is None:
            raise HTTPException(503, "the text endpoint is disabled on this server (text_endpoint: false)")
        if len(query.text) > self.config.max_text_chars:
            raise HTTPException(
                413, f"text is {len(query.text)} characters long; the limit is {self.config.max_text_chars}"
            )
        if query.top_n > self.config.max_top_n:
            raise HTTPException(422, f"top_n must be at most {self.config.max_top_n}, got {query.top_n}")
        record = await run_in_threadpool(self._dictionary, dictionary_id)
        try:
            return await self.model.top_features.remote(record, query.text, query.top_n, query.include_bos)
        except RequestError as err:
            raise HTTPException(err.status, err.detail) from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def browser_root(self, request: Request) -> HTMLResponse:
        return HTMLResponse(render_browser(request.scope.get("root_path", "")))

    @app.get("/browser", response_class=HTMLResponse, tags=["service"])
    def browser(self, request: Request) -> HTMLResponse:
        """The feature browser: plain HTML and a little JavaScript over the JSON endpoints."""
        return HTMLResponse(render_browser(request.scope.get("root_path", "")))
