"""The HTTP API: a FastAPI app behind Ray Serve (``@serve.ingress``) over the store and the model deployment.

Inputs are validated by FastAPI/pydantic (422 with the offending field), ids are literal strings (the
store coerces every query value to str/int, so ``{"$gt": ""}`` is just an unknown id: 404), the store's
ValueError becomes 422 and StoreUnavailableError 503. Store calls are blocking (pymongo), so their
routes are plain ``def``: FastAPI runs them in its thread pool; pages, features and token searches
are ``async`` over the replica's caches (``read_routes``) and send only their store reads there. The
OpenAPI schema is at /openapi.json, its pages at /docs and /redoc, the feature browser at / and
/browser. No ``from __future__ import annotations`` here: Serve rewrites the route signatures and
FastAPI then reads their annotations.
"""

from typing import Annotated, Any, Literal

from fastapi import Body, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from raysae.config.serve import ServeConfig
from raysae.serve import schemas as m
from raysae.serve.activations import RequestError
from raysae.serve.browser_routes import BrowserRoutes, Nearest, browser_page, install_browser_routes
from raysae.serve.http import (
    HookPath,
    IdPath,
    IndexPath,
    Limit,
    OptionalId,
    Page,
    PageSize,
    SearchText,
    Skip,
    app,
    limit_bodies,
    public_dictionary,
    store_call,
)
from raysae.serve.read_routes import ReadRoutes
from raysae.serve.reads import ReadCache
from raysae.serve.write_routes import Bearer, WriteRoutes
from raysae.store import Store, StoreUnavailableError
from raysae.store.validate import MAX_SKIP

install_browser_routes(app)  # its static files and offline /docs: before the ingress copies the routes


@serve.deployment(name="FeatureAPI")
@serve.ingress(app)
class FeatureAPI:
    """The ingress deployment: store lookups here, text queries forwarded to ``ActivationModel``."""

    def __init__(
        self,
        config: ServeConfig,
        model: DeploymentHandle | None = None,
        graphs: DeploymentHandle | None = None,
    ):
        self.config = config
        # Connects lazily; one attempt per call within store_timeout_ms, so a store that is down costs
        # a request ~2 s and a 503 that says so, not the jobs' retry chain (~24 s by default).
        self.store = Store(config.request_store())
        self.reads = ReadCache(self.store, config)  # records for record_ttl_s; features per analysis
        self.read = ReadRoutes(self)
        limit_bodies(config.max_body_bytes)
        self.model = model
        self.writes = WriteRoutes(self, graphs)
        self.browse = BrowserRoutes(self, model)

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
        doc = store_call(self.reads.record, dictionary_id)
        if doc is None:
            raise HTTPException(404, f"dictionary {dictionary_id!r} not found")
        return doc

    # ---- endpoints -------------------------------------------------------------------------------
    @app.get(
        "/health",
        response_model=m.Health,
        tags=["service"],
        responses={503: {"description": "A dependency is down: `down` names it, `detail` says why."}},
    )
    def health(self) -> Any:
        """Whether the service runs and its store answers; 503 when the store does not, with a body
        naming it (``down``), the reason (``detail``) and which deployments this service has."""
        try:
            ping_s = self.store.ping()
        except StoreUnavailableError as err:
            deployments = {
                "text_endpoint": self.model is not None,
                "graph_endpoint": self.writes.graphs is not None,
                "chat_endpoint": self.config.deploys_chat,
            }
            body = {"status": "unavailable", "down": ["store"], "detail": f"the store is unavailable: {err}"}
            return JSONResponse({**body, **deployments}, status_code=503)
        return {"status": "ok", "store_ping_ms": ping_s * 1000, "text_endpoint": self.model is not None}

    @app.get("/api/dictionaries", response_model=m.DictionaryList, tags=["dictionaries"])
    def list_dictionaries(
        self, skip: Skip = None, limit: Limit = None, page: Page = None, page_size: PageSize = None
    ) -> dict[str, Any]:
        """Dictionary records ordered by id."""
        start, n = self._page(skip, limit, page, page_size)
        docs = store_call(self.store.list_dictionaries, skip=start, limit=n)
        return {"items": [public_dictionary(d) for d in docs], "skip": start, "limit": n}

    @app.get("/api/dictionaries/{dictionary_id}", response_model=m.DictionaryDetail, tags=["dictionaries"])
    def get_dictionary(self, dictionary_id: IdPath) -> dict[str, Any]:
        """One dictionary record and the number of feature documents stored now."""
        return self.read.dictionary(dictionary_id)

    @app.get("/api/dictionaries/{dictionary_id}/features", response_model=m.FeaturePage, tags=["features"])
    async def page_features(
        self,
        dictionary_id: IdPath,
        hook: OptionalId = None,
        sort_by: Literal["frequency", "max_activation", "index"] = "frequency",
        order: Literal["desc", "asc"] = "desc",
        skip: Skip = None,
        limit: Limit = None,
        page: Page = None,
        page_size: PageSize = None,
    ) -> Any:
        """A page of the dictionary's features (of one hook when given), without their bulky arrays."""
        start, n = self._page(skip, limit, page, page_size)
        return await self.read.page(dictionary_id, hook, sort_by, order, start, n)

    @app.get(
        "/api/dictionaries/{dictionary_id}/features/{hook}/{index}",
        response_model=m.FeatureDetail,
        tags=["features"],
    )
    async def get_feature(self, dictionary_id: IdPath, hook: HookPath, index: IndexPath) -> Any:
        """Everything stored about one feature: statistics, histogram, top and quantile examples,
        direct logit attribution, explanations and their scores."""
        return await self.read.feature(dictionary_id, hook, index)

    @app.get("/api/search/tokens", response_model=m.FeatureList, tags=["search"])
    async def features_by_token(
        self,
        token: SearchText,
        dictionary_id: OptionalId = None,
        hook: OptionalId = None,
        limit: Limit = None,
    ) -> Any:
        """Features whose top positive DLA tokens include ``token`` exactly (mind leading spaces),
        strongest max activation first."""
        _, n = self._page(None, limit, None, None)
        return await self.read.by_token(token, dictionary_id, hook, n)

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
        docs = store_call(
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

    # ---- write routes (bearer token; bodies in write_routes) ----------------------------------------
    @app.post(
        "/api/graphs",
        response_model=m.GraphState,
        tags=["graphs"],
        responses={202: {"model": m.GraphState, "description": "Queued or running: poll `url`."}},
    )
    async def create_graph(
        self, request: Annotated[m.GraphRequest, Body()], response: Response, credentials: Bearer
    ) -> dict[str, Any]:
        """Compute (or find) the attribution graph of a prompt through a transcoder; it is stored under
        its id (a hash of prompt, dictionary and parameters). 200 when done, 202 while queued or running
        (poll ``url``), 4xx naming bad input, 401 without the bearer token."""
        return await self.writes.create_graph(request, response, credentials)

    @app.get("/api/graphs", response_model=m.GraphList, tags=["graphs"])
    def list_graphs(
        self, dictionary_id: OptionalId = None, skip: Skip = None, limit: Limit = None
    ) -> dict[str, Any]:
        """Stored graphs (of one dictionary when given), by id: counts, scores and settings."""
        return self.writes.list_graphs(dictionary_id, skip, limit)

    @app.get("/api/graphs/{graph_id}", response_model=m.GraphResult, tags=["graphs"])
    def get_graph(self, graph_id: IdPath) -> dict[str, Any]:
        """A graph's state, and the stored graph once done (nodes, pruned edges, scores; no adjacency)."""
        return self.writes.get_graph(graph_id)

    @app.get("/api/graphs/{graph_id}/export", tags=["graphs"])
    def export_graph(self, graph_id: IdPath) -> dict[str, Any]:
        """The pruned graph in the JSON schema of circuit-tracer's and Neuronpedia's graph viewer."""
        return self.writes.export_graph(graph_id)

    @app.post(
        "/api/features/{dictionary_id}/{hook}/{index}/explain",
        response_model=m.ExplainResult,
        tags=["autointerp"],
    )
    async def explain(
        self, dictionary_id: IdPath, hook: HookPath, index: IndexPath, credentials: Bearer
    ) -> dict[str, Any]:
        """Explain the feature with the chat endpoint, score the explanation beside a baseline, store
        both (idempotent: keyed by feature, explainer model and prompt version, scorer), return them.
        502 when the chat endpoint fails (the feature is marked failed with the reason)."""
        return await self.writes.explain(dictionary_id, hook, index, credentials)

    @app.get(
        "/api/features/{dictionary_id}/{hook}/{index}/explanations",
        response_model=m.FeatureInterpretation,
        tags=["autointerp"],
    )
    def explanations(self, dictionary_id: IdPath, hook: HookPath, index: IndexPath) -> dict[str, Any]:
        """Every stored explanation of the feature and every score, with per-example predictions."""
        return self.writes.explanations(dictionary_id, hook, index)

    # ---- feature browser (bodies in browser_routes) -------------------------------------------------
    @app.get(
        "/api/features/{dictionary_id}/{hook}/{index}/nearest",
        response_model=m.NearestFeatures,
        tags=["features"],
    )
    async def nearest(
        self, dictionary_id: IdPath, hook: HookPath, index: IndexPath, k: Nearest = 10
    ) -> dict[str, Any]:
        """The ``k`` features whose decoder (write) directions have the highest cosine with this one's
        (itself excluded), computed on the model deployment from the saved dictionary."""
        return await self.browse.nearest(dictionary_id, hook, index, k)

    @app.post(
        "/api/features/{dictionary_id}/{hook}/{index}/steer", response_model=m.SteerResult, tags=["features"]
    )
    async def steer(
        self,
        dictionary_id: IdPath,
        hook: HookPath,
        index: IndexPath,
        request: Annotated[m.SteerRequest, Body()],
        credentials: Bearer,
    ) -> dict[str, Any]:
        """Greedy continuations of ``prompt`` without and with ``strength`` × the feature's decoder
        output added at the dictionary's output hooks (bearer token; 413 over the text limits)."""
        return await self.browse.steer(dictionary_id, hook, index, request, credentials)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def browser_root(self, request: Request) -> HTMLResponse:
        return browser_page(request)

    @app.get("/browser", response_class=HTMLResponse, tags=["service"])
    def browser(self, request: Request) -> HTMLResponse:
        """The feature browser: an HTML page and its own scripts (/browser/static) over the JSON API."""
        return browser_page(request)
