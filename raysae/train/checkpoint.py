"""Checkpoints of a training run: the ``Checkpointer`` protocol that ``Trainer.fit`` writes through, and
its two formats.

- Single process (``LocalCheckpointer``): a folder with ``dictionary/`` (``config.json`` +
  ``model.safetensors`` with the training scales still separate, so training resumes bit-exactly;
  ``raysae.load_dictionary`` opens it too) and ``trainer_state.pt`` (state, optimiser, RNG), written
  under a temporary name and renamed into place.
- Distributed (``save_distributed``/``load_distributed``): ``torch.distributed.checkpoint`` (DCP).
  Every rank writes its own shard files into its own folder (rank 0 adds DCP's ``.metadata`` and
  ``trainer_state.pt``); Ray Train merges the folders into one checkpoint (see
  ``raysae.train.ray_train.RayTrainCheckpointer``). Loading re-shards for the current mesh. The final
  checkpoint also holds ``dictionary/``, the gathered dictionary in the single-directory format.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from raysae.dictionaries.base import SparseDictionary
from raysae.dictionaries.io import DictionaryFormatError, load_dictionary, save_dictionary
from raysae.errors import RaysaeError
from raysae.files import replace_dir, temp_sibling
from raysae.train.state import TrainState

STATE_FILE = "trainer_state.pt"
DICTIONARY_DIR = "dictionary"


class CheckpointError(RaysaeError, ValueError):
    """A checkpoint that is missing, unreadable or from a different run; the message names it."""


class Checkpointer(Protocol):
    """Where ``Trainer.fit`` resumes from and saves to.

    ``resuming`` is read before any data is drawn (a resumed run skips data-dependent
    initialisation); ``restore`` then loads parameters and optimiser in place. ``save`` gets the
    latest metrics too, so a checkpointer that reports (Ray Train) sends both in one call.
    """

    @property
    def resuming(self) -> bool: ...

    def restore(self, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer) -> TrainState: ...

    def save(
        self,
        dictionary: SparseDictionary,
        optimizer: torch.optim.Optimizer,
        state: TrainState,
        metrics: dict[str, float],
        *,
        final: bool,
    ) -> None: ...


class LocalCheckpointer:
    """Single-process checkpoints under ``folder`` (``step_00000100/``, ``final/``); resumes from
    ``resume_from`` when given. Either may be None (no saving / a fresh run)."""

    def __init__(self, folder: str | Path | None = None, resume_from: str | Path | None = None):
        self.folder = Path(folder) if folder else None
        self.resume_from = Path(resume_from) if resume_from else None

    @property
    def resuming(self) -> bool:
        return self.resume_from is not None

    def restore(self, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer) -> TrainState:
        assert self.resume_from is not None, "restore() is only called when resuming"
        return load_trainer_checkpoint(self.resume_from, dictionary, optimizer)

    def save(self, dictionary, optimizer, state, metrics, *, final: bool) -> None:
        if self.folder is not None:
            name = "final" if final else f"step_{state.step:08d}"
            save_trainer_checkpoint(self.folder / name, dictionary, optimizer, state)


def save_trainer_checkpoint(
    path: str | Path, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer, state: TrainState
) -> Path:
    """Write a resumable single-process checkpoint folder at ``path`` atomically."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        save_dictionary(dictionary, tmp / DICTIONARY_DIR, fold_scales=False)
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
    path = Path(path)
    _check_folder(path)
    device = dictionary.input_scale.device
    try:
        saved = load_dictionary(path / DICTIONARY_DIR, device=str(device))
    except (DictionaryFormatError, FileNotFoundError) as err:
        raise CheckpointError(f"{path}: the checkpoint's dictionary does not open: {err}") from err
    if saved.cfg != dictionary.cfg:
        raise CheckpointError(f"{path}: checkpoint was trained with a different dictionary config")
    with torch.no_grad():
        dictionary.load_state_dict(saved.state_dict())
    blob = _load_blob(path, device)
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["rng"].cpu())
    return TrainState.from_blob(blob, device)


def save_distributed(
    folder: str | Path, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer, state: TrainState
) -> Path:
    """Write this rank's part of a DCP checkpoint into ``folder`` (a collective: call on every rank)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_sd, optim_sd = get_state_dict(dictionary, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(state.to_blob(), folder / STATE_FILE)
    return folder


def load_distributed(
    folder: str | Path, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer
) -> TrainState:
    """Restore parameters, optimiser and trainer state from a merged DCP folder (every rank)."""
    folder = Path(folder)
    _check_folder(folder)
    model_sd, optim_sd = get_state_dict(dictionary, optimizer)
    target = {"model": model_sd, "optim": optim_sd}
    dcp.load(target, checkpoint_id=str(folder))
    set_state_dict(dictionary, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    return TrainState.from_blob(_load_blob(folder, "cpu"), dictionary.input_scale.device)


def read_state(folder: str | Path) -> TrainState:
    """The trainer state of a checkpoint folder, without touching parameters (for the driver)."""
    folder = Path(folder)
    _check_folder(folder)
    return TrainState.from_blob(_load_blob(folder, "cpu"))


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{folder}: not a raysae checkpoint (no {STATE_FILE})")


def _load_blob(folder: Path, device: torch.device | str) -> dict:
    try:
        return torch.load(folder / STATE_FILE, map_location=device, weights_only=False)
    except Exception as err:  # a truncated or foreign file: torch raises many kinds
        raise CheckpointError(f"{folder / STATE_FILE}: unreadable trainer state ({err})") from err
