"""Training: the single-process step and loop, schedules, checkpoints; the Ray Train loop builds on it."""

from raysae.train.metrics_sinks import JsonlSink, MetricsSink
from raysae.train.schedules import LinearSchedule, TrainingSchedules
from raysae.train.trainer import Trainer, TrainState

__all__ = ["JsonlSink", "LinearSchedule", "MetricsSink", "TrainState", "Trainer", "TrainingSchedules"]
