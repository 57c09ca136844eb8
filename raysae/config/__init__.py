"""Pydantic settings for every part of raysae; one module per part, all re-exported here."""

from raysae.config.analysis import AnalysisConfig
from raysae.config.base import (
    ConfigError,
    StrictModel,
    field_reference,
    format_validation_error,
    load_config,
    read_config_file,
)
from raysae.config.data import (
    ActivationsConfig,
    CacheConfig,
    CacheJobConfig,
    ModelConfig,
    ResourcesConfig,
    TextSourceConfig,
    TokensConfig,
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
from raysae.config.evaluation import EvalConfig
from raysae.config.run import (
    RayTrainConfig,
    TrainCLTSettings,
    TrainCrossCoderSettings,
    TrainSAESettings,
    WandbConfig,
    train_settings_from_dict,
)
from raysae.config.serve import ServeConfig
from raysae.config.store import StoreConfig
from raysae.config.training import InitializerConfig, TrainerConfig

__all__ = [
    "ActFn",
    "ActivationsConfig",
    "AnalysisConfig",
    "AnyDictionaryConfig",
    "CLTConfig",
    "CacheConfig",
    "CacheJobConfig",
    "ConfigError",
    "CrossCoderConfig",
    "DictionaryConfig",
    "EvalConfig",
    "InitializerConfig",
    "ModelConfig",
    "RayTrainConfig",
    "ResourcesConfig",
    "SAEConfig",
    "ServeConfig",
    "StoreConfig",
    "StrictModel",
    "TextSourceConfig",
    "TokensConfig",
    "TrainCLTSettings",
    "TrainCrossCoderSettings",
    "TrainSAESettings",
    "TrainerConfig",
    "WandbConfig",
    "dictionary_config_from_dict",
    "field_reference",
    "format_validation_error",
    "load_config",
    "read_config_file",
    "train_settings_from_dict",
]
