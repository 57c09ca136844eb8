"""Where training metrics go: a protocol, and the in-process sinks (JSON lines, console).

Ray metrics and W&B sinks live beside the Ray Train loop; all share this one protocol.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol


class MetricsSink(Protocol):
    """Receives the metrics dict every ``log_every_steps`` steps."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...


class JsonlSink:
    """Appends one JSON object per report to a file (``{"step": …, **metrics}``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
