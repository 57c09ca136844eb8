"""Architectures found by name: each class files itself under its ``architecture`` ClassVar.

Adding an architecture is one module (a ``SparseDictionary`` subclass decorated with ``@register``, its
``architecture`` matching its config's) plus its entry in ``BUILTIN_MODULES``, imported on first look-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

from raysae.config import dictionary_config_from_dict

if TYPE_CHECKING:
    import torch

    from raysae.config import DictionaryConfig
    from raysae.dictionaries.base import SparseDictionary

# The registry entries of the built-in architectures: importing a module runs its @register.
BUILTIN_MODULES = (
    "raysae.dictionaries.sae",
    "raysae.dictionaries.clt",
    "raysae.dictionaries.crosscoder",
)

_REGISTRY: dict[str, type[SparseDictionary]] = {}

_Cls = type["SparseDictionary"]


@overload
def register(cls: _Cls, /) -> _Cls: ...
@overload
def register(*names: str) -> Callable[[_Cls], _Cls]: ...
def register(*args: Any) -> Any:
    """Class decorator: ``@register`` files a class under ``cls.architecture`` and ``cls.aliases``;
    ``@register("name", ...)`` under the names given."""
    if len(args) == 1 and isinstance(args[0], type):
        cls = args[0]
        return _add(cls, (cls.architecture, *cls.aliases))

    def wrap(cls: _Cls) -> _Cls:
        return _add(cls, args)

    return wrap


def _add(cls: _Cls, names: tuple[str, ...]) -> _Cls:
    for name in names:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"architecture {name!r} is already registered to {_REGISTRY[name]}")
    for name in names:
        _REGISTRY[name] = cls
    return cls


def architectures() -> list[str]:
    """Names of every registered architecture."""
    _import_builtin()
    return sorted(_REGISTRY)


def get_architecture(name: str) -> type[SparseDictionary]:
    _import_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def build_dictionary(
    cfg: DictionaryConfig | dict[str, Any], device: str | torch.device | None = None
) -> SparseDictionary:
    """A freshly initialised dictionary for ``cfg`` (a config object or a dict with ``architecture``)
    on ``device`` (None: CPU; "auto": CUDA when present)."""
    if isinstance(cfg, dict):
        cfg = dictionary_config_from_dict(cfg)
    return get_architecture(cfg.architecture)(cfg, device)  # type: ignore[attr-defined,call-arg]


def _import_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
