"""Top-level subcommands: ``quickstart`` (the README's main job) and ``config-docs``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from raysae.commandline import reports_user_errors
from raysae.config.base import StrictModel, field_reference, read_config_file
from raysae.console import add_verbose_flag
from raysae.files import atomic_write_json

QUICKSTART_CONFIG = Path(__file__).parent / "quickstart.yaml"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="train a TopK SAE on SmolLM2 + Shakespeare on a local Ray cluster, then evaluate it",
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/quickstart)")
    p.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens for the evaluation")
    add_verbose_flag(p)
    p.set_defaults(func=quickstart)
    p = sub.add_parser("config-docs", help="print the configuration reference as Markdown")
    p.set_defaults(func=config_docs)


def quickstart_settings(out: str | None = None):
    """The embedded quickstart settings (raysae/quickstart.yaml, also jobs/configs/quickstart.yaml)."""
    from raysae.config.run import train_settings_from_dict

    settings = train_settings_from_dict(read_config_file(QUICKSTART_CONFIG))
    if out:
        settings.output_dir = out
    return settings


@reports_user_errors("quickstart")
def quickstart(args: argparse.Namespace) -> int:
    """Local Ray, bundled model and corpus: stream, train on 2 workers, export, evaluate, report."""
    from raysae.config.evaluation import EvalConfig
    from raysae.console import command_console
    from raysae.dictionaries import load_dictionary
    from raysae.eval.commands import format_table
    from raysae.eval.evaluate import evaluate
    from raysae.report import write_report
    from raysae.train.commands import train_with_progress, training_summary

    settings = quickstart_settings(args.out)
    t0 = time.perf_counter()
    with command_console("quickstart", verbose=args.verbose, folder=settings.output_dir) as console:
        result = train_with_progress(console, settings)
        trained = time.perf_counter() - t0
        cfg = EvalConfig()
        cfg.activations.total_tokens = args.eval_tokens
        metrics = evaluate(load_dictionary(result.dictionary_path), cfg)
        metrics["train_seconds"] = trained
        metrics["train_tokens"] = result.tokens
        out = Path(settings.output_dir) / "eval.json"
        atomic_write_json(out, metrics)
        report = write_report(settings.output_dir)  # after eval.json: the page shows the evaluation
        print(format_table(metrics))
        console.summary([*training_summary(result, report), ("evaluation", out)])
    return 0


def _settings_models() -> list[type[StrictModel]]:
    from raysae.config.analysis import AnalysisConfig
    from raysae.config.autointerp import AutointerpConfig
    from raysae.config.evaluation import EvalConfig
    from raysae.config.graphs import GraphConfig
    from raysae.config.run import TrainCLTSettings, TrainCrossCoderSettings, TrainSAESettings
    from raysae.config.serve import ServeConfig
    from raysae.config.store import StoreConfig

    return [
        TrainSAESettings,
        TrainCLTSettings,
        TrainCrossCoderSettings,
        EvalConfig,
        StoreConfig,
        AnalysisConfig,
        GraphConfig,
        AutointerpConfig,
        ServeConfig,
    ]


@reports_user_errors("config-docs")
def config_docs(args: argparse.Namespace) -> int:
    """Markdown tables of every field of every top-level settings model (nested ones inlined)."""
    for model in _settings_models():
        print(f"### {model.__name__}\n\n{(model.__doc__ or '').strip()}\n")
        print("| field | type | default | description |\n|---|---|---|---|")
        for name, typ, default, desc in field_reference(model):
            print(f"| `{name}` | {typ} | `{default}` | {desc} |")
        print()
    return 0
