"""The feature-browser page: served HTML, and the DOM its JavaScript builds in headless Chromium
(skipped when no Chromium is installed: ``apt-get install -y chromium`` on Debian/Ubuntu)."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest
from serve_data import DICT_ID, HOOK, LITERAL_ID, RICH_INDEX

pytestmark = pytest.mark.slow

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH (Debian/Ubuntu: apt-get install -y chromium)"
)


def dump_dom(url: str, profile: Path) -> str:
    """The DOM of ``url`` after its scripts ran, from headless Chromium."""
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def text_of(dom: str, element_id: str) -> str:
    """Text content of the element with ``element_id`` (tags stripped, entities decoded)."""
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', dom, re.S)
    assert match, f"no element #{element_id} in the DOM"
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(2)))


def test_browser_page_is_served(client, server):
    for path in ("/", "/browser"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "<title>raysae feature browser</title>" in r.text and 'const BASE = "";' in r.text
    import httpx

    r = httpx.get(server.down_url + "/", timeout=60)  # under a route prefix the page calls /down/api/...
    assert r.status_code == 200 and 'const BASE = "/down";' in r.text


@needs_chromium
def test_browser_shows_a_feature(server, tmp_path):
    query = urlencode({"dictionary": DICT_ID, "hook": HOOK, "index": RICH_INDEX})
    dom = dump_dom(f"{server.url}/?{query}", tmp_path / "profile")
    assert text_of(dom, "status") == "ready"
    assert text_of(dom, "feature-title") == f"{DICT_ID} · {HOOK} · feature {RICH_INDEX}"
    explanations = text_of(dom, "explanations")
    assert "Fires on cat-related words" in explanations and "detection: 0.8" in explanations
    examples = text_of(dom, "top-examples")
    assert " purring" in examples and " cat" in examples
    assert 'data-activation="3"' in dom  # the strongest token is highlighted by its activation
    assert "cats and kittens" in dom and " kitten" in dom  # second explanation; positive logits
    dictionaries = text_of(dom, "dictionaries")
    assert DICT_ID in dictionaries and LITERAL_ID in dictionaries


@needs_chromium
def test_browser_lists_a_dictionarys_features(server, tmp_path):
    dom = dump_dom(f"{server.url}/?{urlencode({'dictionary': DICT_ID, 'sort_by': 'index'})}", tmp_path / "p")
    assert text_of(dom, "status") == "ready"
    table = re.search(r'<table id="feature-table">(.*?)</table>', dom, re.S)
    assert table
    shown = [int(i) for i in re.findall(rf">{re.escape(HOOK)} #(\d+)</a>", table.group(1))]
    assert shown == list(range(20))  # the first page, by index (the server's page size is 20)
    assert "next »" in dom
