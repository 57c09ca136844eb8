"""Load a causal LM and its tokenizer from where ``raysae.lm.bundled`` finds its files (the bundled
SmolLM2's plain copy, a local folder, or a hub name).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from raysae.config.data import BUNDLED_MODEL, ModelConfig
from raysae.devices import resolve_device
from raysae.home import raysae_home
from raysae.lm.bundled import GGUF_FILE, bundled_gguf_path, bundled_model_folder, model_source
from raysae.lm.errors import ModelLoadError

if TYPE_CHECKING:  # the model classes cost 1.5 s of CPU to import: the tokenizer-only read task skips them
    from transformers import PreTrainedModel

# Re-exported: callers import these from here and from raysae.lm.
__all__ = [
    "DTYPES",
    "GGUF_FILE",
    "bundled_gguf_path",
    "bundled_model_folder",
    "load_model",
    "load_tokenizer",
    "model_source",
    "raysae_home",
    "resolve_device",
]

# Rust tokenizers' thread pool fights torch's intra-op threads in the same process (forwards measured
# 3-4x slower); raysae tokenises whole batches of documents, so that parallelism buys nothing.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of the model ``cfg`` names, without loading the weights."""
    source = model_source(cfg)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer of {cfg.name!r}: {err}") from err


def load_model(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the model (eval mode, no grad, on ``cfg.device`` in ``cfg.dtype``) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[cfg.dtype]
    source = model_source(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load model {cfg.name!r}: {err}. Use {BUNDLED_MODEL!r} (offline), a local folder, "
            "or a hub name with network access"
        ) from err
    model.to(resolve_device(cfg.device))
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer
