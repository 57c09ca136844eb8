"""raysae: Ray-native training and analysis of sparse dictionaries on language-model activations."""

from raysae.config import (
    CLTConfig,
    ConfigError,
    CrossCoderConfig,
    InitializerConfig,
    SAEConfig,
    TrainerConfig,
    load_config,
)
from raysae.dictionaries import (
    DictionaryFormatError,
    SparseDictionary,
    build_dictionary,
    load_dictionary,
)

__version__ = "0.1.0"

__all__ = [
    "CLTConfig",
    "ConfigError",
    "CrossCoderConfig",
    "DictionaryFormatError",
    "InitializerConfig",
    "SAEConfig",
    "SparseDictionary",
    "TrainerConfig",
    "__version__",
    "build_dictionary",
    "load_config",
    "load_dictionary",
]
