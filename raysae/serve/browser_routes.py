"""The feature browser's routes: its page and static files, offline API docs, nearest features by
decoder cosine and steering.

Nothing the browser or the docs load comes from another host: the page's scripts and styles are files
of ``raysae.serve.browser``, Swagger UI's and ReDoc's are the ones the ``fastapi-offline`` package
ships, and the page's Content-Security-Policy forbids any other origin. FastAPI's own /docs and /redoc
load their JavaScript from a CDN, so ``install_browser_routes`` replaces them on the shared app before the ingress
class is declared (Serve builds the class-based view from the app as it is then).

Nearest features and steering run on the model deployment (``ActivationModel``), so the ingress never
runs a forward pass. Steering spends a model's compute: it needs the bearer token, as the graph and
explain routes do (``WriteRoutes``); nearest features are a cheap read once the decoder is cached.
"""

import math
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from ray.serve.handle import DeploymentHandle

from raysae.serve import schemas as m
from raysae.serve.activations import RequestError
from raysae.serve.browser import BROWSER_CSP, asset, render_browser
from raysae.serve.http import store_call

DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
# Swagger UI's page has an inline script and both set inline styles; nothing may come from elsewhere.
# (ReDoc's menu shows a logo from its CDN: refused here, it hides itself.)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'"
)
router = APIRouter()
Nearest = Annotated[int, Query(ge=1, le=m.MAX_NEAREST, description="How many features to return.")]


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def browser_page(request: Request) -> HTMLResponse:
    """The browser's HTML under this request's root path, with a same-origin-only CSP."""
    headers = {"Content-Security-Policy": BROWSER_CSP, "X-Content-Type-Options": "nosniff"}
    return HTMLResponse(render_browser(_root(request)), headers=headers)


@router.get("/browser/static/{name}", include_in_schema=False)
def browser_static(name: str) -> Response:
    """One of the browser's own files (an allow-list: no path is ever joined from the request)."""
    found = asset(name)
    if found is None:
        raise HTTPException(404, f"no browser file {name!r}")
    body, media_type = found
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get("/docs/static/{name}", include_in_schema=False)
def docs_static(name: str) -> Response:
    """Swagger UI's and ReDoc's files, from the fastapi-offline package."""
    if name not in DOCS_ASSETS:
        raise HTTPException(404, f"no docs file {name!r}")
    body = (resources.files("fastapi_offline") / "static" / name).read_bytes()
    return Response(body, media_type=DOCS_ASSETS[name], headers={"Cache-Control": "max-age=86400"})


def install_browser_routes(app: FastAPI) -> None:
    """Replace FastAPI's CDN-loading /docs and /redoc with pages over the files served above, and add
    the static routes. Call once, before ``@serve.ingress(app)``."""
    docs, redoc, openapi = app.docs_url or "/docs", app.redoc_url or "/redoc", app.openapi_url
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in (docs, redoc)]
    title = app.title

    async def swagger(request: Request) -> HTMLResponse:
        root = _root(request)
        redirect = app.swagger_ui_oauth2_redirect_url
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/static/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/static/favicon.png",
            oauth2_redirect_url=f"{root}{redirect}" if redirect else None,
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    async def redoc_page(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_redoc_html(
            openapi_url=f"{root}{openapi}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}/docs/static/redoc.standalone.js",
            redoc_favicon_url=f"{root}/docs/static/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    app.add_api_route(docs, swagger, include_in_schema=False, response_class=HTMLResponse)
    app.add_api_route(redoc, redoc_page, include_in_schema=False, response_class=HTMLResponse)
    app.include_router(router)


class BrowserRoutes:
    """The bodies of ``FeatureAPI``'s nearest-features and steering routes (declared in ``api``)."""

    def __init__(self, api: Any, model: DeploymentHandle | None) -> None:
        self.api = api
        self.config = api.config
        self.store = api.store
        self.model = model

    def _need_model(self, what: str) -> None:
        if self.model is None:
            raise HTTPException(503, f"{what} needs the model deployment (text_endpoint: false here)")

    def _feature_record(self, dictionary_id: str, hook: str, index: int) -> dict[str, Any]:
        """The dictionary record; 404 for an index over its d_sae or a hook it does not have."""
        record = self.api._dictionary(dictionary_id)
        d_sae = record.get("d_sae")
        if isinstance(d_sae, int) and index >= d_sae:
            raise HTTPException(404, f"index {index} is out of range: {dictionary_id!r} has d_sae={d_sae}")
        hooks = record.get("hooks") or record.get("hooks_in")
        if isinstance(hooks, list) and hooks and hook not in hooks:
            raise HTTPException(404, f"hook {hook!r} is not one of {dictionary_id!r}'s hooks {hooks}")
        return record

    def _explanations(self, dictionary_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each neighbour with its first stored explanation (k small lookups, not a scan)."""
        out = []
        for item in items:
            docs = store_call(self.store.get_explanations, dictionary_id, item["hook"], item["index"])
            texts = [d.get("explanation") for d in docs if d.get("explanation")]
            out.append({**item, "explanation": texts[0] if texts else None})
        return out

    async def nearest(self, dictionary_id: str, hook: str, index: int, k: int) -> dict[str, Any]:
        """The ``k`` features with the highest decoder cosine, with their explanations."""
        self._need_model("nearest features")
        if k > self.config.max_page_size:
            raise HTTPException(422, f"k must be at most {self.config.max_page_size}, got {k}")
        record = await run_in_threadpool(self._feature_record, dictionary_id, hook, index)
        try:
            items = await self.model.nearest.remote(record, hook, index, k)
        except RequestError as err:
            raise HTTPException(err.status, err.detail) from None
        items = await run_in_threadpool(self._explanations, dictionary_id, items)
        return {"dictionary_id": dictionary_id, "hook": hook, "index": index, "k": k, "items": items}

    async def steer(
        self, dictionary_id: str, hook: str, index: int, request: m.SteerRequest, credentials: Any
    ) -> dict[str, Any]:
        """Greedy continuations with and without the feature's decoder output added (bearer token)."""
        self.api.writes._authorize(credentials)  # one token check for every compute route
        self._need_model("steering")
        if len(request.prompt) > self.config.max_text_chars:
            raise HTTPException(
                413,
                f"prompt is {len(request.prompt)} characters long; the limit is {self.config.max_text_chars}",
            )
        if not math.isfinite(request.strength):  # the schema refuses them too; never reach the model
            raise HTTPException(422, "strength must be a finite number")
        record = await run_in_threadpool(self._feature_record, dictionary_id, hook, index)
        try:
            return await self.model.steer.remote(
                record, hook, index, request.prompt, request.strength, request.max_new_tokens
            )
        except RequestError as err:
            raise HTTPException(err.status, err.detail) from None
