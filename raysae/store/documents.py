"""Turning job output into storable documents: key checks, numpy conversion, the size bound, GridFS spill.

A document over ``max_document_bytes`` moves its largest top-level fields, one at a time, into GridFS
until it fits; each moved field is replaced by ``{"__gridfs__": file_id, "bytes": n}`` and read back
transparently. File ids are deterministic (collection, identity, field), so a retried or repeated
write replaces the file instead of adding one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import bson
import gridfs
from bson.errors import InvalidDocument
from pydantic import TypeAdapter, ValidationError

from raysae.store.errors import DocumentTooLargeError
from raysae.store.models import StoreDoc

SPILL_KEY = "__gridfs__"
Document = dict[str, Any]


_PLAIN = frozenset({int, float, str, bool, type(None)})


def to_storable(value: Any, path: str = "") -> Any:
    """Copy ``value`` into BSON-friendly types (numpy arrays/scalars become lists/Python numbers).

    Keys must be strings without a leading ``$`` or any ``.``, at every depth, so a stored document can
    never be read back as an operator or a dotted path.
    """
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"field names must be strings; {path or 'document'} has {key!r}")
            if key.startswith("$") or "." in key or "\0" in key or key == SPILL_KEY:
                raise ValueError(
                    f"field name {path + key!r} must not start with '$', contain '.' or NUL, or be {SPILL_KEY!r}"
                )
            out[key] = to_storable(item, f"{path}{key}.")
        return out
    if isinstance(value, (list, tuple)):
        if all(type(item) in _PLAIN for item in value):  # fast path: token lists, activations
            return list(value)
        return [to_storable(item, path) for item in value]
    if type(value).__module__ == "numpy":  # ndarray and numpy scalars, without importing numpy
        return value.tolist()
    return value


def encoded_size(doc: Mapping[str, Any]) -> int:
    """Size of ``doc`` in BSON bytes; raises ValueError naming the first unsupported value type."""
    try:
        return len(bson.encode(doc))
    except InvalidDocument as err:
        raise ValueError(f"document cannot be stored as BSON: {err}") from err


def owner_key(collection: str, identity: Mapping[str, Any]) -> str:
    """Unambiguous string naming one document: JSON of the collection and its identity values."""
    return json.dumps([collection, *identity.values()], ensure_ascii=False)


def spill_oversize(
    doc: Document,
    *,
    limit: int,
    fs: gridfs.GridFS | None,
    key: str,
    protected: tuple[str, ...],
    metadata: Mapping[str, Any],
) -> tuple[Document, list[str]]:
    """Return ``doc`` (moving large fields to GridFS if it is over ``limit``) and the GridFS ids it uses."""
    size = encoded_size(doc)
    if size <= limit:
        return doc, []
    if fs is None:
        raise DocumentTooLargeError(
            f"{key}: document is {size:,} BSON bytes, over the {limit:,}-byte limit (MongoDB's maximum is "
            "16 MiB); split it, shrink its arrays, or enable spill_to_gridfs"
        )
    fields = sorted(
        ((encoded_size({"v": v}), k) for k, v in doc.items() if k not in protected),
        reverse=True,
    )
    out = dict(doc)
    planned = []  # plan first, so a document that cannot fit leaves nothing behind in GridFS
    for field_size, field in fields:
        if size <= limit:
            break
        out[field] = {SPILL_KEY: f"{key}/{field}", "bytes": field_size}
        planned.append(field)
        size = encoded_size(out)
    if size > limit:
        raise DocumentTooLargeError(
            f"{key}: document would still be {size:,} BSON bytes with its {len(planned)} largest fields in "
            f"GridFS (limit {limit:,}); it has too many small fields: split it into several documents"
        )
    file_ids = []
    for field in planned:
        file_id = out[field][SPILL_KEY]
        fs.delete(file_id)  # idempotent: a retried write replaces the file
        fs.put(bson.encode({"v": doc[field]}), _id=file_id, metadata={**metadata, "key": key, "field": field})
        file_ids.append(file_id)
    return out, file_ids


def is_spilled(value: Any) -> bool:
    """Whether ``value`` is a GridFS reference left by ``spill_oversize``."""
    return isinstance(value, dict) and set(value) == {SPILL_KEY, "bytes"}


def resolve_spilled(doc: Document | None, fs: gridfs.GridFS) -> Document | None:
    """Replace GridFS references in ``doc`` by the stored values (in place) and return it."""
    if doc is None:
        return None
    for field, value in doc.items():
        if is_spilled(value):
            doc[field] = bson.decode(fs.get(value[SPILL_KEY]).read())["v"]
    return doc


def check_query_fields(model: type[StoreDoc], doc: Mapping[str, Any], where: str) -> None:
    """The fields that queries sort and filter on (``model.QUERY_FIELDS``) must have the model's types,
    strictly (no bool for a number, no string for a number); required ones must be present."""
    for name in model.QUERY_FIELDS:
        info = model.model_fields[name]
        if name not in doc:
            if info.is_required():
                raise ValueError(f"{where}: {name} is missing")
            continue
        try:
            _adapter(model, name).validate_python(doc[name], strict=True)
        except ValidationError:
            value = doc[name]
            raise ValueError(
                f"{where}: {name} must be {_describe(info.annotation)}, got {type(value).__name__}"
            ) from None


@functools.cache
def _adapter(model: type[StoreDoc], name: str) -> TypeAdapter:
    return TypeAdapter(model.model_fields[name].annotation)


def _describe(annotation: Any) -> str:
    text = getattr(annotation, "__name__", str(annotation)).replace("typing.", "")
    return {"float | None": "a number", "float": "a number", "str": "a string"}.get(text, f"of type {text}")
