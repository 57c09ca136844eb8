"""``raysae eval CHECKPOINT``: evaluate a saved dictionary on held-out text; writes metrics.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from raysae.commandline import reports_user_errors
from raysae.config.base import load_config
from raysae.config.evaluation import EvalConfig
from raysae.files import atomic_write_json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="explained variance, MSE, L0, dead/dense, CE/KL loss recovered")
    p.add_argument("checkpoint", help="a dictionary folder (config.json + model.safetensors)")
    p.add_argument(
        "--config", default=None, help="EvalConfig file (YAML/TOML/JSON); default: held-out Shakespeare"
    )
    p.add_argument("--tokens", type=int, default=None, help="override activations.total_tokens")
    p.add_argument("--out", default=None, help="metrics file (default: CHECKPOINT/metrics.json)")
    p.add_argument("--no-ce", action="store_true", help="skip the CE/KL splicing passes")
    p.set_defaults(func=run_eval)


def format_table(metrics: dict) -> str:
    """A two-column table of the scalar metrics."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, float | int) and not isinstance(value, bool):
            rows.append(
                f"  {key:<22} {value:>12.4f}" if isinstance(value, float) else f"  {key:<22} {value:>12d}"
            )
        elif isinstance(value, dict) and key != "per_group":
            rows.extend(f"  {key + '.' + k:<22} {v:>12.4f}" for k, v in value.items())
    return "\n".join(rows)


@reports_user_errors("eval")
def run_eval(args: argparse.Namespace) -> int:
    """Body of ``raysae eval``: 0 on success; a user error is one line and exit code 2."""
    from raysae.dictionaries import load_dictionary
    from raysae.eval.evaluate import evaluate

    cfg = load_config(args.config, EvalConfig) if args.config else EvalConfig()
    if args.tokens is not None:  # validated on assignment: 0 and negatives are errors, not "the default"
        cfg.activations.total_tokens = args.tokens
    if args.no_ce:
        cfg.ce_loss = False
    dictionary = load_dictionary(args.checkpoint)
    metrics = evaluate(dictionary, cfg)
    out = Path(args.out) if args.out else Path(args.checkpoint) / "metrics.json"
    atomic_write_json(out, metrics)
    print(format_table(metrics))
    print(f"metrics: {out}")
    return 0
