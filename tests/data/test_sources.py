"""Text sources: the bundled Shakespeare, text files and folders, JSONL, Parquet, a saved HF dataset."""

from __future__ import annotations

import json
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from raysae.config.data import TextSourceConfig
from raysae.data.sources import TextSourceError, iter_documents


def docs(**kw) -> list[str]:
    return list(iter_documents(TextSourceConfig(**kw)))


def test_shakespeare_scenes():
    scenes = list(iter_documents(TextSourceConfig()))
    assert 500 < len(scenes) < 1500
    assert sum(len(s) for s in scenes) > 4_000_000
    first = scenes[0]
    assert first.startswith("# A Midsummer Night's Dream\n## ACT I\n### SCENE I.")
    assert "Now, fair Hippolyta, our nuptial hour" in first
    assert all(s.count("### SCENE") == 1 for s in islice(scenes, 50))
    assert docs(max_documents=3) == scenes[:3]


def test_text_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third")
    assert docs(kind="text", path=str(tmp_path / "a.txt")) == ["first"]
    assert docs(kind="text", path=str(tmp_path)) == ["first", "second", "third"]
    assert docs(kind="text", path=str(tmp_path), glob="*.txt") == ["first", "second"]


def test_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"doc {i}", "id": i}) for i in range(4)) + "\n\n")
    assert docs(kind="jsonl", path=str(path), field="body") == [f"doc {i}" for i in range(4)]
    with pytest.raises(TextSourceError, match=r"d\.jsonl:1: no field 'text'"):
        docs(kind="jsonl", path=str(path))
    path.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(TextSourceError, match=r"d\.jsonl:2: invalid JSON"):
        docs(kind="jsonl", path=str(path))


def test_parquet(tmp_path):
    pq.write_table(pa.table({"content": ["x y", None, "z"], "n": [1, 2, 3]}), tmp_path / "p.parquet")
    assert docs(kind="parquet", path=str(tmp_path), field="content") == ["x y", "z"]
    with pytest.raises(TextSourceError, match="no column 'text'"):
        docs(kind="parquet", path=str(tmp_path / "p.parquet"))


def test_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["alpha", "beta", "gamma"]})
    ds.save_to_disk(str(tmp_path / "flat"))
    assert docs(kind="hf_dataset", path=str(tmp_path / "flat")) == ["alpha", "beta", "gamma"]
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    assert docs(kind="hf_dataset", path=str(tmp_path / "dict"), hf_split="test") == ["alpha"]
    with pytest.raises(TextSourceError, match="set hf_split"):
        docs(kind="hf_dataset", path=str(tmp_path / "dict"))


def test_source_errors(tmp_path):
    with pytest.raises(TextSourceError, match="no such file or folder"):
        docs(kind="text", path=str(tmp_path / "missing"))
    with pytest.raises(TextSourceError, match="no files match"):
        docs(kind="jsonl", path=str(tmp_path))
    with pytest.raises(ValidationError, match="needs a path"):
        TextSourceConfig(kind="jsonl")
    with pytest.raises(ValidationError, match="bundled"):
        TextSourceConfig(path="x")
