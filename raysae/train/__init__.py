"""Training: the one step and loop (``Trainer``), schedules, checkpoints; the Ray Train worker wires Ray to it.

Names are imported on first use, so ``import raysae.train.commands`` (the CLI) does not load torch.
"""

from __future__ import annotations

from raysae._lazy import lazy_exports

_EXPORTS = {
    "Checkpointer": "raysae.train.checkpoint",
    "JsonlSink": "raysae.train.metrics_sinks",
    "LinearSchedule": "raysae.train.schedules",
    "LocalCheckpointer": "raysae.train.checkpoint",
    "MetricsSink": "raysae.train.metrics_sinks",
    "ShortStreamWarning": "raysae.train.trainer",
    "TrainState": "raysae.train.state",
    "Trainer": "raysae.train.trainer",
    "TrainingDataError": "raysae.train.trainer",
    "TrainingSchedules": "raysae.train.schedules",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
