"""Checkpoints of a distributed run with ``torch.distributed.checkpoint`` (DCP), persisted by Ray Train.

Every rank writes its own shard files into its own local folder (rank 0 adds DCP's ``.metadata`` and
``trainer_state.pt``); each rank then hands its folder to ``ray.train.report``, which merges them into
one checkpoint directory in persistent storage. Loading reads that merged directory on every rank
and re-shards for the current mesh. The final checkpoint also holds ``dictionary/``, the gathered
dictionary in the single-directory format that ``raysae.load_dictionary`` opens without Ray.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from raysae.dictionaries.base import SparseDictionary
from raysae.train.checkpoint import STATE_FILE
from raysae.train.trainer import TrainState

DICTIONARY_DIR = "dictionary"


def save_distributed(
    folder: str | Path, dictionary: SparseDictionary, optimizer: torch.optim.Optimizer, state: TrainState
) -> Path:
    """Write this rank's part of the checkpoint into ``folder`` (a collective: call on every rank)."""
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
    """Restore parameters, optimiser and trainer state from a merged checkpoint folder (every rank)."""
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"{folder}: not a raysae distributed checkpoint (no {STATE_FILE})")
    model_sd, optim_sd = get_state_dict(dictionary, optimizer)
    target = {"model": model_sd, "optim": optim_sd}
    dcp.load(target, checkpoint_id=str(folder))
    set_state_dict(dictionary, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    blob = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    return TrainState.from_blob(blob, dictionary.input_scale.device)


def read_state(folder: str | Path) -> TrainState:
    """The trainer state of a checkpoint folder, without touching parameters (for the driver)."""
    blob = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
    return TrainState.from_blob(blob)
