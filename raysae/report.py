"""``raysae report RUN_DIR``: a training run's pictures and a self-contained HTML page.

Reads what a run leaves in its folder: ``metrics.jsonl`` (one line per report: step, tokens, loss,
explained variance, L0, dead fraction, …), ``run_settings.json``, and the evaluation if there is one
(``eval.json`` from ``raysae quickstart``, ``dictionary/metrics.json`` from ``raysae eval``). Writes
``plots/training.png`` (four panels against tokens) and ``report.html`` (the PNG embedded as base64,
so the page can be mailed or opened anywhere, and the numbers as tables). Training calls it at the end.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysae.commandline import reports_user_errors
from raysae.errors import RaysaeError

HISTORY_FILE = "metrics.jsonl"
SETTINGS_FILE = "run_settings.json"
EVAL_FILES = ("eval.json", "dictionary/metrics.json")
TOKENS = "progress/tokens"
# (metric, panel title, log-scale y when every value is positive)
PANELS = (
    ("loss/total", "loss", True),
    ("metrics/explained_variance", "explained variance", False),
    ("metrics/l0", "L0 (active latents per token)", False),
    ("metrics/dead_fraction", "dead fraction", False),
)
FINAL_KEYS = ("progress/step", TOKENS, *(key for key, _, _ in PANELS), "metrics/mse")


class ReportError(RaysaeError, ValueError):
    """The folder holds no training history to report on."""


@dataclass
class Report:
    """The files one report wrote."""

    training_png: Path
    html: Path


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """The run's reports in order; a missing, empty or corrupt history is a ``ReportError``."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise ReportError(f"{folder}: not a run folder (no such directory)")
    path = folder / HISTORY_FILE
    if not path.is_file():
        raise ReportError(
            f"{folder}: no training history ({HISTORY_FILE}); is it a training run's output_dir?"
        )
    history = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}:{n}: not a JSON line ({err.msg})") from err
        if not isinstance(record, dict) or TOKENS not in record:
            raise ReportError(f"{path}:{n}: a report without {TOKENS!r}")
        history.append(record)
    if not history:
        raise ReportError(f"{path}: empty training history (the run stopped before its first report)")
    return history


def read_evaluation(run_dir: str | Path) -> tuple[Path, dict[str, float]] | None:
    """The first evaluation file found and its scalar numbers (nested dicts flattened one level)."""
    for name in EVAL_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ReportError(f"{path}: not JSON ({err.msg})") from err
            return path, _scalars(data)
    return None


def _scalars(data: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = value
        elif isinstance(value, dict) and key != "per_group":
            out |= {f"{key}.{k}": v for k, v in value.items() if isinstance(v, int | float)}
    return out


def plot_training(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Loss, explained variance, L0 and dead fraction against tokens, one panel each, as a PNG.
    Uses ``matplotlib.figure.Figure`` directly: no pyplot state, no GUI backend."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (key, label, log_y) in zip(axes, PANELS, strict=True):
        points = [(r[TOKENS], r[key]) for r in history if key in r]
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if not points:
            ax.text(0.5, 0.5, "not reported", ha="center", va="center", transform=ax.transAxes)
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.5)
        if log_y and min(ys) > 0:
            ax.set_yscale("log")
        if key == "metrics/dead_fraction":  # a flat 0 otherwise fills the panel with a meaningless range
            ax.set_ylim(0, max(0.05, 1.1 * max(ys)))
        ax.xaxis.set_major_formatter(EngFormatter())
    for ax in axes[2:]:
        ax.set_xlabel("training tokens")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _table(rows: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items()
    )
    return f"<table>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.5g}"
    return str(int(value)) if isinstance(value, float) else str(value)


def _settings_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        s = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    out: dict[str, Any] = {"run": s.get("run_name")}
    for section in ("sae", "clt", "crosscoder"):
        if isinstance(s.get(section), dict):
            d = s[section]
            out |= {
                "dictionary": section,
                **{k: d[k] for k in ("d_model", "d_sae", "act_fn", "top_k") if k in d},
            }
    trainer = s.get("trainer") or {}
    out |= {k: trainer[k] for k in ("batch_size", "total_training_tokens", "lr") if k in trainer}
    return {k: v for k, v in out.items() if v is not None}


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}td{border-bottom:1px solid #ddd;padding:3px 14px}"
    "td:last-child{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}"
)


def write_report(run_dir: str | Path) -> Report:
    """Write ``plots/training.png`` and ``report.html`` into the run folder."""
    folder = Path(run_dir)
    history = read_history(folder)
    settings = _settings_summary(folder)
    name = str(settings.get("run") or folder.name)
    png = plot_training(history, folder / "plots" / "training.png", title=name)
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    final = {k: history[-1][k] for k in FINAL_KEYS if k in history[-1]}
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>raysae: {html.escape(name)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(name)}</h1>",
    ]
    if settings:
        parts.append(f"<h2>Settings</h2>{_table(settings)}")
    parts.append(f"<h2>Training</h2><img alt='training curves' src='data:image/png;base64,{image}'>")
    parts.append(f"<h3>Last report</h3>{_table(final)}")
    evaluation = read_evaluation(folder)
    if evaluation is not None:
        path, numbers = evaluation
        parts.append(f"<h2>Evaluation</h2><p>from {html.escape(str(path.name))}</p>{_table(numbers)}")
    parts.append("</body></html>\n")
    page = folder / "report.html"
    page.write_text("".join(parts), encoding="utf-8")
    return Report(training_png=png, html=page)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="(re)draw a training run's plots and its self-contained HTML report",
        description="Reads RUN_DIR/metrics.jsonl (and eval.json or dictionary/metrics.json if present); "
        "writes RUN_DIR/plots/training.png and RUN_DIR/report.html.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run's output_dir")
    p.set_defaults(func=run_report)


@reports_user_errors("report")
def run_report(args: argparse.Namespace) -> int:
    """Body of ``raysae report``: 0 on success; a bad or empty folder is one line and exit code 2."""
    report = write_report(args.run_dir)
    print(f"plots:  {report.training_png}\nreport: {report.html}")
    return 0
