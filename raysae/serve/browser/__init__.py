"""The feature browser: one HTML page and its own JavaScript modules and style sheet over the JSON
endpoints (no build step, no CDN: every file is in this folder and served by raysae).

State lives in the query string (``?dictionary=ID&hook=H&index=I``, ``?graph=ID``, ``?q=TEXT``,
``?token=T``), so every view has a link. Stored text (tokens, explanations, prompts) only ever reaches
the page through ``textContent``, and the Content-Security-Policy allows scripts, styles and requests
from the page's own origin only.
"""

from __future__ import annotations

import html
from importlib import resources

# Every file the page may load, with its media type: the static route serves these names and nothing else.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "core.js": "text/javascript; charset=utf-8",
    "feature.js": "text/javascript; charset=utf-8",
    "lab.js": "text/javascript; charset=utf-8",
    "graph.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
BROWSER_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _read(name: str) -> bytes:
    return (resources.files(__name__) / name).read_bytes()


def render_browser(base: str = "") -> str:
    """The browser page, loading its files from and calling the API under ``base`` (the application's
    route prefix, "" at /)."""
    page = _read("index.html").decode("utf-8")
    return page.replace("__BASE__", html.escape(base.rstrip("/"), quote=True))


def asset(name: str) -> tuple[bytes, str] | None:
    """(bytes, media type) of one of the page's files, or None for any other name."""
    if name not in ASSETS:
        return None
    return _read(name), ASSETS[name]
