"""The feature browser's HTTP side over real Serve: its page and files (and nothing else) under any
route prefix, /docs and /redoc without any other host, nearest features checked against the saved
decoder, and steering checked against generation on the real SmolLM2 in this process."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import torch
from serve_data import DICT_ID, GRAPH_PROMPT, HOOK, RICH_INDEX, TOKEN, Server

from raysae import load_dictionary
from raysae.serve.browser import ASSETS

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEATURE = f"/api/features/{DICT_ID}/{HOOK}/{RICH_INDEX}"
URL_ATTR = re.compile(r"""(?:src|href)\s*=\s*["']([^"']*)["']""")


def references(page: str) -> list[str]:
    """Every src/href value of an HTML page."""
    return URL_ATTR.findall(page)


@pytest.mark.parametrize("prefix", ["", "/down"])
def test_browser_page_and_its_files_are_served_under_the_prefix(server: Server, prefix: str) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for path in ("/", "/browser"):
            r = c.get(prefix + path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "default-src 'none'" in r.headers["content-security-policy"]
            assert "<title>raysae feature browser</title>" in r.text
            assert f'data-base="{prefix}"' in r.text
        urls = [u for u in references(r.text) if not u.startswith(("?", "#", "data:"))]
        assert f"{prefix}/browser/static/app.js" in urls and f"{prefix}/browser/static/app.css" in urls
        assert all(u.startswith(prefix + "/") for u in urls), urls  # no other host, nothing outside the app
        for name, media in ASSETS.items():
            got = c.get(f"{prefix}/browser/static/{name}")
            assert got.status_code == 200 and got.headers["content-type"] == media, name
            text = got.text.replace("http://www.w3.org/2000/svg", "")  # the SVG namespace: a name, not a URL
            assert "http://" not in text and "https://" not in text, name
        for bad in ("index.html", "__init__.py", "..%2F__init__.py", "nope.js"):
            assert c.get(f"{prefix}/browser/static/{bad}").status_code == 404, bad


@pytest.mark.parametrize("prefix", ["", "/down"])
def test_docs_and_redoc_load_nothing_from_another_host(server: Server, prefix: str) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for page in ("/docs", "/redoc"):
            r = c.get(prefix + page)
            assert r.status_code == 200, page
            assert "default-src 'self'" in r.headers["content-security-policy"]
            urls = references(r.text)
            assert urls and all(u.startswith(f"{prefix}/docs/static/") for u in urls), urls
            assert "fonts.googleapis" not in r.text and "cdn." not in r.text
            assert f"{prefix}/openapi.json" in r.text
            for url in urls:
                assert c.get(url).status_code == 200, url
        assert '"validatorUrl": null' in c.get(prefix + "/docs").text  # no badge from validator.swagger.io


def test_new_routes_are_in_the_schema(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    steer = paths["/api/features/{dictionary_id}/{hook}/{index}/steer"]["post"]
    assert steer["security"] == [{"HTTPBearer": []}]
    assert "get" in paths["/api/features/{dictionary_id}/{hook}/{index}/nearest"]
    assert "/browser/static/{name}" not in paths and "/docs/static/{name}" not in paths


def expected_nearest(server: Server, index: int, k: int) -> list[tuple[int, float]]:
    """Top-k cosine neighbours of ``index`` from the saved decoder rows, computed here."""
    sae = load_dictionary(server.dictionary_path)
    rows = (sae.W_dec / sae.output_scale).detach().float()
    unit = rows / rows.norm(dim=-1, keepdim=True)
    cos = unit @ unit[index]
    cos[index] = -2.0
    values, indices = cos.topk(k)
    return [(int(i), float(v)) for v, i in zip(values, indices, strict=True)]


def test_nearest_features_by_decoder_cosine(client: httpx.Client, server: Server) -> None:
    r = client.get(f"{FEATURE}/nearest", params={"k": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["dictionary_id"], body["hook"], body["index"], body["k"]) == (DICT_ID, HOOK, RICH_INDEX, 8)
    want = expected_nearest(server, RICH_INDEX, 8)
    assert [x["index"] for x in body["items"]] == [i for i, _ in want]
    assert [x["cosine"] for x in body["items"]] == pytest.approx([c for _, c in want], abs=1e-5)
    assert all(x["hook"] == HOOK and x["index"] != RICH_INDEX for x in body["items"])
    explained = {4: "Closing brackets in code"}
    assert all(x["explanation"] == explained.get(x["index"]) for x in body["items"])


@pytest.mark.parametrize(
    ("path", "params", "status", "needle"),
    [
        (FEATURE, {"k": 0}, 422, "greater than or equal to 1"),
        (FEATURE, {"k": 51}, 422, "less than or equal to 50"),
        (FEATURE, {"k": 21}, 422, "k must be at most 20"),  # the server's max_page_size
        (f"/api/features/{DICT_ID}/{HOOK}/256", {}, 404, "d_sae=256"),
        (f"/api/features/{DICT_ID}/blocks.2.hook_resid_post/0", {}, 404, "is not one of"),
        (f"/api/features/nope/{HOOK}/0", {}, 404, "'nope' not found"),
        ("/api/features/empty-dict/blocks.0.hook_mlp_in/0", {}, 409, "no saved path"),
    ],
)
def test_nearest_bad_input(client: httpx.Client, path: str, params: dict, status: int, needle: str) -> None:
    r = client.get(f"{path}/nearest", params=params)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_nearest_without_the_model_deployment(server: Server) -> None:
    r = httpx.get(f"{server.down_url}{FEATURE}/nearest", timeout=60)
    assert r.status_code == 503 and "model deployment" in r.text


def _direct_steered(model, prompt: str, direction: torch.Tensor, n: int) -> str:
    """Greedy continuation with ``direction`` added at HOOK, by a loop written here."""
    ids = model.to_tokens(prompt)
    out: list[int] = []
    add = {HOOK: lambda x: x + direction.to(x.dtype)}
    with torch.inference_mode():
        for _ in range(n):
            logits, _ = model.forward(ids, replace=add)
            nxt = int(logits[0, -1].argmax())
            if nxt == model.tokenizer.eos_token_id:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return model.tokenizer.decode(out, clean_up_tokenization_spaces=False)


def test_steering_matches_direct_generation(client: httpx.Client, server: Server, model) -> None:
    """The unsteered text is transformers' own greedy generate; the steered one a loop here adding
    strength × (decoder row / output scale) at the SAE's hook at every position."""
    strength, n = 60.0, 6
    r = client.post(
        f"{FEATURE}/steer",
        json={"prompt": GRAPH_PROMPT, "strength": strength, "max_new_tokens": n},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hooks_out"] == [HOOK] and body["model"] == "smollm2-135m-instruct"
    ids = model.to_tokens(GRAPH_PROMPT)
    with torch.inference_mode():
        generated = model.hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
        )
    plain = model.tokenizer.decode(generated[0, ids.shape[1] :], clean_up_tokenization_spaces=False)
    assert body["unsteered"]["text"] == plain
    assert "".join(body["unsteered"]["tokens"]) == plain and len(body["unsteered"]["token_ids"]) == n
    sae = load_dictionary(server.dictionary_path)
    direction = strength * (sae.W_dec[RICH_INDEX] / sae.output_scale).detach()
    assert body["steered"]["text"] == _direct_steered(model, GRAPH_PROMPT, direction, n)
    assert body["steered"]["text"] != body["unsteered"]["text"]  # the steering changed the text

    zero = client.post(
        f"{FEATURE}/steer", json={"prompt": GRAPH_PROMPT, "strength": 0, "max_new_tokens": 3}, headers=AUTH
    )
    assert zero.status_code == 200 and zero.json()["steered"] == zero.json()["unsteered"]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        (FEATURE, {"prompt": "", "strength": 1}, 422, "at least 1 character"),
        (FEATURE, {"prompt": "hi"}, 422, "strength"),
        (FEATURE, {"prompt": "hi", "strength": 1e6}, 422, "less than or equal to 1000"),
        (FEATURE, {"prompt": "hi", "strength": "strong"}, 422, "valid number"),
        (FEATURE, {"prompt": "hi", "strength": 1, "max_new_tokens": 0}, 422, "greater than or equal to 1"),
        (FEATURE, {"prompt": "hi", "strength": 1, "max_new_tokens": 65}, 422, "less than or equal to 64"),
        (FEATURE, {"prompt": "hi", "strength": 1, "temperature": 1}, 422, "Extra inputs"),
        (FEATURE, {"prompt": "x" * 301, "strength": 1}, 413, "the limit is 300"),
        (FEATURE, {"prompt": " a" * 60, "strength": 1}, 413, "the limit is 40 tokens"),
        (f"/api/features/{DICT_ID}/{HOOK}/300", {"prompt": "hi", "strength": 1}, 404, "d_sae=256"),
        (f"/api/features/nope/{HOOK}/0", {"prompt": "hi", "strength": 1}, 404, "not found"),
        (
            "/api/features/empty-dict/blocks.0.hook_mlp_in/0",
            {"prompt": "hi", "strength": 1},
            409,
            "no saved path",
        ),
    ],
)
def test_steering_bad_input(client: httpx.Client, path: str, body: dict, status: int, needle: str) -> None:
    r = client.post(f"{path}/steer", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_steering_refuses_non_finite_strength(client: httpx.Client) -> None:
    raw = json.dumps({"prompt": "hi", "strength": float("nan")}).encode()  # NaN: Python's JSON extension
    r = client.post(f"{FEATURE}/steer", content=raw, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_steering_needs_the_bearer_token(client: httpx.Client, server: Server, headers: dict) -> None:
    r = client.post(f"{FEATURE}/steer", json={"prompt": "hi", "strength": 1}, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{server.down_url}{FEATURE}/steer", json={"prompt": "hi", "strength": 1}, headers=AUTH)
    assert r.status_code == 401 and "no API token" in r.text
