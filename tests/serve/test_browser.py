"""The feature browser in a real browser: Playwright drives the system Chromium against the running
Serve application and its stored data. Every request to another host is blocked and fails the test;
each view is checked by its DOM and saved as a screenshot (in the test's tmp folder, and in
$RAYSAE_SCREENSHOTS when set). Skipped without Chromium (Debian/Ubuntu: apt-get install chromium)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import pytest
from serve_data import (
    CLT_HOOKS,
    DICT_ID,
    GRAPH_PROMPT,
    HOOK,
    LITERAL_ID,
    RICH_INDEX,
    TOKEN,
    VIEWER_CLT_ID,
    Server,
    fill_viewer_data,
)

from raysae.config.store import StoreConfig
from raysae.store import Store

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])"
)
expect = sync_api.expect
expect.set_options(timeout=90_000)  # model-backed views (steering, graphs) on a shared 2-CPU machine

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no Chromium on PATH (Debian/Ubuntu: apt-get install chromium)"
    ),
]
CONTROLS = "input, select, textarea, button, [role=button]"


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def viewer_graph(server: Server, mongo_uri: str, client: httpx.Client) -> Iterator[str]:
    """A graph through VIEWER_CLT_ID (stored for this module, deleted after it), unpruned: the test
    CLT is random, so pruning would leave no feature node to click."""
    store = Store.connect(StoreConfig(uri=mongo_uri, db=server.db, retries=2, retry_backoff_s=0.2))
    fill_viewer_data(store, server.dictionary_path.parent / "serve-clt")
    try:
        body = {
            "prompt": GRAPH_PROMPT,
            "dictionary_id": VIEWER_CLT_ID,
            "node_threshold": 1.0,
            "edge_threshold": 1.0,
        }
        r = client.post("/api/graphs", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        yield r.json()["graph_id"]
    finally:
        store.delete_dictionary(VIEWER_CLT_ID)  # its features, explanations and graphs too
        store.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Folders the screenshots go to: the tests' tmp folder, and $RAYSAE_SCREENSHOTS when set."""
    folders = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("RAYSAE_SCREENSHOTS"):
        folders.append(Path(os.environ["RAYSAE_SCREENSHOTS"]))
        folders[-1].mkdir(parents=True, exist_ok=True)
    return folders


@dataclass
class Watch:
    foreign: list[str] = field(default_factory=list)  # requests to other hosts (aborted)
    problems: list[str] = field(default_factory=list)  # uncaught script errors, CSP refusals


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: sync_api.Browser, server: Server, watch: Watch) -> Iterator[sync_api.Page]:
    """A fresh page; requests outside the application are aborted and recorded, as are uncaught
    script errors and Content-Security-Policy refusals: any of them fails the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    foreign, problems = watch.foreign, watch.problems

    def guard(route: sync_api.Route) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    pg.route("**/*", guard)
    pg.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    pg.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)
    yield pg
    context.close()
    assert foreign == [], f"requests to other hosts: {foreign}"
    assert problems == []


def open_view(page: sync_api.Page, server: Server, query: dict | None = None) -> None:
    page.goto(f"{server.url}/" + (f"?{urlencode(query)}" if query else ""))
    expect(page.locator("#status")).to_have_text("ready")


def shoot(page: sync_api.Page, shots: list[Path], name: str) -> None:
    page.screenshot(path=shots[0] / f"{name}.png", full_page=True)
    for folder in shots[1:]:
        shutil.copy(shots[0] / f"{name}.png", folder / f"{name}.png")


def test_home_lists_dictionaries_and_graphs(page, server, shots, viewer_graph) -> None:
    open_view(page, server)
    table = page.locator("#dictionary-table")
    for did in (DICT_ID, VIEWER_CLT_ID, LITERAL_ID):  # the operator-like id is shown literally
        expect(table.get_by_role("link", name=did, exact=True)).to_be_visible()
    expect(page.locator("#graph-table")).to_contain_text(GRAPH_PROMPT)
    expect(page.locator("#dictionaries li")).to_have_count(
        len(httpx.get(f"{server.url}/api/dictionaries").json()["items"])
    )
    shoot(page, shots, "home")


def test_search_by_explanation_token_and_index(page, server, shots) -> None:
    open_view(page, server)
    page.get_by_label("Search explanations").fill("cat-related")
    page.get_by_label("Search explanations").press("Enter")
    expect(page.locator("#status")).to_have_text("ready")
    results = page.locator("#search-results")
    expect(results).to_contain_text("Fires on cat-related words")
    shoot(page, shots, "search-explanations")
    results.get_by_role("link", name=f"{HOOK} #{RICH_INDEX}").click()
    expect(page.locator("#feature-title")).to_have_text(f"{DICT_ID} · {HOOK} · feature {RICH_INDEX}")

    page.get_by_label("Features promoting a token").fill(" kitten")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#status")).to_have_text("ready")
    expect(page.locator("#search-results tbody tr")).to_have_count(1)
    expect(page.locator("#search-results")).to_contain_text(f"{HOOK} #{RICH_INDEX}")
    shoot(page, shots, "search-token")

    page.get_by_label("Dictionary", exact=True).select_option(DICT_ID)
    expect(page.get_by_label("Hook", exact=True)).to_have_value(HOOK)
    page.get_by_label("Feature index").fill("4")
    page.get_by_role("button", name="Open").click()
    expect(page.locator("#feature-title")).to_have_text(f"{DICT_ID} · {HOOK} · feature 4")
    expect(page.locator("#feature-summary")).to_have_text("Closing brackets in code")


def test_dictionary_page_pages_its_features(page, server, shots) -> None:
    open_view(page, server, {"dictionary": DICT_ID, "sort_by": "index"})
    links = page.locator("#feature-table tbody tr td:first-child a")
    expect(links).to_have_count(20)  # the server's page size
    assert links.all_text_contents() == [f"{HOOK} #{i}" for i in range(20)]
    expect(page.get_by_role("link", name="next »")).to_be_visible()
    shoot(page, shots, "dictionary")
    page.get_by_role("link", name="next »").click()
    expect(page.locator("#feature-table tbody tr")).to_have_count(10)


def test_feature_page_shows_everything_stored(page, server, shots, client) -> None:
    open_view(page, server, {"dictionary": DICT_ID, "hook": HOOK, "index": RICH_INDEX})
    expect(page.locator("#feature-title")).to_have_text(f"{DICT_ID} · {HOOK} · feature {RICH_INDEX}")
    expect(page.locator("#feature-summary")).to_have_text("Fires on cat-related words")
    explanations = page.locator("#explanations")
    expect(explanations).to_contain_text("cats and kittens")
    expect(explanations).to_contain_text("detection: 0.8")
    expect(explanations).to_contain_text("fuzzing: 0.6")
    expect(page.locator("#histogram rect.bar")).to_have_count(3)
    expect(page.locator("#histogram rect.bar").nth(2)).to_have_attribute(
        "data-tip", f"activation 2 – 3: {RICH_INDEX} tokens"
    )
    expect(page.locator("#dla-positive")).to_contain_text(" tok3")
    expect(page.locator("#dla-negative")).to_contain_text(" not")
    top = page.locator("#top-examples .example").first
    expect(top).to_have_text("The purring cat")
    strongest = top.locator(".tok.max")
    expect(strongest).to_have_text(" purring")
    strongest.hover()
    expect(page.locator("#tooltip")).to_have_text("activation 3")
    expect(page.locator("#quantile-examples summary")).to_have_text("Activations 0 – 0.5 (1 example)")
    nearest = client.get(f"/api/features/{DICT_ID}/{HOOK}/{RICH_INDEX}/nearest", params={"k": 10}).json()
    rows = page.locator("#nearest-table tbody tr td:first-child")
    expect(rows).to_have_count(10)
    assert rows.all_text_contents() == [f"{x['hook']} #{x['index']}" for x in nearest["items"]]
    shoot(page, shots, "feature")


def test_test_text_and_steering(page, server, shots, client) -> None:
    open_view(page, server, {"dictionary": DICT_ID, "hook": HOOK, "index": RICH_INDEX})
    text = "The cat sat on the mat"
    page.get_by_label("Text to run through the model").fill(text)
    page.get_by_role("button", name="Run the model").click()
    rows = page.locator("#token-features tbody tr")
    expected = client.post(f"/api/dictionaries/{DICT_ID}/activations", json={"text": text, "top_n": 5}).json()
    expect(rows).to_have_count(expected["n_tokens"])
    assert page.locator("#token-features tbody tr td:first-child").all_text_contents() == [
        t["token"] for t in expected["tokens"]
    ]
    first = expected["tokens"][0]["features"][0]
    expect(rows.first).to_contain_text(f"#{first['index']} ")  # one hook: links say just #index
    expect(page.locator("#focus-activations .tok")).to_have_count(expected["n_tokens"])

    body = {"prompt": "My favourite thing is", "strength": 60, "max_new_tokens": 8}
    page.get_by_label("Prompt").fill(body["prompt"])
    page.get_by_label("Strength").fill("60")
    page.get_by_label("New tokens").fill("8")
    page.get_by_label("API token").fill("wrong")
    page.get_by_role("button", name="Steer").click()
    expect(page.locator("#steer-output [role=alert]")).to_have_text("401: missing or wrong bearer token")
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Steer").click()
    want = client.post(
        f"/api/features/{DICT_ID}/{HOOK}/{RICH_INDEX}/steer",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    expect(page.locator("#unsteered .generated")).to_have_text(want["unsteered"]["text"])
    expect(page.locator("#steered .generated")).to_have_text(want["steered"]["text"])
    expect(page.locator("#steered h3")).to_have_text("Steered (strength 60)")
    assert want["steered"]["text"] != want["unsteered"]["text"]
    page.locator("#steering").scroll_into_view_if_needed()
    shoot(page, shots, "steering")


def test_graph_viewer_from_node_to_feature(page, server, shots, client, viewer_graph) -> None:
    graph = client.get(f"/api/graphs/{viewer_graph}").json()["graph"]
    open_view(page, server, {"graph": viewer_graph})
    expect(page.locator("#graph-prompt")).to_have_text(GRAPH_PROMPT)
    cells = page.locator("#graph-scores td")
    expect(cells.nth(0)).to_have_text(f"{graph['scores']['replacement_score']:.4g}")
    expect(cells.nth(1)).to_have_text(f"{graph['scores']['completeness_score']:.4g}")
    expect(page.locator("#graph-svg g.node")).to_have_count(len(graph["pruned_nodes"]))
    expect(page.locator("#graph-svg line.edge")).to_have_count(len(graph["pruned_edges"]["source"]))
    shoot(page, shots, "graph")

    edges = graph["pruned_edges"]
    kind = {i: graph["nodes"][i]["kind"] for i in graph["pruned_nodes"]}
    source, target = next(  # an edge out of a feature node: pin both ends, then open the feature
        (s, t) for s, t in zip(edges["source"], edges["target"], strict=True) if kind[s] == "feature"
    )
    page.locator(f'#graph-svg g.node[data-node="{target}"]').click()
    expect(page.locator("#node-title")).to_contain_text(f"@{graph['nodes'][target]['position']}")
    page.get_by_role("button", name="Pin to subgraph").click()
    page.locator(f'#graph-svg g.node[data-node="{source}"]').focus()
    page.keyboard.press("Enter")  # keyboard selection works as a click
    node = graph["nodes"][source]
    expect(page.locator("#node-title")).to_have_text(f"L{node['layer']} #{node['index']} @{node['position']}")
    page.get_by_role("button", name="Pin to subgraph").click()
    expect(page.locator("#pinned-list li")).to_have_count(2)
    expect(page.locator("#subgraph-svg g.node")).to_have_count(2)
    expect(page.locator("#subgraph-edges tbody tr")).to_have_count(
        sum(1 for s, t in zip(edges["source"], edges["target"], strict=True) if {s, t} <= {source, target})
    )
    assert f"pinned={quote(f'{target},{source}')}" in page.url  # the pins have a link
    shoot(page, shots, "graph-pinned")

    page.locator("#open-feature").click()
    hook = CLT_HOOKS[node["layer"]]
    expect(page.locator("#feature-title")).to_have_text(f"{VIEWER_CLT_ID} · {hook} · feature {node['index']}")
    expect(page.locator("#feature-summary")).to_have_text(
        f"Layer {node['layer']} transcoder latent {node['index']}"
    )
    shoot(page, shots, "graph-feature")


def test_every_control_is_labelled_and_reached_by_tab(page, server) -> None:
    for query in ({"dictionary": DICT_ID, "hook": HOOK, "index": RICH_INDEX}, {"dictionary": DICT_ID}, None):
        open_view(page, server, query)
        controls = page.locator(CONTROLS)
        assert controls.count() >= 8
        for i in range(controls.count()):
            expect(controls.nth(i)).to_have_accessible_name(re.compile(r"\w"))
    open_view(page, server, {"dictionary": DICT_ID, "hook": HOOK, "index": RICH_INDEX})
    wanted = {"search-q", "search-token", "jump-dictionary", "jump-hook", "jump-index", "test-text"}
    wanted |= {
        "steer-prompt",
        "steer-strength",
        "steer-token",
        "Search",
        "Find",
        "Open",
        "Run the model",
        "Steer",
    }
    seen: list[str] = []
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(300):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.id || document.activeElement.textContent"))
        if wanted <= set(seen):
            break
    assert wanted <= set(seen), sorted(wanted - set(seen))


def test_api_docs_render_offline(page, server, shots, watch) -> None:
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("raysae feature browser API")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    shoot(page, shots, "docs")
    page.goto(f"{server.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("raysae feature browser API")
    for _ in range(50):  # ReDoc's menu asks for its logo from its CDN; the page's CSP refuses it
        if any("cdn.redoc.ly" in p for p in watch.problems):
            break
        page.wait_for_timeout(100)
    watch.problems[:] = [p for p in watch.problems if "cdn.redoc.ly" not in p]
