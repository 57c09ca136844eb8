"""`raysae quickstart` wall time and CPU utilisation, for this checkout and optionally another one.

    .venv/bin/python benchmarks/quickstart.py [--before /path/to/older/checkout] [--rounds 1]

Each round runs the README's main job (local Ray, bundled model and corpus, 409,600 streamed tokens,
2 data-parallel workers, then evaluation) in a fresh process and samples the CPU seconds of its whole
process tree; ``cpu util`` is those seconds over wall × cores. ``--before`` runs another checkout's
raysae package with this virtual environment (its folder goes first on PYTHONPATH), interleaved with
this one, so both see the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cpu_tree import TreeCPU

ROOT = Path(__file__).resolve().parent.parent


def run_quickstart(source: Path) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="raysae-qs-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(source),
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
        "WANDB_MODE": "offline",
    }
    cmd = [
        sys.executable,
        "-c",
        "from raysae.cli import main; main()",
        "quickstart",
        "--out",
        str(out / "run"),
    ]

    def go() -> int:
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=out)
        return 0

    _, wall, cpu = TreeCPU().run(go)
    evaluation = json.loads((out / "run" / "eval.json").read_text())
    return {
        "wall": wall,
        "cpu": cpu,
        "train": evaluation["train_seconds"],
        "tokens": evaluation["train_tokens"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, default=None, help="another checkout to compare with")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    sources = [("before", args.before.resolve())] if args.before else []
    sources.append(("this checkout", ROOT))
    cores = os.cpu_count() or 1
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in sources}
    for _ in range(args.rounds):
        for name, source in sources:
            results[name].append(run_quickstart(source))
    print(f"\nraysae quickstart, {cores} cores, {args.rounds} round(s), mean")
    print(f"{'checkout':<16}{'wall s':>9}{'train s':>9}{'train tok/s':>13}{'cpu util':>10}")
    for name, rs in results.items():
        wall = sum(r["wall"] for r in rs) / len(rs)
        train = sum(r["train"] for r in rs) / len(rs)
        util = sum(r["cpu"] / r["wall"] for r in rs) / len(rs) / cores
        print(f"{name:<16}{wall:>9.1f}{train:>9.1f}{rs[0]['tokens'] / train:>13.0f}{util:>10.2f}")


if __name__ == "__main__":
    main()
