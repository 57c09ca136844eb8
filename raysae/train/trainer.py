"""The training step and loop for one process: ``Trainer(cfg).fit(dictionary, batches)``.

The same ``Trainer.step`` runs inside every Ray Train worker; there the dictionary's parameters are
DTensors (``raysae.train.sharding.distribute_dictionary``), each rank passes its own rows, and the
step uses the sharded loss, reduces gradients over the data dim and reads metrics as global values.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from raysae.config import TrainerConfig
from raysae.dictionaries.base import Batch, LossOutput, SparseDictionary
from raysae.dictionaries.init import initialize_from_data
from raysae.train.checkpoint import load_trainer_checkpoint, save_trainer_checkpoint
from raysae.train.metrics_sinks import MetricsSink
from raysae.train.schedules import TrainingSchedules
from raysae.train.sharding import (
    clip_grad_norm_,
    compute_sharded_loss,
    is_distributed,
    reduce_gradients_,
    to_full,
)


@dataclass
class TrainState:
    """What, besides parameters and optimiser, a resumed run must restore."""

    step: int = 0
    tokens_seen: int = 0
    tokens_since_fired: Tensor | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def to_blob(self) -> dict[str, Any]:
        """Plain, CPU-only contents for ``torch.save``."""
        tsf = self.tokens_since_fired
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "tokens_since_fired": tsf.cpu() if tsf is not None else None,
            "history": self.history,
        }

    @classmethod
    def from_blob(cls, blob: dict[str, Any], device: torch.device | str = "cpu") -> TrainState:
        """The inverse of ``to_blob`` (extra keys, such as an optimiser state, are ignored)."""
        tsf = blob["tokens_since_fired"]
        return cls(
            blob["step"], blob["tokens_seen"], tsf.to(device) if tsf is not None else None, blob["history"]
        )


class Trainer:
    """Adam with lr warmup/decay, sparsity warmup, k annealing, clipping and decoder-norm handling."""

    def __init__(
        self,
        cfg: TrainerConfig,
        sinks: Sequence[MetricsSink] = (),
        progress: bool = True,
    ):
        self.cfg = cfg
        self.sinks = list(sinks)
        self.progress = progress
        self.dictionary: SparseDictionary | None = None
        self.optimizer: torch.optim.Adam | None = None
        self.state = TrainState()
        self._window_fired: Tensor | None = None
        self._window_tokens = 0
        self._data_wait = 0.0
        self._window_start = time.perf_counter()

    # ---- set-up ---------------------------------------------------------------------------------
    def setup(self, dictionary: SparseDictionary) -> None:
        """Bind the dictionary and create optimiser, schedules and dead-latent counters."""
        self.dictionary = dictionary
        self.optimizer = torch.optim.Adam(
            dictionary.parameters(), lr=self.cfg.lr, betas=self.cfg.betas, eps=self.cfg.adam_eps
        )
        cfg = dictionary.cfg
        top_k = cfg.top_k if cfg.act_fn in ("topk", "batchtopk") else None
        self.schedules = TrainingSchedules.from_config(
            self.cfg, cfg.sparsity_coefficient, top_k, dictionary.d_sae
        )
        device = dictionary.input_scale.device
        self.state = TrainState(
            tokens_since_fired=torch.zeros(dictionary.latent_shape, dtype=torch.long, device=device)
        )
        self._window_fired = torch.zeros(dictionary.latent_shape, dtype=torch.long, device=device)

    def initialize(self, batches: Sequence[Batch]) -> None:
        """Data-dependent initialisation (norm scaling, decoder norm, b_dec) from the first batches."""
        assert self.dictionary is not None, "call setup() first"
        initialize_from_data(self.dictionary, batches, self.cfg.initializer)
        if self.cfg.decoder_norm_mode != "free":
            self.dictionary.set_decoder_norm_(1.0)
            if self.cfg.initializer.encoder_as_decoder_transpose:
                self.dictionary.tie_encoder_to_decoder_()

    # ---- one step -------------------------------------------------------------------------------
    def step(self, batch: Batch) -> LossOutput:
        """One optimiser step on ``batch``; returns the loss output (before the update)."""
        assert self.dictionary is not None and self.optimizer is not None, "call setup() first"
        d, st, cfg = self.dictionary, self.state, self.cfg
        d.train()
        lr = self.schedules.lr(st.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.schedules.k is not None:
            d.activation.k = round(self.schedules.k(st.step))  # type: ignore[union-attr]
        assert st.tokens_since_fired is not None
        dead_mask = st.tokens_since_fired >= cfg.dead_after_tokens
        sharded = is_distributed(d)
        loss_fn = partial(compute_sharded_loss, d) if sharded else d.compute_loss
        out = loss_fn(
            batch,
            sparsity_coefficient=self.schedules.sparsity(st.step),
            dead_mask=dead_mask,
            aux_k=cfg.aux_k,
            aux_k_coefficient=cfg.aux_k_coefficient,
        )
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if sharded:
            reduce_gradients_(d)
        if cfg.decoder_norm_mode == "unit_project_grad":
            d.project_decoder_grad_()
        if cfg.grad_clip_norm is not None:
            out.parts["grad_norm"] = torch.tensor(clip_grad_norm_(d, cfg.grad_clip_norm))
        self.optimizer.step()
        if cfg.decoder_norm_mode != "free":
            d.set_decoder_norm_(1.0)
        self._track_firing(out.feature_acts)
        st.step += 1
        return out

    @torch.no_grad()
    def _track_firing(self, z: Tensor | None) -> None:
        """Update tokens-since-fired from the global batch (every rank's rows, every latent)."""
        assert z is not None and self.state.tokens_since_fired is not None and self._window_fired is not None
        fired_count = to_full((z != 0).long().sum(0)).to(self.state.tokens_since_fired.device)
        n_tokens = int(z.shape[0])  # a DTensor reports its global row count
        tsf = self.state.tokens_since_fired
        tsf.add_(n_tokens).masked_fill_(fired_count > 0, 0)
        self._window_fired += fired_count
        self._window_tokens += n_tokens
        self.state.tokens_seen += n_tokens

    def add_data_wait(self, seconds: float) -> None:
        """Account time spent waiting for the next batch (reported as perf/data_wait_fraction)."""
        self._data_wait += seconds

    # ---- metrics --------------------------------------------------------------------------------
    @torch.no_grad()
    def metrics(self, out: LossOutput) -> dict[str, float]:
        """Metrics of the last batch plus window statistics since the previous report."""
        from raysae import metrics as M

        st = self.state
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)  # since the last report: reporting time included
        assert out.label is not None and out.reconstruction is not None and out.feature_acts is not None
        assert st.tokens_since_fired is not None and self._window_fired is not None
        label, recon, z = (to_full(t.detach()) for t in (out.label, out.reconstruction, out.feature_acts))
        m: dict[str, float] = {f"loss/{k}": float(to_full(v)) for k, v in out.parts.items()}
        m["loss/total"] = float(to_full(out.loss.detach()))
        m["metrics/mse"] = float(M.mse(label, recon))
        m["metrics/explained_variance"] = float(M.explained_variance(label, recon))
        m["metrics/l0"] = float(M.l0(z).mean())
        m["metrics/dead_fraction"] = float(
            (st.tokens_since_fired >= self.cfg.dead_after_tokens).double().mean()
        )
        m["metrics/dense_fraction"] = M.dense_fraction(
            self._window_fired, self._window_tokens, self.cfg.dense_threshold
        )
        m["schedule/lr"] = self.schedules.lr(st.step - 1)
        m["schedule/sparsity_coefficient"] = self.schedules.sparsity(st.step - 1)
        if self.schedules.k is not None:
            m["schedule/k"] = float(round(self.schedules.k(st.step - 1)))
        m["perf/tokens_per_s"] = self._window_tokens / elapsed
        m["perf/data_wait_fraction"] = self._data_wait / elapsed
        m["progress/step"] = float(st.step)
        m["progress/tokens"] = float(st.tokens_seen)
        self._window_fired.zero_()
        self._window_tokens, self._data_wait, self._window_start = 0, 0.0, now
        return m

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> Path:
        assert self.dictionary is not None and self.optimizer is not None
        return save_trainer_checkpoint(path, self.dictionary, self.optimizer, self.state)

    def load_checkpoint(self, path: str | Path) -> None:
        assert self.dictionary is not None and self.optimizer is not None
        self.state = load_trainer_checkpoint(path, self.dictionary, self.optimizer)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(
        self, dictionary: SparseDictionary, batches: Iterable[Batch], resume_from: str | Path | None = None
    ) -> SparseDictionary:
        """Train ``dictionary`` in place on ``batches`` for ``cfg.total_steps`` steps.

        ``resume_from`` continues a run from a checkpoint folder: the first ``step`` batches of
        ``batches`` are skipped, so the same deterministic batch stream gives the same result as a
        run that never stopped."""
        self.setup(dictionary)
        it: Iterator[Batch] = iter(batches)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            it = itertools.islice(it, self.state.step, None)
        else:
            first = list(itertools.islice(it, self.cfg.initializer.init_batches))
            self.initialize(first)
            it = itertools.chain(first, it)
        total = self.cfg.total_steps
        bar = tqdm(
            total=total, initial=self.state.step, disable=not self.progress, unit="step", dynamic_ncols=True
        )
        out = None
        try:
            while self.state.step < total:
                t0 = time.perf_counter()
                batch = next(it, None)
                self.add_data_wait(time.perf_counter() - t0)
                if batch is None:
                    break
                out = self.step(batch)
                bar.update(1)
                if self.state.step % self.cfg.log_every_steps == 0 or self.state.step == total:
                    self._report(self.metrics(out), bar)
                every = self.cfg.checkpoint_every_steps
                if self.cfg.checkpoint_dir and every and self.state.step % every == 0:
                    self.save_checkpoint(Path(self.cfg.checkpoint_dir) / f"step_{self.state.step:08d}")
        finally:
            bar.close()
        if self.cfg.checkpoint_dir and out is not None:
            self.save_checkpoint(Path(self.cfg.checkpoint_dir) / "final")
        return dictionary

    def _report(self, metrics: dict[str, float], bar: Any) -> None:
        self.state.history.append(metrics)
        bar.set_postfix(
            mse=f"{metrics['metrics/mse']:.4g}",
            ev=f"{metrics['metrics/explained_variance']:.3f}",
            l0=f"{metrics['metrics/l0']:.1f}",
            dead=f"{metrics['metrics/dead_fraction']:.2f}",
        )
        for sink in self.sinks:
            sink.log(self.state.step, metrics)
