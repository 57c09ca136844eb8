"""`raysae cache CONFIG`: argument parsing, a local run, and clear errors."""

from __future__ import annotations

import argparse

import pytest
import yaml

from raysae.data.commands import add_parser
from raysae.data.manifest import read_manifest


def parse(argv):
    parser = argparse.ArgumentParser(prog="raysae")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def write_config(path, cache_dir, **activations):
    config = {
        "activations": {
            "hooks": ["blocks.0.hook_resid_post"],
            "total_tokens": 200,
            "tokens": {"context_size": 64},
            **activations,
        },
        "cache": {"dir": str(cache_dir), "shard_rows": 100},
        "trainer": {"lr": 0.001},  # sections for other commands are ignored
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_parser():
    args = parse(["cache", "c.yaml", "--local", "--no-progress"])
    assert (args.config, args.local, args.no_progress, args.address) == ("c.yaml", True, True, None)
    assert callable(args.func)


@pytest.mark.slow
def test_local_cache_run(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "out")
    args = parse(["cache", str(cfg), "--local", "--no-progress"])
    assert args.func(args) == 0
    m = read_manifest(tmp_path / "out")
    assert m.complete and m.rows == 200 and m.hooks == ["blocks.0.hook_resid_post"]
    assert "200 activation rows of 1 hook(s)" in capsys.readouterr().out
    assert args.func(args) == 0  # a second run finds the cache complete


def test_errors_are_one_message(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "out", hooks=["blocks.0.resid"])
    args = parse(["cache", str(cfg), "--local"])
    assert args.func(args) == 2  # EXIT_USER_ERROR: one code for user errors in every command
    err = capsys.readouterr().err
    assert err.startswith("raysae cache: error: invalid configuration")
    assert "c.yaml: activations.hooks" in err and "unknown hook point" in err
    args = parse(["cache", str(tmp_path / "missing.yaml")])
    assert args.func(args) == 2
    assert "no such config file" in capsys.readouterr().err
