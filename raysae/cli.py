"""The ``raysae`` command. Each part of the package contributes its subcommands through an
``add_parser(subparsers)`` function in its ``commands`` module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = [
    "raysae.commands",
    "raysae.train.commands",
    "raysae.eval.commands",
    "raysae.data.commands",
    "raysae.store.commands",
    "raysae.analysis.commands",
    "raysae.graphs.commands",
    "raysae.autointerp.commands",
    "raysae.serve.commands",
    "raysae.report",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raysae", description="Train and analyse sparse dictionaries on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; each reports its own user errors (``raysae.errors.reports_user_errors``)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
