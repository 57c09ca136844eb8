"""What a command prints: Ray's output in a log file unless ``--verbose``, one bar, a summary, errors."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml

from raysae.console import Console, command_console, log_path, train_postfix
from raysae.errors import RaysaeError
from raysae.ray_session import ray_output_to

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_log_goes_to_the_run_folder_else_under_raysae_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSAE_HOME", str(tmp_path / "home"))
    assert log_path("train", tmp_path / "run") == tmp_path / "run" / "logs" / "train.log"
    home = log_path("analyze", None)
    assert home.parent == tmp_path / "home" / "logs" and home.name.startswith("analyze-")
    assert log_path("cache", "s3://bucket/cache").parent == tmp_path / "home" / "logs"


def test_ray_loggers_and_ray_warnings_go_to_the_file_and_come_back(tmp_path, capsys):
    import ray  # noqa: F401  (installs Ray's console handler on the "ray" logger)

    ray_logger = logging.getLogger("ray")
    before = list(ray_logger.handlers)
    path = tmp_path / "ray.log"
    with pytest.warns(UserWarning, match="raysae's own") as shown, ray_output_to(path):
        ray_logger.warning("hidden ray message")
        warnings.warn_explicit("ray deprecation", DeprecationWarning, f"{os.sep}x{os.sep}ray{os.sep}a.py", 1)
        warnings.warn_explicit("raysae's own warning", UserWarning, "raysae/train/x.py", 1)
    assert [str(w.message) for w in shown] == ["raysae's own warning"]  # Ray's went to the file only
    err = capsys.readouterr().err
    assert "hidden ray message" not in err and "ray deprecation" not in err
    text = path.read_text()
    assert "hidden ray message" in text and "ray deprecation" in text
    assert ray_logger.handlers == before


def test_forwarded_worker_lines_are_written_with_their_prefix(tmp_path):
    path = tmp_path / "ray.log"
    with ray_output_to(path) as sink:
        sink._forward(
            {
                "lines": ["TrainingReport(metrics=...)", "__ray_tqdm_magic_token__ {}"],
                "pid": 42,
                "actor_name": "RayTrainWorker",
                "ip": "10.0.0.1",
                "localhost": "10.0.0.1",
            }
        )
        sink._forward({"lines": None})  # a malformed batch must not end Ray's log thread
    text = path.read_text()
    assert "(RayTrainWorker pid=42) TrainingReport(metrics=...)\n" in text
    assert "magic" not in text


def test_a_failure_names_the_log_but_a_user_error_stays_one_line(tmp_path, capsys):
    import ray  # noqa: F401

    with pytest.raises(RuntimeError), command_console("train", verbose=False, folder=tmp_path):
        logging.getLogger("ray").warning("Ray said something")
        raise RuntimeError("worker died")
    assert f"Ray's output is in {tmp_path / 'logs' / 'train.log'}" in capsys.readouterr().err
    with pytest.raises(RaysaeError), command_console("train", verbose=False, folder=tmp_path):
        logging.getLogger("ray").warning("Ray said something")
        raise RaysaeError("bad setting")
    assert capsys.readouterr().err == ""


def test_a_command_that_never_starts_ray_leaves_no_log(tmp_path):
    with command_console("analyze", verbose=False, folder=tmp_path) as console:
        pass
    assert console.log_file is not None and not console.log_file.exists()


def test_summary_and_postfix(tmp_path, capsys):
    (tmp_path / "x.log").write_text("Ray's output\n")
    Console("train", False, tmp_path / "x.log").summary([("dictionary", "/r/dictionary"), ("steps", 6)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "raysae train: done"
    assert [line.split(":")[0].strip() for line in out[1:]] == ["dictionary", "steps", "time", "Ray log"]
    metrics = {
        "loss/total": 312.31,
        "metrics/explained_variance": 0.0973,
        "metrics/l0": 16.0,
        "metrics/dead_fraction": 0.125,
    }
    assert train_postfix(metrics) == {"loss": "312.3", "EV": "0.097", "L0": "16.0", "dead": "12.5%"}


def _tiny_config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "jobs" / "configs" / "tiny.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow
def test_a_quiet_training_run_prints_one_bar_and_a_summary(tmp_path):
    done = subprocess.run(
        [str(BIN / "raysae"), "train", str(_tiny_config(tmp_path))],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(),
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert len(output.encode()) < 4096, output  # was ~46 KB before the console
    assert "TrainingReport(" not in output and "MapBatches" not in output and "pid=" not in output
    bars = [part for part in re.split(r"[\r\n]", done.stderr) if part.startswith("train:")]
    assert bars and "768/768" in bars[-1] and "EV=" in bars[-1] and "dead=" in bars[-1], done.stderr
    assert "raysae train: done" in done.stdout and "steps: 6" in done.stdout
    run = tmp_path / "run"
    log = (run / "logs" / "train.log").read_text()
    assert "TrainingReport(" in log and "Started a local Ray instance" in log
    assert (run / "plots" / "training.png").is_file() and (run / "report.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_brings_workers_output_back(tmp_path, verbose):
    script = textwrap.dedent(
        f"""
        import ray
        from raysae.console import command_console
        from raysae.ray_session import ensure_ray

        @ray.remote(num_cpus=0)
        def shout():
            print("hello from a worker", flush=True)

        with command_console("probe", verbose={verbose}, folder={str(tmp_path)!r}):
            ensure_ray(None, num_cpus=1, include_dashboard=False)
            ray.get(shout.remote())
            import time; time.sleep(2)  # the log monitor forwards worker output every ~second
            ray.shutdown()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    log = tmp_path / "logs" / "probe.log"
    if verbose:
        assert "hello from a worker" in output and "Started a local Ray instance" in output
        assert not log.exists()
    else:
        assert output.strip() == "", output
        assert "hello from a worker" in log.read_text()
