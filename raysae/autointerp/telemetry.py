"""Autointerp's Ray metrics: endpoint requests, latency and tokens, features done, and scores.

Ray's metrics agent exports them to Prometheus as ``ray_raysae_autointerp_*`` (counters gain
``_total``), which ``dashboards/raysae_autointerp.json`` plots. They are recorded only in a process
connected to Ray (the job's tasks, or a driver that started Ray): without Ray there is no agent to
export to, and an in-process run or a unit test must not start one. Recording never raises.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "raysae_autointerp_"
LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0]
SCORE_BOUNDARIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]

# name: (kind, description, tag keys, histogram boundaries)
METRICS: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    "requests": (
        "counter",
        "Chat endpoint attempts by outcome (ok, error, cached)",
        ("model", "outcome"),
        None,
    ),
    "request_seconds": ("histogram", "Chat endpoint request latency", ("model",), LATENCY_BOUNDARIES),
    "tokens": (
        "counter",
        "Tokens the chat endpoint reported, prompt and completion",
        ("model", "kind"),
        None,
    ),
    "features": (
        "counter",
        "Features explained or scored, ok or failed",
        ("dictionary", "step", "status"),
        None,
    ),
    "score": (
        "histogram",
        "Scores of explanations (balanced accuracy)",
        ("scorer", "baseline"),
        SCORE_BOUNDARIES,
    ),
}
_made: dict[str, Any] = {}


def _metric(name: str) -> Any:
    """The ``ray.util.metrics`` object of ``name`` in this process, or None when not connected to Ray."""
    import ray

    if not ray.is_initialized():
        return None
    if name not in _made:
        from ray.util.metrics import Counter, Histogram

        kind, description, tags, boundaries = METRICS[name]
        if kind == "counter":
            _made[name] = Counter(PREFIX + name, description=description, tag_keys=tags)
        else:
            _made[name] = Histogram(
                PREFIX + name, description=description, boundaries=boundaries, tag_keys=tags
            )
    return _made[name]


def _record(name: str, value: float, tags: dict[str, str]) -> None:
    try:
        metric = _metric(name)
        if metric is None:
            return
        if METRICS[name][0] == "counter":
            metric.inc(value, tags=tags)
        else:
            metric.observe(value, tags=tags)
    except Exception as err:  # metrics are a view: never a reason to fail a feature
        log.debug("autointerp metric %s not recorded: %s", name, err)


def request_done(model: str, outcome: str, seconds: float | None = None) -> None:
    """One endpoint attempt (``ok`` or ``error``) with its latency, or an answer from the cache."""
    _record("requests", 1, {"model": model, "outcome": outcome})
    if seconds is not None:
        _record("request_seconds", seconds, {"model": model})


def tokens_used(model: str, prompt: int, completion: int) -> None:
    for kind, n in (("prompt", prompt), ("completion", completion)):
        if n > 0:
            _record("tokens", n, {"model": model, "kind": kind})


def feature_done(dictionary: str, step: str, status: str) -> None:
    """A feature's explanation (step ``explain``) or one of its scores (``score``) was stored."""
    _record("features", 1, {"dictionary": dictionary, "step": step, "status": status})


def score_recorded(scorer_kind: str, baseline: bool, score: float) -> None:
    if isinstance(score, float | int) and not math.isnan(score):
        _record("score", float(score), {"scorer": scorer_kind, "baseline": str(bool(baseline)).lower()})
