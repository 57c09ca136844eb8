"""The package's import graph points one way (DESIGN.md: config → data → train → eval/analysis → store → serve).

Each part of ``raysae`` has a rank; a module may import only parts of its own or a lower rank, so data
moves forward and nothing reaches back. ``dictionaries/``, ``eval/`` and the metric definitions import no
Ray, and serve reads the dictionary interface instead of analysis internals.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raysae"

RANK = {
    # foundations: no raysae part below them
    "errors": 0,
    "commandline": 0,
    "files": 0,
    "home": 0,
    "devices": 0,
    "malloc": 0,  # glibc settings for processes that run forward passes (lm uses it)
    "net": 0,
    "metrics": 0,
    "_lazy": 0,
    "ray_session": 0,
    "reaper": 0,  # the watchdog that ends a private cluster when its driver dies (ray_session uses it)
    "console": 0,  # quiet Ray output, one progress bar, summaries: every command uses it
    "report": 0,  # plots of a run folder (reads files only)
    "config": 0,
    # pure building blocks
    "dictionaries": 1,
    "lm": 1,
    "store": 1,
    "synthetic": 2,
    "data": 2,
    "train": 3,
    "eval": 4,
    "analysis": 4,
    "graphs": 4,
    "autointerp": 4,
    "serve": 6,
    "cli": 7,
    "commands": 7,
    "__init__": 8,
}
# The hook vocabulary is pure Python kept beside the LM backends; config validates names with it.
ALLOWED = {("config", "raysae.lm.hook_names")}
NO_RAY = ("dictionaries", "eval", "metrics")


def _part(module: str) -> str:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else "__init__"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
        me = "__init__" if rel == ("raysae", "__init__") else rel[1]
        out.append((me, path))
    return out


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "raysae" and node.level == 0:
            # `from raysae import metrics` names a submodule; any other name is the top-level package
            names.extend(f"raysae.{a.name}" if a.name in RANK else "raysae" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def test_every_part_has_a_rank():
    parts = {me for me, _ in _modules()}
    assert parts <= set(RANK), f"give these parts a rank: {sorted(parts - set(RANK))}"


def test_no_backward_edges():
    backward = []
    for me, path in _modules():
        for name in _imports(path):
            if not name.startswith("raysae.") and name != "raysae":
                continue
            if name == "raysae" and me != "__init__":
                backward.append(f"{path.relative_to(PACKAGE.parent)} imports the top-level package")
                continue
            other = _part(name)
            if other == me or (me, name) in ALLOWED or name == "raysae":
                continue
            if RANK[other] > RANK[me]:
                backward.append(f"{path.relative_to(PACKAGE.parent)} ({me}) imports {name} ({other})")
    assert not backward, "\n".join(backward)


@pytest.mark.parametrize("part", NO_RAY)
def test_pure_parts_import_no_ray(part):
    paths = [p for me, p in _modules() if me == part]
    assert paths
    for path in paths:
        ray = [n for n in _imports(path) if n == "ray" or n.startswith("ray.")]
        assert not ray, f"{path} imports {ray}"


def test_serve_reads_no_analysis_internals():
    for me, path in _modules():
        if me == "serve":
            bad = [n for n in _imports(path) if n.startswith("raysae.analysis")]
            assert not bad, f"{path} imports {bad}"
