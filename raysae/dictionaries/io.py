"""Save and load dictionaries as one folder: ``config.json`` + ``model.safetensors``.

A saved dictionary has its activation-norm scales folded into the weights, so it works on raw
activations. Writes go to a temporary folder that is renamed into place: a crash never leaves a
half-written dictionary where a good one was.

``config.json`` holds the dictionary's settings plus a ``checksums`` entry: the sha256 of
``model.safetensors`` and of the settings themselves (as sorted compact JSON, since a file cannot hold
its own hash). Loading verifies both, so flipped bytes that still parse are caught. Folders saved before
checksums existed (no ``checksums`` entry) still load, and a ``device`` key they may hold is dropped:
placement is given to ``load_dictionary``, not stored.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from raysae.config import dictionary_config_from_dict, format_validation_error
from raysae.dictionaries.base import SparseDictionary
from raysae.dictionaries.registry import build_dictionary
from raysae.errors import RaysaeError
from raysae.files import atomic_write_json, replace_dir, sha256_bytes, sha256_file, temp_sibling

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = "1"
CHECKSUMS_KEY = "checksums"
SETTINGS_CHECKSUM = "settings"
# Keys older formats stored in config.json that are no longer settings.
_RETIRED_KEYS = ("device",)


class DictionaryFormatError(RaysaeError, ValueError):
    """A saved dictionary folder is missing, corrupt, or does not match its config."""


def settings_sha256(settings: dict[str, Any]) -> str:
    """The sha256 of a settings dict as sorted compact JSON (independent of the file's layout)."""
    return sha256_bytes(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode())


def save_dictionary(dictionary: SparseDictionary, path: str | Path, fold_scales: bool = True) -> Path:
    """Write ``dictionary`` to folder ``path`` atomically, with checksums; returns the path."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        model = dictionary
        if fold_scales:
            model = copy.deepcopy(dictionary)
            model.fold_scales_()
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        meta = {"raysae_format": FORMAT_VERSION, "architecture": model.cfg.architecture}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=meta)
        settings = model.cfg.model_dump(mode="json")
        checksums = {
            WEIGHTS_FILE: sha256_file(tmp / WEIGHTS_FILE),
            SETTINGS_CHECKSUM: settings_sha256(settings),
        }
        atomic_write_json(tmp / CONFIG_FILE, {**settings, CHECKSUMS_KEY: checksums})
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_dictionary(path: str | Path, device: str | torch.device | None = None) -> SparseDictionary:
    """Open a folder written by ``save_dictionary`` (in eval mode) on ``device`` (None: CPU; "auto": CUDA
    when present); errors name the file and the problem."""
    path = Path(path)
    cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise DictionaryFormatError(f"{f}: missing (not a raysae dictionary folder?)")
    try:
        data = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DictionaryFormatError(f"{cfg_file}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DictionaryFormatError(f"{cfg_file}: expected a JSON object, got {type(data).__name__}")
    checksums = data.pop(CHECKSUMS_KEY, None)
    settings = dict(data)
    for key in _RETIRED_KEYS:
        data.pop(key, None)
    try:
        cfg = dictionary_config_from_dict(data)
    except ValidationError as err:
        raise DictionaryFormatError(format_validation_error(err, str(cfg_file))) from err
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise DictionaryFormatError(f"{weights_file}: cannot read safetensors: {err}") from err
    model = build_dictionary(cfg, device)
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
    if checksums is not None:
        verify_checksums(path, checksums, settings)
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)
    return model.eval()


def verify_checksums(path: Path, checksums: Any, settings: dict[str, Any]) -> None:
    """Raise ``DictionaryFormatError`` naming the file whose bytes differ from what was saved."""
    cfg_file = path / CONFIG_FILE
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise DictionaryFormatError(f"{cfg_file}: {CHECKSUMS_KEY!r} must map names to sha256 hex strings")
    for name, recorded in checksums.items():
        if name == SETTINGS_CHECKSUM:
            target, actual = cfg_file, settings_sha256(settings)
        elif name == WEIGHTS_FILE:
            target = path / WEIGHTS_FILE
            actual = sha256_file(target)
        else:
            raise DictionaryFormatError(f"{cfg_file}: {CHECKSUMS_KEY!r} names an unknown file {name!r}")
        if actual != recorded:
            raise DictionaryFormatError(
                f"{target}: sha256 {actual[:16]}… differs from the {recorded[:16]}… recorded when it was "
                "saved; the file was changed or damaged (save the dictionary again)"
            )
