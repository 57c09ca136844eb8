"""Single-process trainer checkpoints: the unfolded dictionary + optimiser and trainer state.

A checkpoint folder holds ``dictionary/`` (``config.json`` + ``model.safetensors`` with the training
scales still separate, so training resumes bit-exactly; ``raysae.load_dictionary`` opens it too) and
``trainer_state.pt``. The folder is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from raysae.dictionaries.base import SparseDictionary
from raysae.dictionaries.io import load_dictionary, replace_dir, save_dictionary

if TYPE_CHECKING:
    from raysae.train.trainer import TrainState

STATE_FILE = "trainer_state.pt"


def save_trainer_checkpoint(
    path: str | Path, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer, state: TrainState
) -> Path:
    """Write a resumable checkpoint folder at ``path`` atomically."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        save_dictionary(dictionary, tmp / "dictionary", fold_scales=False)
        torch.save(
            {**state.to_blob(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()},
            tmp / STATE_FILE,
        )
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_trainer_checkpoint(
    path: str | Path, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer
) -> TrainState:
    """Restore ``dictionary`` and ``optimizer`` in place from ``path``; returns the trainer state."""
    from raysae.train.trainer import TrainState

    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a trainer checkpoint (no {STATE_FILE})")
    saved = load_dictionary(path / "dictionary", device=str(dictionary.input_scale.device))
    if saved.cfg != dictionary.cfg.model_copy(update={"device": saved.cfg.device}):
        raise ValueError(f"{path}: checkpoint was trained with a different dictionary config")
    with torch.no_grad():
        dictionary.load_state_dict(saved.state_dict())
    blob = torch.load(path / STATE_FILE, map_location=dictionary.input_scale.device, weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["rng"].cpu())
    return TrainState.from_blob(blob, dictionary.input_scale.device)
