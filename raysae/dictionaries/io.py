"""Save and load dictionaries as one folder: ``config.json`` + ``model.safetensors``.

A saved dictionary has its activation-norm scales folded into the weights, so it works on raw
activations. Writes go to a temporary folder that is renamed into place: a crash never leaves a
half-written dictionary where a good one was.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from raysae.config import dictionary_config_from_dict, format_validation_error
from raysae.dictionaries.base import SparseDictionary
from raysae.dictionaries.registry import build_dictionary

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = "1"


class DictionaryFormatError(ValueError):
    """A saved dictionary folder is missing, corrupt, or does not match its config."""


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one with two renames."""
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_dictionary(dictionary: SparseDictionary, path: str | Path, fold_scales: bool = True) -> Path:
    """Write ``dictionary`` to folder ``path`` atomically; returns the path."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        model = dictionary
        if fold_scales:
            model = copy.deepcopy(dictionary)
            model.fold_scales_()
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        meta = {"raysae_format": FORMAT_VERSION, "architecture": model.cfg.architecture}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=meta)
        (tmp / CONFIG_FILE).write_text(json.dumps(model.cfg.model_dump(mode="json"), indent=2))
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_dictionary(path: str | Path, device: str | None = None) -> SparseDictionary:
    """Open a folder written by ``save_dictionary`` (in eval mode); errors name the file and the problem."""
    path = Path(path)
    cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise DictionaryFormatError(f"{f}: missing (not a raysae dictionary folder?)")
    try:
        data = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise DictionaryFormatError(f"{cfg_file}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DictionaryFormatError(f"{cfg_file}: expected a JSON object, got {type(data).__name__}")
    if device is not None:
        data["device"] = device
    try:
        cfg = dictionary_config_from_dict(data)
    except ValidationError as err:
        raise DictionaryFormatError(format_validation_error(err, str(cfg_file))) from err
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise DictionaryFormatError(f"{weights_file}: cannot read safetensors: {err}") from err
    model = build_dictionary(cfg)
    expected = model.state_dict()
    problems = [f"missing tensor {k!r}" for k in expected if k not in tensors]
    problems += [f"unexpected tensor {k!r}" for k in tensors if k not in expected]
    problems += [
        f"tensor {k!r} has shape {tuple(tensors[k].shape)}, config implies {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if problems:
        raise DictionaryFormatError(f"{weights_file} does not match {cfg_file}: " + "; ".join(problems))
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)
    return model.eval()
