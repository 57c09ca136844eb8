"""Store pieces that need no server: config precedence, input coercion, documents, retries."""

from __future__ import annotations

import numpy as np
import pytest
from pymongo.errors import AutoReconnect, BulkWriteError, NetworkTimeout

from raysae.config.store import StoreConfig
from raysae.store import DocumentTooLargeError, StoreUnavailableError, raysae_home, resolve_db, resolve_uri
from raysae.store import validate as v
from raysae.store.documents import encoded_size, owner_key, spill_oversize, to_storable
from raysae.store.paths import local_store_dir
from raysae.store.retry import redact_uri, with_retries
from raysae.store.server import DEFAULT_URI


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MONGO_URI", raising=False)
    monkeypatch.delenv("MONGO_DB", raising=False)
    monkeypatch.setenv("RAYSAE_HOME", str(tmp_path / "home"))  # no local store runs there


def test_uri_and_db_precedence(clean_env, monkeypatch):
    assert resolve_uri(StoreConfig()) == DEFAULT_URI
    assert resolve_db(StoreConfig()) == "mechinterp"
    monkeypatch.setenv("MONGO_URI", "mongodb://env:1/")
    monkeypatch.setenv("MONGO_DB", "from_env")
    assert resolve_uri(StoreConfig()) == "mongodb://env:1/"
    assert resolve_db(None) == "from_env"
    cfg = StoreConfig(uri="mongodb://cfg:2/", db="from_cfg")
    assert (resolve_uri(cfg), resolve_db(cfg)) == ("mongodb://cfg:2/", "from_cfg")


def test_bad_db_names_rejected(clean_env, monkeypatch):
    for name in ("a.b", "a/b", "$x", "a b", "x" * 64):
        with pytest.raises(ValueError):
            StoreConfig(db=name)
    monkeypatch.setenv("MONGO_DB", "bad.name")
    with pytest.raises(ValueError, match="forbidden"):
        resolve_db(None)


def test_raysae_home(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYSAE_HOME", str(tmp_path))
    assert raysae_home() == tmp_path and local_store_dir() == tmp_path / "store"
    monkeypatch.setenv("RAYSAE_HOME", "")
    assert raysae_home().parts[-2:] == (".cache", "raysae")


@pytest.mark.parametrize("bad", [{"$gt": ""}, ["a"], 3, None, "", "x" * 600, "a\0b"])
def test_ids_must_be_plain_strings(bad):
    with pytest.raises(ValueError):
        v.as_id(bad, "dictionary_id")


@pytest.mark.parametrize("bad", [True, 1.0, "3", -1, {"$gt": 0}, None])
def test_index_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="index"):
        v.as_index(bad)


def test_numbers_coerced():
    assert v.as_index(np.int64(7)) == 7 and type(v.as_index(np.int64(7))) is int
    assert v.as_limit(5, 10) == 5
    for bad in (0, 11, "5"):
        with pytest.raises(ValueError, match="limit"):
            v.as_limit(bad, 10)
    with pytest.raises(ValueError, match="sort_by must be one of"):
        v.as_choice("$natural", "sort_by", ("frequency",))


def test_to_storable_converts_numpy_and_rejects_operator_keys():
    doc = to_storable(
        {"a": np.arange(3, dtype=np.int32), "b": np.float32(0.5), "c": (1, {"d": np.bool_(True)})}
    )
    assert doc == {"a": [0, 1, 2], "b": 0.5, "c": [1, {"d": True}]}
    assert type(doc["b"]) is float
    for bad in (
        {"$set": 1},
        {"a": {"$gt": ""}},
        {"a.b": 1},
        {"x": [{"$where": "1"}]},
        {1: "x"},
        {"a": {"__gridfs__": 1}},
    ):
        with pytest.raises(ValueError, match="field name"):
            to_storable(bad)


def test_unencodable_value_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot be stored as BSON"):
        encoded_size({"x": object()})


def test_oversize_without_gridfs_fails_clearly():
    doc = {"dictionary_id": "d", "big": "x" * 5000}
    key = owner_key("features", {"dictionary_id": "d"})
    assert spill_oversize(doc, limit=10_000, fs=None, key=key, protected=(), metadata={})[0] is doc
    with pytest.raises(DocumentTooLargeError, match=r"over the 4,096-byte limit"):
        spill_oversize(doc, limit=4096, fs=None, key=key, protected=(), metadata={})


def test_redact_uri():
    assert redact_uri("mongodb://u:secret@h:1/db") == "mongodb://u:***@h:1/db"
    assert redact_uri("mongodb+srv://u:p%40ss@cluster/x") == "mongodb+srv://u:***@cluster/x"
    assert redact_uri("mongodb://h:1/") == "mongodb://h:1/"


def test_retries_back_off_then_succeed():
    sleeps: list[float] = []
    calls = iter([AutoReconnect("down"), NetworkTimeout("slow"), None])

    def flaky() -> str:
        err = next(calls)
        if err:
            raise err
        return "ok"

    kw = {"what": "testing", "uri": "mongodb://h:1/", "db": "d", "backoff_s": 0.5, "backoff_max_s": 0.8}
    assert with_retries(flaky, retries=3, sleep=sleeps.append, **kw) == "ok"
    assert sleeps == [0.5, 0.8]  # 0.5 * 2**1 = 1.0 capped at 0.8


def test_retries_are_bounded():
    sleeps: list[float] = []

    def down() -> None:
        raise AutoReconnect("connection refused")

    with pytest.raises(StoreUnavailableError) as info:
        with_retries(
            down, what="pinging", uri="mongodb://u:pw@h:1/", db="d", retries=2, backoff_s=0.1,
            backoff_max_s=1, sleep=sleeps.append,
        )  # fmt: skip
    msg = str(info.value)
    assert "mongodb://u:***@h:1/" in msg and "pw" not in msg
    assert "3 attempt(s)" in msg and "raysae store start" in msg and "while pinging" in msg
    assert sleeps == [0.1, 0.2]


def test_non_duplicate_bulk_errors_are_not_retried():
    calls = []

    def fails() -> None:
        calls.append(1)
        raise BulkWriteError({"writeErrors": [{"code": 121, "errmsg": "validation"}]})

    with pytest.raises(BulkWriteError):
        with_retries(fails, what="w", uri="u", db="d", retries=3, backoff_s=0, backoff_max_s=0)
    assert len(calls) == 1
