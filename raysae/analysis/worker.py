"""The analysis replica: one language model and one dictionary; token windows in, a ``Partial`` out.

``FeatureAnalyzer`` is the callable class that Ray Data's actor pool runs (``map_batches``); the same
object runs in-process for ``analyze(..., use_ray=False)``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysae.analysis.partial import LatentEntries, Partial, build_partial, histogram_edges
from raysae.config.analysis import AnalysisConfig
from raysae.config.data import ModelConfig
from raysae.data.tokens import WindowBatch
from raysae.dictionaries import SparseDictionary, load_dictionary
from raysae.errors import RaysaeError
from raysae.lm.model import LanguageModel


class AnalysisError(RaysaeError, ValueError):
    """The analysis settings do not fit the dictionary (e.g. its hooks in the activation settings)."""


@dataclass(frozen=True)
class PartialSettings:
    """What a replica needs to know about the analysis (plain values: shipped to every actor)."""

    forward_batch: int
    top_k: int
    samples: int
    seed: int
    bins: int
    hist_min: float
    hist_max: float
    dictionary_device: str

    @classmethod
    def of(cls, cfg: AnalysisConfig) -> PartialSettings:
        return cls(
            forward_batch=cfg.activations.batch_windows,
            top_k=cfg.top_k_examples,
            samples=cfg.samples_per_feature,
            seed=cfg.sample_seed,
            bins=cfg.histogram_bins,
            hist_min=cfg.histogram_min,
            hist_max=cfg.histogram_max,
            dictionary_device=cfg.dictionary_device,
        )


@dataclass(frozen=True)
class ShippedFiles:
    """The files of a saved dictionary folder held in Ray's object store, so every node can read them
    (a reference, not the bytes: the actor's constructor arguments stay small)."""

    ref: Any  # ray.ObjectRef of {file name: bytes}

    def get(self) -> dict[str, bytes]:
        import ray

        return ray.get(self.ref)


class FeatureAnalyzer:
    """Callable for ``Dataset.map_batches``: window batches → ``{"partial": [bytes]}`` (one row)."""

    def __init__(
        self,
        model: ModelConfig,
        settings: PartialSettings,
        dictionary: SparseDictionary | None = None,
        dictionary_files: ShippedFiles | dict[str, bytes] | None = None,
        num_threads: int | None = None,
        lm: LanguageModel | None = None,
    ):
        """``dictionary`` (in-process), or ``dictionary_files`` ({file name: bytes} of a saved dictionary
        folder, shipped with the actor so that no node needs the driver's file system)."""
        if num_threads is not None and model.num_threads is None:
            torch.set_num_threads(num_threads)
        self.lm = lm if lm is not None else LanguageModel.from_config(model)
        device = str(self.lm.device) if settings.dictionary_device == "auto" else settings.dictionary_device
        if dictionary is None:
            if dictionary_files is None:
                raise AnalysisError("FeatureAnalyzer needs a dictionary or dictionary_files")
            if isinstance(dictionary_files, ShippedFiles):
                dictionary_files = dictionary_files.get()
            with tempfile.TemporaryDirectory(prefix="raysae-dictionary-") as tmp:
                for name, data in dictionary_files.items():
                    (Path(tmp) / name).write_bytes(data)
                dictionary = load_dictionary(tmp, device=device)
        self.dictionary = dictionary.to(device).eval()
        check_compatible(self.lm, self.dictionary)
        self.settings = settings
        self.edges = histogram_edges(settings.bins, settings.hist_min, settings.hist_max)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blob = self.analyze(WindowBatch.from_dict(batch)).to_bytes()
        out = np.empty(1, dtype=object)
        out[0] = blob
        return {"partial": out}

    def analyze(self, windows: WindowBatch) -> Partial:
        """Run the model and the dictionary over ``windows`` (in forward batches) and reduce them."""
        s = self.settings
        entries = LatentEntries()
        model_s = dict_s = reduce_s = 0.0
        hooks = self.dictionary.hooks_in
        for lo in range(0, len(windows), s.forward_batch):
            sl = slice(lo, lo + s.forward_batch)
            tokens, keep = windows.tokens[sl], np.asarray(windows.keep[sl], dtype=bool)
            t0 = time.perf_counter()
            acts = self.lm.run_with_hooks(torch.from_numpy(np.ascontiguousarray(tokens)), hooks)
            _sync(self.lm.device)
            t1 = time.perf_counter()
            flat_keep = torch.from_numpy(keep.reshape(-1))
            rows = {h: a.reshape(-1, a.shape[-1])[flat_keep.to(a.device)] for h, a in acts.items()}
            z = self.dictionary.encode_flat(rows)
            _sync(z.device)
            t2 = time.perf_counter()
            w_idx, t_idx = np.nonzero(keep)  # row order of a boolean mask over [n, T]
            entries.add(z, windows.window_ids[sl][w_idx].astype(np.int64), t_idx.astype(np.int64), self.edges)
            model_s += t1 - t0
            dict_s += t2 - t1
            reduce_s += time.perf_counter() - t2
        t3 = time.perf_counter()
        n_tokens = int(np.asarray(windows.keep, dtype=bool).sum())
        partial = build_partial(
            entries, windows, n_tokens, self.dictionary.n_features, s.top_k, s.samples, s.seed
        )
        reduce_s += time.perf_counter() - t3
        partial.timings = {"model_s": model_s, "dictionary_s": dict_s, "reduce_s": reduce_s}
        return partial


def check_compatible(lm: LanguageModel, dictionary: SparseDictionary) -> None:
    """``DictionaryCompatibilityError`` unless ``lm`` has the dictionary's hooks and width (the
    dictionary's own check, the one serving uses too)."""
    dictionary.check_model_compatible(lm.name, lm.d_model, lm.n_layers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
