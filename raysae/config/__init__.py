"""Pydantic settings for every part of raysae; one module per part, all re-exported here."""

from raysae.config.base import (
    ConfigError,
    StrictModel,
    field_reference,
    format_validation_error,
    load_config,
    read_config_file,
)
from raysae.config.dictionary import (
    ActFn,
    AnyDictionaryConfig,
    CLTConfig,
    CrossCoderConfig,
    DictionaryConfig,
    SAEConfig,
    dictionary_config_from_dict,
)
from raysae.config.training import InitializerConfig, TrainerConfig

__all__ = [
    "ActFn",
    "AnyDictionaryConfig",
    "CLTConfig",
    "ConfigError",
    "CrossCoderConfig",
    "DictionaryConfig",
    "InitializerConfig",
    "SAEConfig",
    "StrictModel",
    "TrainerConfig",
    "dictionary_config_from_dict",
    "field_reference",
    "format_validation_error",
    "load_config",
    "read_config_file",
]
