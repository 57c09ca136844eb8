"""Architectures found by name: ``@register("name")`` on a class, ``build_dictionary(cfg)`` to make one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from raysae.config import dictionary_config_from_dict

if TYPE_CHECKING:
    from raysae.config import DictionaryConfig
    from raysae.dictionaries.base import SparseDictionary

_REGISTRY: dict[str, type[SparseDictionary]] = {}


def register(*names: str) -> Callable[[type[SparseDictionary]], type[SparseDictionary]]:
    """Class decorator: make the architecture available under each of ``names``."""

    def wrap(cls: type[SparseDictionary]) -> type[SparseDictionary]:
        for name in names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ValueError(f"architecture {name!r} is already registered to {_REGISTRY[name]}")
            _REGISTRY[name] = cls
        return cls

    return wrap


def architectures() -> list[str]:
    """Names of every registered architecture."""
    _import_builtin()
    return sorted(_REGISTRY)


def get_architecture(name: str) -> type[SparseDictionary]:
    _import_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def build_dictionary(cfg: DictionaryConfig | dict[str, Any]) -> SparseDictionary:
    """A freshly initialised dictionary for ``cfg`` (a config object or a dict with ``architecture``)."""
    if isinstance(cfg, dict):
        cfg = dictionary_config_from_dict(cfg)
    return get_architecture(cfg.architecture)(cfg)  # type: ignore[attr-defined,call-arg]


def _import_builtin() -> None:
    # Importing the modules runs their @register decorators.
    import raysae.dictionaries.clt
    import raysae.dictionaries.crosscoder
    import raysae.dictionaries.sae  # noqa: F401
