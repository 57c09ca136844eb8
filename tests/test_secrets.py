"""Credentials never leak: API keys, bearer tokens and MONGO_URI passwords stay out of everything a
command prints, logs (its own log file, Ray's session logs) or raises, and out of stored documents.

Each secret holds a fresh uuid; a leak is any of its first or last ten hex digits in the text, so a
truncated echo (pydantic cuts long inputs in the middle) counts too. The runs go through real code:
the command line, a store that refuses or cannot be reached, a chat endpoint answering 401 (echoing
the key it got) and 500, Ray workers, and a Serve application asked with a wrong bearer token.
"""

from __future__ import annotations

import json
import os
import signal
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from fake_openai import FakeServer, FakeState
from raysae_process import free_port, raysae_command, read_tree, serve_args, wait_until_serving

from raysae.config.autointerp import AutointerpConfig
from raysae.config.base import ConfigError
from raysae.config.serve import ServeConfig
from raysae.errors import format_validation_error, redact, redact_uri

PASSWORD = f"S3cr3t-{uuid.uuid4().hex}"
API_KEY = f"sk-{uuid.uuid4().hex}"
TOKEN = f"tok-{uuid.uuid4().hex}"
WRONG_TOKEN = f"wrong-{uuid.uuid4().hex}"
SECRETS = {"password": PASSWORD, "api key": API_KEY, "token": TOKEN, "wrong token": WRONG_TOKEN}


def leaks(text: str) -> list[str]:
    """The names of the secrets of which ``text`` shows a piece."""
    return [name for name, s in SECRETS.items() if s[-32:-22] in text or s[-10:] in text]


def closed_uri(password: str = PASSWORD) -> str:
    return f"mongodb://raysae:{password}@127.0.0.1:{free_port()}/?directConnection=true"


def error_text(err: BaseException) -> str:
    """What a traceback of ``err`` shows, its causes included."""
    return "".join(traceback.format_exception(err))


def test_redaction_helpers():
    assert redact_uri(f"at mongodb://u:{PASSWORD}@h:1/db.") == "at mongodb://u:***@h:1/db."
    assert redact_uri(f"'mongodb://u:a@{PASSWORD}@h/'") == "'mongodb://u:***@h/'"  # an unescaped @
    assert redact_uri(f"https://x/v1?api_key={API_KEY}&m=1") == "https://x/v1?api_key=***&m=1"
    assert redact_uri("http://127.0.0.1:8000/llm/v1") == "http://127.0.0.1:8000/llm/v1"
    assert redact(f"Bearer {API_KEY}", API_KEY, None, "") == "Bearer ***"


def test_settings_show_no_secret():
    """repr/str of settings, and their validation errors, even as Serve prints a builder's error."""
    endpoint = {"api_key": API_KEY, "base_url": f"https://u:{PASSWORD}@llm.example/v1"}
    serve = ServeConfig(api_token=TOKEN, store={"uri": closed_uri()}, autointerp={"endpoint": endpoint})
    job = AutointerpConfig(dictionary_id="d", endpoint=endpoint, store={"uri": closed_uri()})
    for text in (repr(serve), str(serve), repr(job), str(job)):
        assert not leaks(text), leaks(text)
    # pydantic shows the start and the end of an input mapping: each secret sits at the end once
    bad = [
        (ServeConfig, {"default_page_size": 500, "api_token": TOKEN}),
        (ServeConfig, {"default_page_size": 500, "store": {"uri": f"mongodb://u:{PASSWORD}@h"}}),
        (ServeConfig, {"api_token": TOKEN, "store": {"uri": closed_uri(), "retries": "x"}}),
        (AutointerpConfig, {"dictionary_id": "d", "features": [], "endpoint": {"api_key": API_KEY}}),
        (AutointerpConfig, {"dictionary_id": "d", "endpoint": {"api_key": API_KEY, "burst": 0}}),
    ]
    for model, data in bad:
        with pytest.raises(ValueError) as info:
            model.model_validate(data)
        shown = str(info.value) + repr(info.value) + format_validation_error(info.value, "f")
        assert not leaks(shown), (model, data, leaks(shown))
    from raysae.serve.app import config_from_args

    with pytest.raises(ConfigError) as info:  # what `serve deploy` shows when a builder fails
        config_from_args({"mongo_uri": closed_uri(), "default_page_size": 500, "api_token": TOKEN})
    assert not leaks(error_text(info.value))


def _store_failure(tmp_path: Path, monkeypatch, capfd, caplog, uri: str) -> str:
    """``raysae autointerp --local`` with MONGO_URI=uri (store asked once, 200 ms): all it showed."""
    from raysae.cli import main

    cfg = {
        "dictionary_id": "d",
        "endpoint": {"base_url": "http://127.0.0.1:9/v1", "api_key": API_KEY},
        "store": {"retries": 1, "retry_backoff_s": 0.01, "server_selection_timeout_ms": 200},
    }
    path = tmp_path / "autointerp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("MONGO_URI", uri)
    monkeypatch.setenv("RAYSAE_HOME", str(tmp_path / "home"))
    try:
        code: object = main(["autointerp", str(path), "--local", "--no-progress"])
    except Exception as err:  # not a user error: the traceback is what the user sees
        code = error_text(err)
    out = capfd.readouterr()
    logs = read_tree(tmp_path / "home") if (tmp_path / "home").exists() else ""
    return f"{code}\n{out.out}\n{out.err}\n{caplog.text}\n{logs}"


@pytest.mark.parametrize("password", [PASSWORD, f"x@{PASSWORD}"], ids=["closed-port", "unescaped-at"])
def test_store_errors_show_no_password(tmp_path, monkeypatch, capfd, caplog, password):
    shown = _store_failure(tmp_path, monkeypatch, capfd, caplog, closed_uri(password))
    assert "raysae:***@127.0.0.1" in shown, shown  # the URI is there, to say where, without the password
    assert not leaks(shown), shown


def test_refused_password_is_not_shown(tmp_path, monkeypatch, capfd, caplog, mongo_uri):
    """A real store refusing the credentials (OperationFailure, not a connection error)."""
    uri = mongo_uri.replace("mongodb://", f"mongodb://raysae-nobody:{PASSWORD}@", 1)
    shown = _store_failure(tmp_path, monkeypatch, capfd, caplog, uri)
    assert "authentication failed" in shown.lower(), shown
    assert not leaks(shown), shown


@pytest.fixture
def authenticated_uri(mongo_uri: str) -> Iterator[str]:
    """``mongo_uri`` with a user whose password is PASSWORD (created on the test server, which does not
    enforce authentication, so other clients are unaffected; dropped after); skipped where it cannot."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    if not mongo_uri.startswith("mongodb://") or "@" in mongo_uri:
        pytest.skip("the test store's URI has credentials of its own")
    user = f"raysae-{uuid.uuid4().hex[:8]}"
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        try:
            client.admin.command("createUser", user, pwd=PASSWORD, roles=["root"])
        except PyMongoError as err:
            pytest.skip(f"cannot create a user on the test store: {err}")
        try:
            yield mongo_uri.replace("mongodb://", f"mongodb://{user}:{PASSWORD}@", 1)
        finally:
            client.admin.command("dropUser", user)


@pytest.mark.slow
def test_autointerp_run_on_ray_shows_no_key_or_password(authenticated_uri, monkeypatch):
    """A whole `raysae autointerp` on Ray: the endpoint answers 401 (echoing the key) and 500s, then
    works. The key reaches the endpoint (so there is something to hide) and nothing else."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "autointerp"))
    from autointerp_data import DICT_ID, fill

    from raysae.store import Store, StoreConfig

    db = f"test_secrets_{uuid.uuid4().hex[:10]}"
    store = Store.connect(StoreConfig(uri=authenticated_uri, db=db))
    fill(store)
    state = FakeState(script=["401", "500", "500", "429"])
    try:
        with FakeServer(state) as fake:
            cfg = {
                "dictionary_id": DICT_ID,
                "ray_workers": 1,
                "endpoint": {"base_url": fake.url, "api_key": API_KEY, "retries": 2, "backoff_s": 0.01},
                "scorer": {"n_activating": 4, "n_non_activating": 4},
                "store": {"db": db, "retries": 1, "retry_backoff_s": 0.1},
            }
            args = ["autointerp", "{tmp}/cfg.yaml", "--no-progress"]
            env, files = {"MONGO_URI": authenticated_uri}, {"cfg.yaml": yaml.safe_dump(cfg)}
            with raysae_command(args, env, files) as c:
                c.proc.wait(timeout=400)
                shown = c.text() + read_tree(c.tmp / "home") + read_tree(c.tmp / "ray")
                assert c.proc.returncode in (0, 1), shown[-3000:]
                assert "features; explained" in shown
                assert "/logs/raylet.out" in shown and "/home/logs/autointerp-" in shown  # all were read
        assert state.auth and set(state.auth) == {f"Bearer {API_KEY}"}, set(state.auth)
        documents = [
            doc for name in store.db.list_collection_names() for doc in store.db[name].find({}, {"_id": 0})
        ]
        assert any(d.get("status") == "failed" and "401" in d.get("error", "") for d in documents)
        stored = json.dumps(documents, default=str)
        assert "bad key Bearer ***" in stored  # the endpoint echoed the key; the stored error hides it
        assert not leaks(shown), leaks(shown)
        assert not leaks(stored), leaks(stored)
    finally:
        store.client.drop_database(db)
        store.close()


@pytest.mark.slow
def test_serve_shows_no_token_or_password():
    """`raysae serve` with the password in MONGO_URI (store down) and a token in RAYSAE_API_TOKEN:
    answers, the command's output and Ray's session logs hold neither, nor a wrong token sent to it."""
    port = free_port()
    env = {"MONGO_URI": closed_uri(), "RAYSAE_API_TOKEN": TOKEN}
    with raysae_command(serve_args(port), env) as command:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(command, f"{url}/health")
        answers = []
        with httpx.Client(base_url=url, timeout=30) as client:
            answers.append(client.get("/health"))
            answers.append(client.get("/api/dictionaries"))
            explain = "/api/features/d/h/0/explain"
            answers.append(client.post(explain, headers={"Authorization": f"Bearer {WRONG_TOKEN}"}))
            answers.append(client.post(explain, headers={"Authorization": f"Bearer {TOKEN}"}))
            graph = {"prompt": "hi", "dictionary_id": "d"}
            answers.append(client.post("/api/graphs", json=graph, headers={"Authorization": WRONG_TOKEN}))
        assert [a.status_code for a in answers] == [503, 503, 401, 503, 401], [a.text for a in answers]
        assert "raysae:***@127.0.0.1" in answers[0].text
        os.kill(command.proc.pid, signal.SIGTERM)
        command.proc.wait(timeout=120)
        shown = "\n".join(a.text for a in answers) + command.text() + read_tree(command.tmp / "ray")
        assert "raysae serve: stopped" in shown
        assert "cannot reach MongoDB at mongodb://raysae:***@127.0.0.1" in command.text()
        assert not leaks(shown), leaks(shown)
