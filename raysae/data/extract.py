"""Token windows to activation rows, in-process: the code each Ray replica runs, and a plain loop.

A row is one kept token: a column per hook ([d_model] each) plus token_id, doc_id, position and
window_id. ``ActivationSource`` runs the same code in the calling process, for small runs, tests and
analysis (its ``windows()`` keeps the [n, T, d] layout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from raysae.config.data import ActivationsConfig, ModelConfig
from raysae.data.batching import META_COLUMNS, rebatch
from raysae.data.tokens import WindowBatch, token_windows
from raysae.lm.loader import DTYPES
from raysae.lm.model import LanguageModel

__all__ = ["META_COLUMNS", "ActivationExtractor", "ActivationSource", "WindowActivations", "activation_rows"]
log = logging.getLogger(__name__)
FORWARD_SECONDS_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]


def activation_rows(
    batch: WindowBatch, acts: dict[str, Tensor], out_dtype: torch.dtype | None = None
) -> dict[str, np.ndarray]:
    """Flatten the kept tokens of a window batch into columns (hooks [N, d], metadata [N])."""
    keep = batch.keep.reshape(-1)
    n, t = batch.tokens.shape
    rows = {
        "token_id": batch.tokens.reshape(-1)[keep],
        "doc_id": batch.doc_ids.reshape(-1)[keep],
        "position": batch.positions.reshape(-1)[keep],
        "window_id": np.repeat(batch.window_ids, t)[keep],
    }
    keep_t = torch.from_numpy(keep)
    for hook, a in acts.items():
        flat = a.reshape(n * t, a.shape[-1])[keep_t.to(a.device)]
        if out_dtype is not None:
            flat = flat.to(out_dtype)
        rows[hook] = _to_numpy(flat)
    return rows


def _to_numpy(t: Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: keep the bits in a float32 (exact)
        t = t.float()
    return t.numpy()


class ActivationExtractor:
    """Callable for ``Dataset.map_batches``: holds one model replica, maps window batches to rows.

    A call may carry several forward batches of ``forward_windows`` windows (default: all in one
    forward): a Ray task costs ~14 ms besides its work, a tenth of a 1,024-token forward on 2 CPU cores,
    so the pipeline hands each replica a few forward batches per task.
    """

    def __init__(
        self,
        model: ModelConfig,
        hooks: list[str],
        num_threads: int | None = None,
        forward_windows: int | None = None,
    ):
        if num_threads is not None and model.num_threads is None:
            torch.set_num_threads(num_threads)
        self.lm = LanguageModel.from_config(model)
        self.lm.check_hooks(hooks)
        self.hooks = list(hooks)
        self.forward_windows = forward_windows
        self.metrics = ReplicaMetrics(model.name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        windows = WindowBatch.from_dict(batch)
        parts = []
        for chunk in windows.chunks(self.forward_windows or len(windows)):
            start = time.perf_counter()
            acts = self.lm.run_with_hooks(torch.from_numpy(np.ascontiguousarray(chunk.tokens)), self.hooks)
            seconds = time.perf_counter() - start
            parts.append(activation_rows(chunk, acts))
            self.metrics.record(len(parts[-1]["token_id"]), len(chunk), seconds)
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class ReplicaMetrics:
    """A model replica's Ray metrics, exported as ``ray_raysae_activations_*`` (the activation pipeline
    board, dashboards/raysae_activations.json): kept tokens and windows (counters) and forward-pass
    seconds (histogram), tagged with the model. Recorded only when connected to Ray (the pipeline's
    actors are); recording never raises, since a metric is no reason to fail a batch."""

    def __init__(self, model: str):
        self.tags = {"model": model}
        self.tokens: Any = None
        self.windows: Any = None
        self.forward_seconds: Any = None
        try:
            import ray

            if not ray.is_initialized():
                return
            from ray.util.metrics import Counter, Histogram

            keys = ("model",)
            self.tokens = Counter("raysae_activations_tokens", "Kept tokens (activation rows)", keys)
            self.windows = Counter("raysae_activations_windows", "Token windows run through the model", keys)
            self.forward_seconds = Histogram(
                "raysae_activations_forward_seconds",
                "Seconds of one forward pass over a window batch",
                FORWARD_SECONDS_BOUNDARIES,
                keys,
            )
        except Exception as err:
            log.debug("activation metrics unavailable: %s", err)
            self.tokens = None

    def record(self, tokens: int, windows: int, seconds: float) -> None:
        if self.tokens is None:
            return
        try:
            self.tokens.inc(tokens, tags=self.tags)
            self.windows.inc(windows, tags=self.tags)
            self.forward_seconds.observe(seconds, tags=self.tags)
        except Exception as err:
            log.debug("activation metrics not recorded: %s", err)


@dataclass
class WindowActivations:
    """A forward batch: the windows and their activations {hook: [n, T, d]} (every position, kept or not)."""

    windows: WindowBatch
    acts: dict[str, Tensor]


class ActivationSource:
    """Activations computed in this process from ``cfg`` (no Ray): windows, rows or training batches."""

    def __init__(self, cfg: ActivationsConfig, lm: LanguageModel | None = None):
        self.cfg = cfg
        self.lm = lm if lm is not None else LanguageModel.from_config(cfg.model)
        self.lm.check_hooks(cfg.hooks)

    def token_windows(self, skip_windows: int = 0) -> Iterator[WindowBatch]:
        """The token windows of ``cfg`` (same stream as the Ray pipeline)."""
        return token_windows(
            self.cfg.text,
            self.cfg.tokens,
            self.lm.tokenizer,
            self.cfg.batch_windows,
            total_tokens=self.cfg.total_tokens,
            skip_windows=skip_windows,
            pad_token_id=self.lm.pad_token_id,
        )

    def windows(self, skip_windows: int = 0) -> Iterator[WindowActivations]:
        """One item per forward pass: windows and activations of every position."""
        for wb in self.token_windows(skip_windows):
            acts = self.lm.run_with_hooks(torch.from_numpy(wb.tokens), self.cfg.hooks)
            yield WindowActivations(wb, acts)

    def rows(self, out_dtype: str | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Activation rows of the kept tokens, one chunk per forward pass."""
        dtype = DTYPES[out_dtype] if out_dtype else None
        for item in self.windows():
            yield activation_rows(item.windows, item.acts, dtype)

    def batches(
        self, batch_size: int, drop_last: bool = False, meta: bool = False, device: str | None = None
    ) -> Iterator[dict[str, Tensor]]:
        """Training batches {hook: [batch_size, d]} (plus metadata columns when ``meta``)."""
        return rebatch(self.rows(), batch_size, self.cfg.hooks, drop_last=drop_last, meta=meta, device=device)
