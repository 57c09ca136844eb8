"""The `jobs/` entrypoints: every example config validates, and `ray job submit` of the tiny config
succeeds against a cluster started with `ray start --head` (its own processes, ports and temp dir)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysae.autointerp.commands import load_autointerp_config
from raysae.commands import QUICKSTART_CONFIG
from raysae.config.base import read_config_file
from raysae.graphs.commands import load_graph_config
from raysae.train.commands import load_train_settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("config", sorted((ROOT / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(config):
    """Each example validates as the command it is for: graphs, autointerp, else training."""
    sections = read_config_file(str(config))
    if "graphs" in sections:
        assert load_graph_config(str(config)).dictionaries
    elif "autointerp" in sections:
        assert load_autointerp_config(str(config)).dictionary_id
    else:
        assert load_train_settings(str(config)).dictionary.d_model == 576


def test_quickstart_config_is_the_embedded_one():
    assert (ROOT / "jobs" / "configs" / "quickstart.yaml").read_text() == QUICKSTART_CONFIG.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_to_a_ray_start_cluster(tmp_path):
    # As a user would: the cluster starts from the activated venv, so the job's `python` is the venv's.
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port, dash = _free_port(), _free_port()
    temp = Path("/tmp") / f"rj{port}"  # short: Ray's unix socket paths have a length limit
    # Every port of its own: the test session's Ray already holds the default agent ports.
    agent_ports = [
        f"--{name}={_free_port()}"
        for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
        )
    ]  # fmt: skip
    start = [
        str(BIN / "ray"), "start", "--head", f"--port={port}", f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=true",
        "--disable-usage-stats", *agent_ports,
    ]  # fmt: skip
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=120)
    try:
        submit = [
            str(BIN / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
            "--", "python", "jobs/train.py", "jobs/configs/tiny.yaml",
        ]  # fmt: skip
        deadline = time.monotonic() + 120
        while True:  # the dashboard's job agent comes up a little after `ray start` returns
            done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
            output = done.stdout + done.stderr
            if "No available agent" not in output or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert done.returncode == 0, output[-4000:]
        assert "succeeded" in output.lower(), output[-4000:]
        assert "dictionary:" in output and "steps: 6" in output, output[-4000:]
    finally:
        _stop_cluster(temp)


def _stop_cluster(temp: Path) -> None:
    """Stop only this cluster's processes (``ray stop`` would stop every Ray on the machine)."""
    import psutil

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(temp) in " ".join(p.info["cmdline"] or []):
                p.terminate()
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()
    shutil.rmtree(temp, ignore_errors=True)
