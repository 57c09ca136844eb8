"""``raysae cache CONFIG``: compute activations and write (or resume) an activation cache."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from raysae.commandline import reports_user_errors
from raysae.config.base import ConfigError, format_validation_error, read_config_file
from raysae.config.data import CacheJobConfig
from raysae.config.run import check_other_sections
from raysae.console import add_verbose_flag, command_console
from raysae.data.sources import check_source

SECTIONS = ("activations", "cache")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``cache`` sub-command; its ``func`` takes the parsed args and returns an exit code."""
    p = subparsers.add_parser(
        "cache",
        help="compute activations and write an activation cache (resumes an interrupted one)",
        description=(
            "Run the activation pipeline described by the `activations:` section of CONFIG and store the "
            "rows in the cache described by its `cache:` section. The file may also hold the training "
            "settings (`trainer:`, `sae:`, `ray:`, ...), so one file can configure both; any other "
            "top-level key is an error. Re-running after a kill resumes."
        ),
    )
    p.add_argument("config", help="YAML, TOML or JSON file with `activations:` and `cache:` sections")
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)"
    )
    p.add_argument("--local", action="store_true", help="one model in this process, without Ray")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbose_flag(p)
    p.set_defaults(func=run_cache)


def load_cache_job(path: str) -> CacheJobConfig:
    """Validate the whole config file: `activations` and `cache`, plus the training settings'
    top-level sections (validated as training would); unknown keys are errors naming the key."""
    data = read_config_file(path)
    check_other_sections(data, path, SECTIONS)
    try:
        return CacheJobConfig.model_validate({k: data[k] for k in SECTIONS if k in data})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, path)) from err


@reports_user_errors("cache")
def run_cache(args: argparse.Namespace) -> int:
    """Body of ``raysae cache``: 0 on success; a user error is one line and exit code 2."""
    job = load_cache_job(args.config)
    check_source(job.activations.text)  # in the driver, before Ray starts
    with command_console("cache", verbose=args.verbose, folder=job.cache.dir) as console:
        manifest = _write(job, args)
        size = sum(s.bytes for s in manifest.shards)
        print(
            f"{job.cache.dir}: {manifest.rows} activation rows of {len(manifest.hooks)} hook(s) "
            f"({', '.join(manifest.hooks)}) in {len(manifest.shards)} shards, {size / 2**20:.1f} MiB"
        )
        console.summary([])
    return 0


def _write(job: CacheJobConfig, args: argparse.Namespace):
    from raysae.data.cache import write_cache

    progress = not args.no_progress
    if args.local:
        return write_cache(job, use_ray=False, progress=progress)
    from raysae.ray_session import ray_started

    with ray_started(args.address):
        return write_cache(job, use_ray=True, progress=progress)
