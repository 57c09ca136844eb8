"""Top-level subcommands: ``quickstart`` (the README's main job) and ``config-docs``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from raysae.commandline import reports_user_errors
from raysae.config.base import StrictModel, field_reference, read_config_file
from raysae.files import atomic_write_json

QUICKSTART_CONFIG = Path(__file__).parent / "quickstart.yaml"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="train a TopK SAE on SmolLM2 + Shakespeare on a local Ray cluster, then evaluate it",
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/quickstart)")
    p.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens for the evaluation")
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
    import ray

    from raysae.config.evaluation import EvalConfig
    from raysae.dictionaries import load_dictionary
    from raysae.eval.commands import format_table
    from raysae.eval.evaluate import evaluate
    from raysae.ray_session import ensure_ray
    from raysae.train.ray_train import train

    settings = quickstart_settings(args.out)
    t0 = time.perf_counter()
    ensure_ray(None)
    try:
        result = train(settings)
    finally:
        ray.shutdown()
    trained = time.perf_counter() - t0
    cfg = EvalConfig()
    cfg.activations.total_tokens = args.eval_tokens
    metrics = evaluate(load_dictionary(result.dictionary_path), cfg)
    metrics["train_seconds"] = trained
    metrics["train_tokens"] = result.tokens
    out = Path(settings.output_dir) / "eval.json"
    atomic_write_json(out, metrics)
    print(format_table(metrics))
    print(
        f"dictionary: {result.dictionary_path}\nmetrics:    {out}\nhistory:    {Path(settings.output_dir) / 'metrics.jsonl'}"
    )
    print(f"total {time.perf_counter() - t0:.0f} s")
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
