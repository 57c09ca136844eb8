"""raysae: Ray-native training and analysis of sparse dictionaries on language-model activations.

The public names below are imported from their modules on first use (``raysae._lazy``), so ``import
raysae`` and the light CLI commands (``--help``, ``config-docs``) do not pull in torch, transformers or
Ray.
"""

from raysae._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "CLTConfig": "raysae.config",
    "ConfigError": "raysae.config",
    "CrossCoderConfig": "raysae.config",
    "InitializerConfig": "raysae.config",
    "SAEConfig": "raysae.config",
    "TrainerConfig": "raysae.config",
    "load_config": "raysae.config",
    "TrainCLTSettings": "raysae.config.run",
    "TrainCrossCoderSettings": "raysae.config.run",
    "TrainSAESettings": "raysae.config.run",
    "DictionaryFormatError": "raysae.dictionaries",
    "SparseDictionary": "raysae.dictionaries",
    "build_dictionary": "raysae.dictionaries",
    "load_dictionary": "raysae.dictionaries",
    "RaysaeError": "raysae.errors",
    "train_clt": "raysae.train.ray_train",
    "train_crosscoder": "raysae.train.ray_train",
    "train_sae": "raysae.train.ray_train",
    "Trainer": "raysae.train.trainer",
}

__getattr__, _names = lazy_exports(__name__, _EXPORTS)
__all__ = [*_names, "__version__"]


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
