"""``raysae train CONFIG``: a training run on Ray from a YAML/TOML/JSON file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from raysae.commandline import reports_user_errors
from raysae.config.base import ConfigError, format_validation_error, read_config_file
from raysae.console import Console, TrainingProgress, add_verbose_flag, command_console


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a dictionary on Ray (streaming from model replicas, or from an activation cache)",
        description="CONFIG holds exactly one of `sae:`, `clt:` or `crosscoder:` plus `trainer:`, "
        "`activations:` (or `cache_path:`), `ray:`, `wandb:` and `output_dir:`.",
    )
    p.add_argument("config", help="YAML, TOML or JSON training settings")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    add_verbose_flag(p)
    p.set_defaults(func=run_train)


def load_train_settings(path: str):
    """Validate a training config file; errors name the file and the field."""
    from raysae.config.run import train_settings_from_dict

    data = read_config_file(path)
    try:
        return train_settings_from_dict(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, path)) from err
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from err


@reports_user_errors("train")
def run_train(args: argparse.Namespace) -> int:
    """Body of ``raysae train``: 0 on success; a user error is one line and exit code 2."""
    from raysae.report import write_report

    settings = load_train_settings(args.config)
    if args.address:
        settings.ray.address = args.address
    with command_console("train", verbose=args.verbose, folder=settings.output_dir) as console:
        result = train_with_progress(console, settings)
        report = write_report(settings.output_dir)
        console.summary(training_summary(result, report))
    return 0


def train_with_progress(console: Console, settings: Any):
    """``raysae.train.ray_train.train`` under the console's training bar; shuts down the Ray it started.
    The source and rerun checks that ``train`` makes come first here too, so a bad file fails before
    Ray starts (both are idempotent); Ray must be up before the bar, whose board is an actor."""

    from raysae.data.sources import check_source
    from raysae.ray_session import ray_started
    from raysae.train.ray_train import train
    from raysae.train.rerun import check_rerun

    if settings.cache_path is None:
        check_source(settings.activations.text)
    check_rerun(settings)
    total = settings.trainer.total_steps * settings.trainer.batch_size
    with ray_started(settings.ray.address), TrainingProgress(console, settings.run_name, total) as progress:
        result = train(settings)
        progress.finish(result.tokens)
    return result


def training_summary(result: Any, report: Any) -> list[tuple[str, Any]]:
    """The summary's rows: where the outputs are and the last report's numbers."""
    m = result.metrics
    numbers = "  ".join(
        f"{label} {m[key]:{fmt}}"
        for key, label, fmt in (
            ("loss/total", "loss", ".4g"),
            ("metrics/explained_variance", "EV", ".3f"),
            ("metrics/l0", "L0", ".1f"),
            ("metrics/dead_fraction", "dead", ".1%"),
        )
        if key in m
    )
    return [
        ("dictionary", result.dictionary_path),
        ("trained", f"steps: {result.steps}  tokens: {result.tokens}"),
        ("last report", numbers or "none"),
        ("history", Path(result.dictionary_path).parent / "metrics.jsonl"),
        ("plots", report.training_png),
        ("report", report.html),
    ]
