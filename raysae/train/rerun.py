"""A run's identity in its ``output_dir``: rerunning resumes only the same run.

Ray Train resumes from the latest checkpoint under ``output_dir``; a rerun with changed settings
would silently resume the old run (a new ``total_training_tokens`` ignored) or crash inside a
worker (a new ``d_sae``). ``check_rerun`` compares the settings recorded by the first run with the
new ones, in the driver, before Ray starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raysae.config.run import AnyTrainSettings
from raysae.files import atomic_write_json
from raysae.train.ray_setup import SettingsError

SETTINGS_FILE = "run_settings.json"
# Where and how the run executes, not what it computes: these may change between a run and its resume.
OPERATIONAL = (
    "wandb",
    "output_dir",
    "ray.address",
    "ray.storage_path",
    "ray.cpus_per_worker",
    "ray.use_gpu",
    "ray.max_failures",
    "ray.keep_checkpoints",
    "activations.resources",
    "activations.model.device",
    "activations.model.num_threads",
)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if any(name == op or name.startswith(op + ".") for op in OPERATIONAL):
            continue
        if isinstance(value, dict):
            out |= _flatten(value, name + ".")
        else:
            out[name] = value
    return out


def differing_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the settings that differ (operational ones excluded)."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, object()) != b.get(k, object()))


def check_rerun(settings: AnyTrainSettings) -> None:
    """Record the settings of a new run; for an existing one, raise ``SettingsError`` naming the
    fields that differ, so a rerun either resumes the same run or stops before anything starts."""
    out = Path(settings.output_dir)
    path = out / SETTINGS_FILE
    new = json.loads(settings.model_dump_json())
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SettingsError(f"{path}: unreadable record of the earlier run ({err})") from err
        diff = differing_fields(old, new)
        if diff:
            shown = "; ".join(f"{k}: {_get(old, k)!r} → {_get(new, k)!r}" for k in diff[:8])
            more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
            raise SettingsError(
                f"{out} holds a run with different settings ({shown}{more}). Resuming needs the same "
                "settings; to start afresh, set another output_dir or delete that folder"
            )
    atomic_write_json(path, new)


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d
