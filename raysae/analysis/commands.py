"""``raysae analyze CHECKPOINT``: per-feature statistics, examples and DLA of a saved dictionary → MongoDB."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from raysae.commandline import reports_user_errors
from raysae.config.analysis import AnalysisConfig
from raysae.config.base import ConfigError, format_validation_error, read_config_file
from raysae.config.run import check_other_sections
from raysae.console import add_verbose_flag, command_console


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``analyze`` sub-command; its ``func`` takes the parsed args and returns an exit code."""
    p = subparsers.add_parser(
        "analyze",
        help="analyse every feature of a dictionary over a corpus and store the results in MongoDB",
        description=(
            "Run the dictionary saved at CHECKPOINT over a text corpus on a Ray actor pool and store, for "
            "every feature: frequency, mean and max activation, a log-spaced histogram, top-activating and "
            "quantile-sampled examples, and direct logit attribution. Re-running replaces the documents."
        ),
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="dictionary folder written by dictionary.save (config.json + weights)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="YAML, TOML or JSON analysis settings (top level, or an `analysis:` section)",
    )
    p.add_argument("--dictionary-id", default=None, help="id in the store (default: the folder's name)")
    p.add_argument("--analysis-id", default=None, help="id of the run's record (default: derived)")
    p.add_argument("--total-tokens", type=int, default=None, help="analyse at most this many tokens")
    p.add_argument("--mongo-uri", default=None, help="MongoDB URI (default: config, then MONGO_URI)")
    p.add_argument("--mongo-db", default=None, help="database (default: config, then MONGO_DB)")
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)"
    )
    p.add_argument("--local", action="store_true", help="one model in this process, without Ray")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_verbose_flag(p)
    p.set_defaults(func=run_analyze)


def load_analysis_config(path: str | None, args: argparse.Namespace | None = None) -> AnalysisConfig:
    """Settings from ``path`` (whole file or its ``analysis`` section) with command-line overrides."""
    data = read_config_file(path) if path else {}
    if "analysis" in data:  # a shared file: the other sections must be known and valid
        check_other_sections(data, str(path), ("analysis",))
        data = data["analysis"]
    if args is not None:
        for key, value in (("dictionary_id", args.dictionary_id), ("analysis_id", args.analysis_id)):
            if value is not None:
                data[key] = value
        if args.total_tokens is not None:
            data.setdefault("activations", {})["total_tokens"] = args.total_tokens
        for key, value in (("uri", args.mongo_uri), ("db", args.mongo_db)):
            if value is not None:
                data.setdefault("store", {})[key] = value
    try:
        return AnalysisConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, path or "command line")) from err


@reports_user_errors("analyze")
def run_analyze(args: argparse.Namespace) -> int:
    """Body of ``raysae analyze``: 0 on success; a user error is one line and exit code 2."""
    from raysae.data.sources import check_source

    cfg = load_analysis_config(args.config, args)
    check_source(cfg.activations.text)  # in the driver, before Ray starts
    with command_console("analyze", verbose=args.verbose) as console:  # results go to MongoDB
        result = _run(args, cfg)
        print(
            f"{result.dictionary_id}: {result.features_written} feature documents from {result.n_tokens} "
            f"tokens ({result.n_windows} windows) in {result.seconds:.1f} s; analysis {result.analysis_id}"
        )
        console.summary([])
    return 0


def _run(args: argparse.Namespace, cfg: AnalysisConfig):
    from raysae.analysis.job import analyze

    progress = not args.no_progress
    if args.local:
        return analyze(args.checkpoint, cfg, use_ray=False, progress=progress)
    from raysae.ray_session import ray_started

    with ray_started(args.address):
        return analyze(args.checkpoint, cfg, use_ray=True, progress=progress)
