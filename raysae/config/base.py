"""Base of all raysae settings and the loader for YAML, TOML and JSON files.

Every field carries a docstring (``use_attribute_docstrings``), which becomes its description in the
JSON schema and in the README's config reference. Unknown keys are errors, so a typo never passes.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from raysae.errors import RaysaeError, format_validation_error, redact_uri

__all__ = ["ConfigError", "StrictModel", "format_validation_error", "load_config", "read_config_file"]


class StrictModel(BaseModel):
    """Base for all raysae settings: unknown keys are errors; field docstrings become descriptions.
    A validation error's text leaves out the input (``hide_input_in_errors``): settings carry API keys,
    tokens and MONGO_URI passwords, and pydantic would print the whole offending mapping."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, hide_input_in_errors=True
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr() and str() show URIs without their password (store.uri, an endpoint's base_url): a
        config may be logged or printed. Secret fields are SecretStr, which shows ``**********``."""
        for name, value in super().__repr_args__():
            yield name, redact_uri(value) if isinstance(value, str) else value


class ConfigError(RaysaeError, ValueError):
    """A configuration file could not be read or did not validate; the message names file and field."""


M = TypeVar("M", bound=BaseModel)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON file into a dict, with an error naming the file on failure."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format {path.suffix!r} (use .yaml, .toml or .json)")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot parse: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path, model: type[M]) -> M:
    """Load ``path`` (YAML/TOML/JSON) into ``model``; errors name the file and the field."""
    data = read_config_file(path)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from err


def field_reference(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) rows for every field, recursing into nested settings."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(field_reference(ann, f"{prefix}{name}."))
            continue
        default = "" if field.is_required() else repr(field.get_default(call_default_factory=True))
        type_name = getattr(ann, "__name__", str(ann)).replace("typing.", "")
        rows.append((prefix + name, type_name, default, (field.description or "").replace("\n", " ")))
    return rows
