"""The training step and the one training loop: ``Trainer(cfg).fit(dictionary, batches)``.

``fit`` is the only loop, for a single process and for every Ray Train worker alike: it re-cuts the
incoming rows into ``batch_size``-row steps, initialises from data, builds the optimiser once, runs
the steps, reports metrics to its sinks and saves through a ``Checkpointer``. A Ray worker only wires
Ray to it (``raysae.train.ray_train``): its dictionary's parameters are DTensors
(``distribute`` = ``raysae.train.sharding.distribute_dictionary``), each rank passes its own rows, and
the step uses the sharded loss (sparse for TopK/BatchTopK SAEs, ``raysae.train.sparse_sharded``), reduces
gradients over the data dim and reads metrics as global values.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from raysae import metrics as M
from raysae.config import TrainerConfig
from raysae.dictionaries.base import Batch, LossOutput, SparseDictionary
from raysae.dictionaries.init import initialize_from_data
from raysae.errors import RaysaeError
from raysae.train.checkpoint import Checkpointer, LocalCheckpointer
from raysae.train.metrics_sinks import MetricsSink
from raysae.train.rows import StepBatches
from raysae.train.schedules import TrainingSchedules
from raysae.train.sharding import (
    clip_grad_norm_,
    compute_sharded_loss,
    is_distributed,
    reduce_gradients_,
    to_full,
)
from raysae.train.sparse_sharded import compute_sharded_sparse_loss, supports_sharded_sparse_loss
from raysae.train.state import TrainState

log = logging.getLogger(__name__)


class TrainingDataError(RaysaeError, RuntimeError):
    """The batch stream gave no rows to train on (an empty source, or fewer rows than one step)."""


class ShortStreamWarning(UserWarning):
    """The batch stream ended before ``total_training_tokens`` were trained on."""


@dataclass
class _Run:
    """What ``setup`` binds: present together or not at all."""

    dictionary: SparseDictionary
    optimizer: torch.optim.Adam
    schedules: TrainingSchedules
    state: TrainState
    window_fired: Tensor


class Trainer:
    """Adam with lr warmup/decay, sparsity warmup, k annealing, clipping and decoder-norm handling."""

    def __init__(self, cfg: TrainerConfig, sinks: Sequence[MetricsSink] = (), progress: bool = True):
        self.cfg = cfg
        self.sinks = list(sinks)
        self.progress = progress
        self._run: _Run | None = None
        self._window_tokens = 0
        self._data_wait = 0.0
        self._window_start = time.perf_counter()

    # ---- set-up ---------------------------------------------------------------------------------
    @property
    def run(self) -> _Run:
        if self._run is None:
            raise RuntimeError("the trainer has no dictionary yet: call setup() or fit() first")
        return self._run

    @property
    def dictionary(self) -> SparseDictionary:
        return self.run.dictionary

    @property
    def optimizer(self) -> torch.optim.Adam:
        return self.run.optimizer

    @property
    def state(self) -> TrainState:
        return self.run.state

    @state.setter
    def state(self, value: TrainState) -> None:
        self.run.state = value

    def initialize(self, dictionary: SparseDictionary, batches: Sequence[Batch]) -> None:
        """Data-dependent initialisation (norm scaling, decoder norm, b_dec) from the first batches;
        before ``setup``, since it changes parameters the optimiser then takes over."""
        initialize_from_data(dictionary, batches, self.cfg.initializer)
        if self.cfg.decoder_norm_mode != "free":
            dictionary.set_decoder_norm_(1.0)
            if self.cfg.initializer.encoder_as_decoder_transpose:
                dictionary.tie_encoder_to_decoder_()

    def setup(self, dictionary: SparseDictionary) -> None:
        """Bind the (initialised, possibly distributed) dictionary; build optimiser, schedules and
        dead-latent counters. Called once per run."""
        cfg = dictionary.cfg
        top_k = cfg.top_k if cfg.act_fn in ("topk", "batchtopk") else None
        device = dictionary.input_scale.device
        optimizer = torch.optim.Adam(
            dictionary.parameters(), lr=self.cfg.lr, betas=self.cfg.betas, eps=self.cfg.adam_eps
        )
        self._run = _Run(
            dictionary=dictionary,
            optimizer=optimizer,
            schedules=TrainingSchedules.from_config(
                self.cfg, cfg.sparsity_coefficient, top_k, dictionary.d_sae
            ),
            state=TrainState.fresh(dictionary.latent_shape, device),
            window_fired=torch.zeros(dictionary.latent_shape, dtype=torch.long, device=device),
        )

    # ---- one step -------------------------------------------------------------------------------
    def step(self, batch: Batch) -> LossOutput:
        """One optimiser step on ``batch``; returns the loss output (before the update)."""
        run, cfg = self.run, self.cfg
        d, st = run.dictionary, run.state
        d.train()
        lr = run.schedules.lr(st.step)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        if run.schedules.k is not None:
            d.activation.k = round(run.schedules.k(st.step))  # type: ignore[union-attr]
        dead_mask = st.tokens_since_fired >= cfg.dead_after_tokens
        sharded = is_distributed(d)
        bf16 = cfg.autocast == "bfloat16"
        encode_dtype = torch.bfloat16 if bf16 else None
        sparse = cfg.sparse_topk and (supports_sharded_sparse_loss(d) if sharded else d.supports_sparse_loss)
        autocast = contextlib.nullcontext()
        if sharded and sparse:
            loss_fn = partial(compute_sharded_sparse_loss, d, encode_dtype=encode_dtype)
        elif sharded:
            loss_fn = partial(compute_sharded_loss, d)
        elif sparse:
            loss_fn = partial(d.compute_sparse_loss, encode_dtype=encode_dtype)
        else:
            loss_fn = d.compute_loss
        if bf16 and not sparse:
            autocast = torch.autocast(d.input_scale.device.type, dtype=torch.bfloat16)
        with autocast:
            out = loss_fn(
                batch,
                sparsity_coefficient=run.schedules.sparsity(st.step),
                dead_mask=dead_mask,
                aux_k=cfg.aux_k,
                aux_k_coefficient=cfg.aux_k_coefficient,
            )
        run.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if sharded:
            reduce_gradients_(d)
        if cfg.decoder_norm_mode == "unit_project_grad":
            d.project_decoder_grad_()
        if cfg.grad_clip_norm is not None:
            out.parts["grad_norm"] = torch.tensor(clip_grad_norm_(d, cfg.grad_clip_norm))
        run.optimizer.step()
        if cfg.decoder_norm_mode != "free":
            d.set_decoder_norm_(1.0)
        self._track_firing(out)
        st.step += 1
        return out

    @torch.no_grad()
    def _track_firing(self, out: LossOutput) -> None:
        """Update tokens-since-fired from the global batch (every rank's rows, every latent)."""
        run = self.run
        tsf = run.state.tokens_since_fired
        fired_count = to_full(out.firing_counts()).to(tsf.device)
        n_tokens = out.n_rows
        tsf.add_(n_tokens).masked_fill_(fired_count > 0, 0)
        run.window_fired += fired_count
        self._window_tokens += n_tokens
        run.state.tokens_seen += n_tokens

    def add_data_wait(self, seconds: float) -> None:
        """Account time spent waiting for the next batch (reported as perf/data_wait_fraction)."""
        self._data_wait += seconds

    # ---- metrics --------------------------------------------------------------------------------
    @torch.no_grad()
    def metrics(self, out: LossOutput) -> dict[str, float]:
        """Metrics of the last batch plus window statistics since the previous report (a collective
        when the dictionary is distributed: call on every rank)."""
        run = self.run
        st, sched = run.state, run.schedules
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)  # since the last report: reporting time included
        if out.label is None or out.reconstruction is None:
            raise RuntimeError("the loss output lacks label or reconstruction")
        label, recon, z = (to_full(t.detach()) for t in (out.label, out.reconstruction, out.latents()))
        m: dict[str, float] = {f"loss/{k}": float(to_full(v)) for k, v in out.parts.items()}
        m["loss/total"] = float(to_full(out.loss.detach()))
        m["metrics/mse"] = float(M.mse(label, recon))
        m["metrics/explained_variance"] = float(M.explained_variance(label, recon))
        m["metrics/l0"] = float(M.l0(z).mean())
        # dead: no firing within the last dead_after_tokens tokens (a zero "recently fired" count)
        recent = (st.tokens_since_fired < self.cfg.dead_after_tokens).long()
        m["metrics/dead_fraction"] = M.dead_fraction(recent)
        m["metrics/dense_fraction"] = M.dense_fraction(
            run.window_fired, self._window_tokens, self.cfg.dense_threshold
        )
        m["schedule/lr"] = sched.lr(st.step - 1)
        m["schedule/sparsity_coefficient"] = sched.sparsity(st.step - 1)
        if sched.k is not None:
            m["schedule/k"] = float(round(sched.k(st.step - 1)))
        m["perf/tokens_per_s"] = self._window_tokens / elapsed
        m["perf/data_wait_fraction"] = self._data_wait / elapsed
        m["progress/step"] = float(st.step)
        m["progress/tokens"] = float(st.tokens_seen)
        m |= local_memory(run.dictionary, run.optimizer)
        run.window_fired.zero_()
        self._window_tokens, self._data_wait, self._window_start = 0, 0.0, now
        return m

    # ---- the loop -------------------------------------------------------------------------------
    def fit(
        self,
        dictionary: SparseDictionary,
        batches: Iterable[Batch],
        resume_from: str | None = None,
        *,
        checkpointer: Checkpointer | None = None,
        distribute: Callable[[SparseDictionary], Any] | None = None,
        rows_per_step: int | None = None,
    ) -> SparseDictionary:
        """Train ``dictionary`` in place for ``total_training_tokens`` in ``batch_size``-row steps.

        ``batches`` may come in any size (tensors or ``{hook: tensor}``): rows are re-cut into steps
        of ``rows_per_step`` rows (default ``batch_size``; a data-parallel rank passes its share).
        ``checkpointer`` defaults to a ``LocalCheckpointer`` on ``cfg.checkpoint_dir`` resuming from
        ``resume_from``; a resumed run skips the rows its checkpoint already trained on, so the same
        deterministic stream gives the same result as a run that never stopped. ``distribute`` is
        applied after data initialisation and before the optimiser is built (DTensor sharding).
        A stream that ends early stops the run with a ``ShortStreamWarning``; one without a single
        step's rows raises ``TrainingDataError``.
        """
        cfg = self.cfg
        ckpt = checkpointer or LocalCheckpointer(cfg.checkpoint_dir, resume_from)
        steps = StepBatches(batches, rows_per_step or cfg.batch_size)
        if not ckpt.resuming:
            first = steps.take(cfg.initializer.init_batches)
            if not first:
                raise TrainingDataError(
                    f"the batch stream gave fewer than {steps.rows} rows, not one training step"
                )
            self.initialize(dictionary, first)
        if distribute is not None:
            distribute(dictionary)
        self.setup(dictionary)
        if ckpt.resuming:
            self.state = ckpt.restore(dictionary, self.optimizer)
            steps.skip(self.state.step)
        self._window_start = time.perf_counter()
        self._loop(steps, ckpt)
        return dictionary

    def _loop(self, steps: StepBatches, ckpt: Checkpointer) -> None:
        cfg, st = self.cfg, self.state
        total, every = cfg.total_steps, cfg.checkpoint_every_steps
        bar = tqdm(total=total, initial=st.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        out, metrics = None, st.history[-1] if st.history else {}
        ran_out = False
        try:
            while st.step < total:
                t0 = time.perf_counter()
                batch = steps.next()
                self.add_data_wait(time.perf_counter() - t0)
                if batch is None:
                    ran_out = True
                    break
                out = self.step(batch)
                bar.update(1)
                is_ckpt = every is not None and st.step % every == 0 and st.step < total
                if st.step % cfg.log_every_steps == 0 or st.step == total or is_ckpt:
                    metrics = self._report(out, bar)
                if is_ckpt:
                    ckpt.save(self.dictionary, self.optimizer, st, metrics, final=False)
        finally:
            bar.close()
        if out is not None and metrics.get("progress/step") != st.step:
            metrics = self._report(out, bar)
        if ran_out:
            message = (
                f"the batch stream ended after {st.tokens_seen:,} of {cfg.total_training_tokens:,} "
                f"training tokens ({st.step} of {total} steps); the dictionary is under-trained"
            )
            log.warning(message)
            warnings.warn(message, ShortStreamWarning, stacklevel=3)
        if st.step == 0:
            raise TrainingDataError("training ran no step: the batch stream gave fewer rows than one step")
        ckpt.save(self.dictionary, self.optimizer, st, metrics, final=True)

    def _report(self, out: LossOutput, bar: Any) -> dict[str, float]:
        metrics = self.metrics(out)
        self.state.history.append(metrics)
        bar.set_postfix(
            mse=f"{metrics['metrics/mse']:.4g}",
            ev=f"{metrics['metrics/explained_variance']:.3f}",
            l0=f"{metrics['metrics/l0']:.1f}",
            dead=f"{metrics['metrics/dead_fraction']:.2f}",
        )
        for sink in self.sinks:
            sink.log(self.state.step, metrics)
        return metrics


def _local_bytes(tensors: Iterable[Tensor]) -> int:
    return sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in tensors)


def local_memory(dictionary: SparseDictionary, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Bytes of parameters and of optimiser state held by this process (its shards only)."""
    states = [v for st in optimizer.state.values() for v in st.values() if isinstance(v, Tensor)]
    return {
        "memory/param_bytes_per_worker": float(_local_bytes(dictionary.parameters())),
        "memory/optimizer_bytes_per_worker": float(_local_bytes(states)),
    }
