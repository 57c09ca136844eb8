"""Routes that write the store or spend compute: attribution graphs and feature explanations.

Each needs ``Authorization: Bearer <token>`` equal to the server's token (``ServeConfig.api_token`` or
$RAYSAE_API_TOKEN, compared in constant time); a server without a token answers 401 to everyone, so
a forgotten setting never leaves compute open. The token never reaches a log, an error or a document.

Graphs: POST checks the request (prompt, transcoder records, parameters) in the ingress, so bad input
is a 4xx before any compute; the graph's id hashes prompt, dictionary and parameters, so a graph
already stored is answered at once and a repeated request is one computation. The request is recorded
``queued`` and handed to the graph deployment (bounded ``max_ongoing_requests``); POST waits up to
``graph_wait_s`` and otherwise answers 202 with the URL to poll.

Explain: explain one feature with the configured chat endpoint (the bundled one by default), score the
explanation and its baseline, upsert both (``raysae.autointerp.job.explain_and_score``), return them.
An endpoint that fails (timeouts, 429s, 5xx, garbage) marks the feature failed in the store and
answers 502 with the reason.

The route declarations (paths, parameters, response models) are in ``api``.
"""

import asyncio
import hmac
from collections import OrderedDict
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from ray.serve.handle import DeploymentHandle

from raysae.config.autointerp import AutointerpConfig
from raysae.config.graphs import GraphConfig
from raysae.config.serve import ServeConfig
from raysae.errors import format_validation_error
from raysae.serve import schemas as m
from raysae.serve.activations import RequestError
from raysae.serve.graph_model import transcoder_records
from raysae.serve.http import store_call
from raysae.store import Store
from raysae.store.schema import GRAPH_HEAVY_FIELDS

Credentials = HTTPAuthorizationCredentials | None
Bearer = Annotated[Credentials, Depends(HTTPBearer(auto_error=False))]  # the routes' parameter type
MAX_POOLS = 8  # negative-example pools kept per ingress replica (one per dictionary)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


class WriteRoutes:
    """The bodies of ``FeatureAPI``'s write routes and their state (running graphs, example pools).

    ``FeatureAPI`` declares the routes (thin methods calling these): Serve builds the class-based view
    only from methods defined on the deployment class itself."""

    def __init__(self, api: Any, graphs: DeploymentHandle | None) -> None:
        self.api = api
        self.config: ServeConfig = api.config
        self.store: Store = api.store  # reads and checks before compute: one attempt, fail fast
        # Results written after minutes of compute keep the store's retries, so a blip loses no work.
        self.result_store = Store(self.config.store)
        self.graphs = graphs
        self._token = self.config.token()
        self._running: dict[str, asyncio.Task] = {}
        self._pools: OrderedDict[str, list] = OrderedDict()

    def _authorize(self, credentials: Credentials) -> None:
        if self._token is None:
            raise _unauthorized(
                "write endpoints are disabled: this server has no API token (set api_token or RAYSAE_API_TOKEN)"
            )
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            raise _unauthorized("missing or wrong bearer token")

    def _url(self, graph_id: str) -> str:
        prefix = "" if self.config.route_prefix == "/" else self.config.route_prefix
        return f"{prefix}/api/graphs/{graph_id}"

    # ---- graphs ----------------------------------------------------------------------------------
    def _check_graph(self, req: m.GraphRequest) -> tuple[str, dict[str, Any]]:
        """(graph id, parameters) of a valid request; HTTPException naming what is wrong otherwise."""
        from raysae.graphs.graph import graph_id

        if len(req.prompt) > self.config.max_text_chars:
            raise HTTPException(
                413, f"prompt is {len(req.prompt)} characters long; the limit is {self.config.max_text_chars}"
            )
        try:
            cfg = GraphConfig.model_validate({**self.config.graph_defaults.model_dump(), **req.parameters()})
        except ValidationError as err:
            raise HTTPException(422, format_validation_error(err, "graph parameters")) from None
        try:
            store_call(transcoder_records, self.store, req.dictionary_id)
        except RequestError as err:
            raise HTTPException(err.status, err.detail) from None
        return graph_id(req.prompt, req.dictionary_id, cfg.parameters()), req.parameters()

    async def _compute(self, gid: str, req: m.GraphRequest, parameters: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.graphs.compute.remote(gid, req.dictionary_id, req.prompt, parameters)
        except Exception as err:  # the replica died or Serve gave up: say so in the request's state
            state = {"status": "failed", "error": f"the graph replica failed ({type(err).__name__})"}
            await run_in_threadpool(store_call, self.store.upsert_graph_request, gid, state)
            return {"graph_id": gid, **state, "http_status": 503}
        finally:
            self._running.pop(gid, None)

    async def create_graph(
        self, request: m.GraphRequest, response: Response, credentials: Credentials
    ) -> dict[str, Any]:
        """Compute (or find) the attribution graph of a prompt through a transcoder; the graph is
        stored under its id. 200 when done, 202 while queued or running, 4xx naming bad input."""
        self._authorize(credentials)
        if self.graphs is None:
            raise HTTPException(503, "the graph endpoint is disabled on this server (graph_endpoint: false)")
        gid, parameters = await run_in_threadpool(self._check_graph, request)
        url = self._url(gid)
        if await run_in_threadpool(store_call, self.store.get_graph, gid, exclude=GRAPH_HEAVY_FIELDS):
            return {"graph_id": gid, "status": "done", "url": url}
        task = self._running.get(gid)
        if task is None:
            queued = {"status": "queued", "dictionary_id": request.dictionary_id, "prompt": request.prompt}
            queued.update(parameters=parameters, error=None)
            await run_in_threadpool(store_call, self.store.upsert_graph_request, gid, queued)
            task = asyncio.ensure_future(self._compute(gid, request, parameters))
            self._running[gid] = task
        if request.wait:
            await asyncio.wait({task}, timeout=self.config.graph_wait_s)
        if not task.done():
            response.status_code = 202
            state = await run_in_threadpool(store_call, self.store.get_graph_request, gid)
            return {"graph_id": gid, "status": (state or {}).get("status", "queued"), "url": url}
        result = task.result()
        if result["status"] == "failed":
            raise HTTPException(result.get("http_status", 422), result["error"])
        return {**result, "url": url}

    def list_graphs(self, dictionary_id: str | None, skip: int | None, limit: int | None) -> dict[str, Any]:
        """Stored graphs (of one dictionary when given), by id: counts, scores and settings."""
        start, n = self.api._page(skip, limit, None, None)
        docs = store_call(self.store.list_graphs, dictionary_id, skip=start, limit=n)
        return {"items": docs, "skip": start, "limit": n}

    def get_graph(self, graph_id: str) -> dict[str, Any]:
        """A graph's state, and the stored graph once done (nodes, pruned edges, scores; no adjacency)."""
        graph = store_call(self.store.get_graph, graph_id, exclude=("adjacency",))
        if graph is not None:
            return {"graph_id": graph_id, "status": "done", "url": self._url(graph_id), "graph": graph}
        state = store_call(self.store.get_graph_request, graph_id)
        if state is None:
            raise HTTPException(404, f"graph {graph_id!r} not found")
        fields = {k: state.get(k) for k in ("status", "error", "seconds")}
        return {"graph_id": graph_id, **fields, "url": self._url(graph_id)}

    def export_graph(self, graph_id: str) -> dict[str, Any]:
        """The pruned graph in the JSON schema of circuit-tracer's and Neuronpedia's graph viewer."""
        from raysae.graphs.export import viewer_json_from_document

        graph = store_call(self.store.get_graph, graph_id, exclude=("adjacency",))
        if graph is None:
            raise HTTPException(404, f"graph {graph_id!r} not found (or not done yet)")
        return viewer_json_from_document(graph)

    # ---- explanations ----------------------------------------------------------------------------
    def _autointerp_config(self, dictionary_id: str) -> AutointerpConfig:
        method = self.config.autointerp.model_dump()
        method["endpoint"]["base_url"] = self.config.chat_url()
        return AutointerpConfig.model_validate(
            {
                **method,
                "dictionary_id": dictionary_id,
                "store": self.config.store.model_dump(),
                "use_ray": False,
            }
        )

    def _pool(self, cfg: AutointerpConfig) -> list:
        """The dictionary's non-activating candidates (as the job picks them), cached per dictionary."""
        from raysae.autointerp.job import job_features, job_pool

        if cfg.dictionary_id not in self._pools:
            self._pools[cfg.dictionary_id] = job_pool(cfg, self.store, job_features(cfg, self.store))
            while len(self._pools) > MAX_POOLS:
                self._pools.popitem(last=False)
        self._pools.move_to_end(cfg.dictionary_id)
        return self._pools[cfg.dictionary_id]

    async def explain(
        self, dictionary_id: str, hook: str, index: int, credentials: Credentials
    ) -> dict[str, Any]:
        """Explain the feature with the chat endpoint, score the explanation beside a baseline, store
        both (idempotent, keyed by feature, explainer model and prompt version, scorer) and return them."""
        from raysae.autointerp.job import explain_and_score

        self._authorize(credentials)
        doc = await run_in_threadpool(store_call, self.store.get_feature, dictionary_id, hook, index)
        if doc is None:
            await run_in_threadpool(self.api._dictionary, dictionary_id)
            raise HTTPException(404, f"feature {index} of {hook!r} in {dictionary_id!r} has no stored record")
        if not doc.get("top_examples"):
            raise HTTPException(422, f"feature {index} of {hook!r} has no activating examples to explain")
        cfg = self._autointerp_config(dictionary_id)
        pool = await run_in_threadpool(store_call, self._pool, cfg)
        explained, scores, usage = await explain_and_score(cfg, self.result_store, (hook, index), pool)
        if explained["status"] != "ok":
            raise HTTPException(502, f"the chat endpoint failed; feature marked failed: {explained['error']}")
        explanation = {**explained, "dictionary_id": dictionary_id, "hook": hook}
        usage_fields = {k: getattr(usage, k) for k in ("requests", "prompt_tokens", "completion_tokens")}
        return {
            "explanation": explanation,
            "scores": [{**s, "dictionary_id": dictionary_id, "hook": hook} for s in scores],
            "usage": usage_fields,
        }

    def explanations(self, dictionary_id: str, hook: str, index: int) -> dict[str, Any]:
        """Every stored explanation of the feature and every score, with per-example predictions."""
        self.api._dictionary(dictionary_id)
        return {
            "explanations": store_call(self.store.get_explanations, dictionary_id, hook, index),
            "scores": store_call(self.store.get_scores, dictionary_id, hook, index),
        }
