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
from raysae.config.run import TrainCLTSettings, TrainCrossCoderSettings, TrainSAESettings
from raysae.dictionaries import (
    DictionaryFormatError,
    SparseDictionary,
    build_dictionary,
    load_dictionary,
)
from raysae.train.ray_train import train_clt, train_crosscoder, train_sae
from raysae.train.trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "CLTConfig",
    "ConfigError",
    "CrossCoderConfig",
    "DictionaryFormatError",
    "InitializerConfig",
    "SAEConfig",
    "SparseDictionary",
    "TrainCLTSettings",
    "TrainCrossCoderSettings",
    "TrainSAESettings",
    "Trainer",
    "TrainerConfig",
    "__version__",
    "build_dictionary",
    "load_config",
    "load_dictionary",
    "train_clt",
    "train_crosscoder",
    "train_sae",
]
