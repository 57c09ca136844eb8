"""``raysae report``: the pictures and the HTML page of a run, from a synthetic history."""

from __future__ import annotations

import base64
import json
import re

import pytest

from raysae.cli import main
from raysae.errors import EXIT_USER_ERROR
from raysae.report import read_history, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_dir(tmp_path, reports: int = 5, evaluation: dict | None = None):
    run = tmp_path / "run"
    run.mkdir()
    lines = []
    for i in range(1, reports + 1):
        lines.append(
            json.dumps(
                {
                    "step": 2 * i,
                    "progress/step": 2.0 * i,
                    "progress/tokens": 256.0 * i,
                    "loss/total": 300.0 / i,
                    "metrics/explained_variance": 0.1 * i,
                    "metrics/l0": 16.0 + i,
                    "metrics/dead_fraction": 0.01 * i,
                    "metrics/mse": 0.5 / i,
                }
            )
        )
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "run_settings.json").write_text(
        json.dumps(
            {"run_name": "synthetic", "sae": {"d_model": 8, "d_sae": 32}, "trainer": {"batch_size": 4}}
        )
    )
    if evaluation is not None:
        (run / "eval.json").write_text(json.dumps(evaluation))
    return run


def test_report_writes_a_real_png_and_a_self_contained_page(tmp_path):
    run = _run_dir(tmp_path, evaluation={"explained_variance": 0.8125, "ce_loss_score": 0.9375, "l0": 17})
    report = write_report(run)
    png = report.training_png.read_bytes()
    assert report.training_png == run / "plots" / "training.png"
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000  # four drawn panels, not an empty canvas
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 800 and height > 500
    page = report.html.read_text()
    embedded = re.search(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert embedded and base64.b64decode(embedded.group(1)) == png
    assert "<td>ce_loss_score</td><td>0.9375</td>" in page  # the evaluation's numbers
    assert "<td>explained_variance</td><td>0.8125</td>" in page
    assert "<td>metrics/explained_variance</td><td>0.5</td>" in page  # the last training report
    assert "synthetic" in page and "http" not in page  # nothing fetched from elsewhere


def test_report_without_an_evaluation_has_no_evaluation_section(tmp_path):
    page = write_report(_run_dir(tmp_path, reports=1)).html.read_text()
    assert "Evaluation" not in page and "Training" in page


def test_report_command_regenerates(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert str(run / "report.html") in out and (run / "plots" / "training.png").is_file()


@pytest.mark.parametrize("state", ["missing", "no history", "empty history", "corrupt history"])
def test_a_bad_run_folder_is_a_one_line_error(tmp_path, capsys, state):
    run = tmp_path / "run"
    if state != "missing":
        run.mkdir()
    if state == "empty history":
        (run / "metrics.jsonl").write_text("\n")
    if state == "corrupt history":
        (run / "metrics.jsonl").write_text('{"progress/tokens": 1}\n{not json\n')
    assert main(["report", str(run)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("raysae report: error: ") and "\n" not in err and str(run) in err
    assert not (run / "report.html").exists()


def test_history_keeps_the_order_of_the_reports(tmp_path):
    history = read_history(_run_dir(tmp_path, reports=3))
    assert [r["progress/tokens"] for r in history] == [256.0, 512.0, 768.0]
