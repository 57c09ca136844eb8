"""``raysae autointerp CONFIG``: explain and score a stored dictionary's features with a chat endpoint."""

from __future__ import annotations

import argparse
import contextlib

from raysae.commandline import reports_user_errors, standalone_main
from raysae.config.autointerp import AutointerpConfig
from raysae.config.run import load_section
from raysae.console import add_verbose_flag, command_console


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``autointerp`` sub-command."""
    p = subparsers.add_parser(
        "autointerp",
        help="explain and score stored features with any OpenAI-compatible chat model",
        description=(
            "Explain every feature of a stored dictionary (delphi's default explainer) with the chat model "
            "at endpoint.base_url, then score each explanation with detection and fuzzing beside a random "
            "baseline; results go to the store. Re-running resumes: explained and scored features are "
            "skipped, failed ones are tried again. The API key comes from endpoint.api_key or "
            "OPENAI_API_KEY and is never printed."
        ),
    )
    p.add_argument(
        "config", metavar="CONFIG", help="YAML, TOML or JSON settings (or an `autointerp:` section)"
    )
    p.add_argument("--dictionary-id", default=None, help="override dictionary_id")
    p.add_argument("--base-url", default=None, help="override endpoint.base_url")
    p.add_argument("--model", default=None, help="override endpoint.model")
    p.add_argument("--max-features", type=int, default=None, help="stop after this many features")
    p.add_argument("--mongo-uri", default=None, help="MongoDB URI (default: config, then MONGO_URI)")
    p.add_argument("--mongo-db", default=None, help="database (default: config, then MONGO_DB)")
    p.add_argument("--local", action="store_true", help="run in this process, without Ray")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_verbose_flag(p)
    p.set_defaults(func=run_command)


def load_autointerp_config(path: str, args: argparse.Namespace | None = None) -> AutointerpConfig:
    """Settings from ``path`` (whole file or its ``autointerp`` section) with command-line overrides."""
    overrides: dict = {}
    if args is not None:
        if args.dictionary_id is not None:
            overrides["dictionary_id"] = args.dictionary_id
        if args.max_features is not None:
            overrides["max_features"] = args.max_features
        if args.local:
            overrides["use_ray"] = False
        for section, pairs in (
            ("endpoint", (("base_url", args.base_url), ("model", args.model))),
            ("store", (("uri", args.mongo_uri), ("db", args.mongo_db))),
        ):
            given = {k: v for k, v in pairs if v is not None}
            if given:
                overrides[section] = given
    return load_section(path, "autointerp", AutointerpConfig, overrides)


@reports_user_errors("autointerp")
def run_command(args: argparse.Namespace) -> int:
    """Body of ``raysae autointerp``: 0 when every feature was explained and scored, 1 if some failed."""
    from raysae.autointerp.job import run_autointerp

    cfg = load_autointerp_config(args.config, args)
    from raysae.ray_session import ray_started

    with (
        command_console("autointerp", verbose=args.verbose),
        ray_started() if cfg.use_ray else contextlib.nullcontext(),
    ):
        r = run_autointerp(cfg, progress=not args.no_progress)
    u = r.usage
    print(
        f"{cfg.dictionary_id}: {r.features} features; explained {r.explained} (failed {r.explain_failed}, "
        f"already done {r.skipped_explained}); scores {r.scored} (failed {r.score_failed}, features already "
        f"scored {r.skipped_scored}); {u.requests} requests ({u.cached} cached, {u.retries} retries), "
        f"{u.prompt_tokens}+{u.completion_tokens} tokens in {r.seconds:.1f} s"
    )
    return 1 if r.explain_failed or r.score_failed else 0


if __name__ == "__main__":
    raise SystemExit(standalone_main(add_parser))
