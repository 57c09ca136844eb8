"""Generic coefficient schedules: one piecewise-linear shape serves lr, sparsity warmup and k annealing."""

from __future__ import annotations

from dataclasses import dataclass

from raysae.config import TrainerConfig


@dataclass(frozen=True)
class LinearSchedule:
    """``start`` → ``peak`` over [0, warmup_steps), flat, then → ``end`` over the last ``decay_steps``."""

    total_steps: int
    peak: float
    start: float = 0.0
    warmup_steps: int = 0
    decay_steps: int = 0
    end: float | None = None

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.start + (self.peak - self.start) * step / self.warmup_steps
        decay_start = self.total_steps - self.decay_steps
        if self.decay_steps > 0 and step >= decay_start:
            end = self.peak if self.end is None else self.end
            frac = min(1.0, (step - decay_start) / self.decay_steps)
            return self.peak + (end - self.peak) * frac
        return self.peak


@dataclass(frozen=True)
class TrainingSchedules:
    """The three schedules of a run, built from a TrainerConfig."""

    lr: LinearSchedule
    sparsity: LinearSchedule
    k: LinearSchedule | None

    @classmethod
    def from_config(
        cls, cfg: TrainerConfig, sparsity_coefficient: float, top_k: int | None, d_sae: int
    ) -> TrainingSchedules:
        total = cfg.total_steps
        lr = LinearSchedule(
            total_steps=total,
            peak=cfg.lr,
            warmup_steps=cfg.lr_warmup_steps,
            decay_steps=round(cfg.lr_decay_fraction * total),
            end=cfg.lr * cfg.lr_end_factor,
        )
        sparsity = LinearSchedule(total, peak=sparsity_coefficient, warmup_steps=cfg.sparsity_warmup_steps)
        k = None
        if top_k is not None and cfg.k_anneal_steps > 0:
            start = min(cfg.k_anneal_start or 4 * top_k, d_sae)
            k = LinearSchedule(total, peak=top_k, start=start, warmup_steps=cfg.k_anneal_steps)
        return cls(lr, sparsity, k)
