"""``raysae train CONFIG``: a training run on Ray from a YAML/TOML/JSON file."""

from __future__ import annotations

import argparse
import json

from pydantic import ValidationError

from raysae.commandline import reports_user_errors
from raysae.config.base import ConfigError, format_validation_error, read_config_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a dictionary on Ray (streaming from model replicas, or from an activation cache)",
        description="CONFIG holds exactly one of `sae:`, `clt:` or `crosscoder:` plus `trainer:`, "
        "`activations:` (or `cache_path:`), `ray:`, `wandb:` and `output_dir:`.",
    )
    p.add_argument("config", help="YAML, TOML or JSON training settings")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
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
    from raysae.train.ray_train import train

    settings = load_train_settings(args.config)
    if args.address:
        settings.ray.address = args.address
    result = train(settings)
    print(f"dictionary: {result.dictionary_path}\ncheckpoint: {result.checkpoint_path}")
    print(f"steps: {result.steps}  tokens: {result.tokens}")
    print(
        json.dumps({k: round(v, 5) for k, v in result.metrics.items() if k.startswith("metrics/")}, indent=2)
    )
    return 0
