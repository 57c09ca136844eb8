"""Sparse dictionaries in pure torch (no Ray): SAE, transcoder, CLT, CrossCoder."""

from raysae.dictionaries.base import LATENT, DictionaryCompatibilityError, LossOutput, SparseDictionary
from raysae.dictionaries.io import DictionaryFormatError, load_dictionary, save_dictionary
from raysae.dictionaries.registry import architectures, build_dictionary, get_architecture, register

__all__ = [
    "LATENT",
    "DictionaryCompatibilityError",
    "DictionaryFormatError",
    "LossOutput",
    "SparseDictionary",
    "architectures",
    "build_dictionary",
    "get_architecture",
    "load_dictionary",
    "register",
    "save_dictionary",
]
