"""Metric sinks for runs on Ray: Ray's metrics API (dashboard, Prometheus, Grafana) and W&B.

Both implement ``MetricsSink``. Neither ever fails a run: W&B falls back to offline mode without a
key and is switched off (with a warning) if it cannot start at all.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from raysae.config.run import WandbConfig
from raysae.console import BOARD_KEYS, board_name

log = logging.getLogger(__name__)

METRIC_PREFIX = "raysae_train_"


def prometheus_name(key: str) -> str:
    """``metrics/explained_variance`` → ``raysae_train_metrics_explained_variance``."""
    return METRIC_PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class RayMetricsSink:
    """Sets one ``ray.util.metrics.Gauge`` per metric, tagged with the run name and rank, and puts
    the progress bar's metrics on the run's ``ProgressBoard`` when the driver opened one."""

    def __init__(self, run_name: str, rank: int = 0):
        self.tags = {"run": run_name, "rank": str(rank)}
        self._gauges: dict[str, Any] = {}
        self._board = _find_board(run_name)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from ray.util.metrics import Gauge

        if self._board is not None:
            try:  # fire and forget: the bar is a view, never a reason to slow or fail training
                self._board.put.remote({k: float(metrics[k]) for k in BOARD_KEYS if k in metrics})
            except Exception as err:
                log.debug("progress board unreachable: %s", err)
                self._board = None

        for key, value in metrics.items():
            gauge = self._gauges.get(key)
            if gauge is None:
                gauge = Gauge(
                    prometheus_name(key), description=f"raysae training {key}", tag_keys=("run", "rank")
                )
                self._gauges[key] = gauge
            gauge.set(float(value), tags=self.tags)


def _find_board(run_name: str) -> Any:
    try:
        import ray

        return ray.get_actor(board_name(run_name)) if ray.is_initialized() else None
    except Exception:  # no board: a run started without raysae.console
        return None


class WandbSink:
    """Logs to W&B (rank 0 only); offline without a key; never raises."""

    def __init__(self, cfg: WandbConfig, config: dict[str, Any], output_dir: str):
        self.run = None
        if not cfg.enabled:
            return
        mode = cfg.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        try:
            import wandb

            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                name=cfg.run_name,
                mode=mode,
                dir=os.environ.get("WANDB_DIR", output_dir),
                config=config,
                settings=wandb.Settings(silent=True, x_disable_stats=True),
            )
        except Exception as err:
            log.warning("W&B disabled: could not start a run (%s)", err)
            self.run = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as err:
            log.warning("W&B logging failed, disabling it: %s", err)
            self.run = None

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as err:
                log.warning("W&B finish failed: %s", err)
            self.run = None
