"""``raysae graphs CONFIG``: an attribution graph per prompt of a JSONL file, on a Ray actor pool."""

from __future__ import annotations

import argparse

from raysae.commandline import reports_user_errors, standalone_main
from raysae.config.graphs import GraphConfig
from raysae.config.run import load_section
from raysae.console import add_verbose_flag, command_console
from raysae.errors import EXIT_USER_ERROR


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``graphs`` sub-command; its ``func`` takes the parsed args and returns an exit code."""
    p = subparsers.add_parser(
        "graphs",
        help="attribution graphs of prompts through a cross-layer transcoder or per-layer transcoders",
        description=(
            "For every prompt of a JSONL file, build the local replacement model (transcoder features, "
            "error nodes, frozen attention and norms), attribute direct effects between tokens, features, "
            "errors and logits, prune, score, and write the graph to MongoDB and/or a viewer JSON file."
        ),
    )
    p.add_argument(
        "config", metavar="CONFIG", help="YAML, TOML or JSON graph settings (or a `graphs:` section)"
    )
    p.add_argument("--prompts", default=None, help="JSONL prompts file (overrides the config)")
    p.add_argument("--output-dir", default=None, help="folder for viewer JSON files (overrides the config)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--local", action="store_true", help="one model in this process, without Ray")
    add_verbose_flag(p)
    p.set_defaults(func=run_graphs_command)


def load_graph_config(path: str, args: argparse.Namespace | None = None) -> GraphConfig:
    """Settings from ``path`` (whole file or its ``graphs`` section) with command-line overrides."""
    overrides = {}
    if args is not None:
        overrides = {
            k: v for k, v in (("prompts", args.prompts), ("output_dir", args.output_dir)) if v is not None
        }
    return load_section(path, "graphs", GraphConfig, overrides)


@reports_user_errors("graphs")
def run_graphs_command(args: argparse.Namespace) -> int:
    """Body of ``raysae graphs``: 0 when every prompt got its graph; a user error (or prompts that
    failed with one, each reported) is exit code 2."""
    from raysae.graphs.job import read_prompts, run_graphs

    cfg = load_graph_config(args.config, args)
    read_prompts(cfg)  # in the driver, before Ray starts
    with command_console("graphs", verbose=args.verbose, folder=cfg.output_dir):
        if args.local:
            result = run_graphs(cfg, use_ray=False)
        else:
            from raysae.ray_session import ray_started

            with ray_started(args.address):
                result = run_graphs(cfg, use_ray=True)
    print(f"{len(result.graph_ids)} graphs written in {result.seconds:.1f} s; {len(result.failed)} failed")
    for prompt_id, error in result.failed:
        print(f"  prompt {prompt_id}: {error}")
    return 0 if not result.failed else EXIT_USER_ERROR


if __name__ == "__main__":
    raise SystemExit(standalone_main(add_parser))
