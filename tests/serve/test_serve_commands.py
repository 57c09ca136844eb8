"""``raysae serve`` as a real process (start, answer, stop on a signal), the application builder's
arguments, ServeConfig's checks, and jobs/serve_config.yaml against Serve's own schema."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from serve_data import DICT_ID, SERVE_CONFIG, yaml_app_args

from raysae.config.base import ConfigError
from raysae.config.serve import ServeConfig
from raysae.serve.app import config_from_args
from raysae.store import find_free_port


def test_serve_config_defaults_and_checks():
    config = ServeConfig()
    assert config.host == "127.0.0.1" and config.port == 8000 and config.page_size == 50
    assert ServeConfig(max_page_size=20).page_size == 20
    with pytest.raises(ValueError, match="default_page_size"):
        ServeConfig(max_page_size=20, default_page_size=30)
    with pytest.raises(ValueError, match=r"store\.max_page_size"):
        ServeConfig(max_page_size=500, store={"max_page_size": 100})
    with pytest.raises(ValueError, match="route_prefix"):
        ServeConfig(route_prefix="api")
    with pytest.raises(ValueError, match="Extra inputs"):
        ServeConfig(max_page_sizes=10)


def test_builder_arguments(tmp_path: Path):
    config = config_from_args({"mongo_uri": "mongodb://h:1", "db": "x", "model": {"device": "cpu"}})
    assert (config.store.uri, config.store.db, config.model.device) == ("mongodb://h:1", "x", "cpu")
    assert config.model.name == "smollm2-135m-instruct"
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"max_page_size": 30, "store": {"db": "from_file", "retries": 1}}))
    config = config_from_args({"config": str(path), "db": "override", "max_text_chars": 10})
    assert (config.max_page_size, config.store.db, config.store.retries) == (30, "override", 1)
    assert config.max_text_chars == 10
    for bad in ({"port": 9000}, {"host": "0.0.0.0"}):
        with pytest.raises(ConfigError, match="http_options"):
            config_from_args(bad)
    with pytest.raises(ConfigError, match="max_page_size"):
        config_from_args({"max_page_size": 0})
    with pytest.raises(ConfigError, match="db"):
        config_from_args({"db": "bad/name"})


def test_serve_config_file_is_valid():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(SERVE_CONFIG.read_text())
    spec = ServeDeploySchema.model_validate(raw)
    assert spec.http_options.host == "127.0.0.1"
    import_path, args = yaml_app_args()
    assert import_path == "raysae.serve.app:app_builder"
    config = config_from_args(args)
    assert config.text_endpoint and config.store.db == "mechinterp"
    # The documented working_dir form passes Serve's check; a relative path would not.
    raw["applications"][0]["runtime_env"] = {"working_dir": f"local://{SERVE_CONFIG.parents[1]}"}
    ServeDeploySchema.model_validate(raw)
    assert "local:///abs/path" in SERVE_CONFIG.read_text()


def _cli(port: int, mongo_uri: str, db: str, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # set by the test session's ray.init; the CLI would join that cluster
    cmd = [sys.executable, "-m", "raysae.serve.commands", "serve", "--port", str(port)]
    cmd += ["--mongo-uri", mongo_uri, "--db", db, "--no-text-endpoint", "--num-cpus", "2"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_cli_serves_until_signal(server, mongo_uri):
    port = find_free_port("127.0.0.1")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths have a limit
    proc = _cli(port, mongo_uri, server.db, ray_tmp)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline, r = time.monotonic() + 150, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                if r.status_code == 200 and any("Ctrl-C stops" in line for line in lines):
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        if r is None or r.status_code != 200:
            proc.kill()
            reader.join(timeout=10)
            pytest.fail(f"raysae serve did not come up:\n{''.join(lines)[-3000:]}")
        assert r.json()["text_endpoint"] is False
        items = httpx.get(f"http://127.0.0.1:{port}/api/dictionaries", timeout=30).json()["items"]
        assert DICT_ID in [d["dictionary_id"] for d in items]
        # the bundled chat model is its own application under /llm (no other endpoint configured)
        models = httpx.get(f"http://127.0.0.1:{port}/llm/v1/models", timeout=60).json()
        assert [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
        r = httpx.post(f"http://127.0.0.1:{port}/api/graphs", json={"prompt": "a", "dictionary_id": "x"})
        assert r.status_code == 401  # no token configured: writes are refused
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        reader.join(timeout=10)
        output = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, output[-3000:]
    assert "SIGTERM, shutting down" in output and "stopped" in output
    assert "write endpoints (graphs, explain) answer 401" in output, output
    assert not _port_open(port)


def test_cli_refuses_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "raysae.serve.commands",
                "serve",
                "--port",
                str(port),
                "--no-text-endpoint",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "RAY_TMPDIR": str(tmp_path)},
        )
    assert done.returncode == 1 and f"127.0.0.1:{port} is in use" in done.stderr


def test_cli_rejects_bad_settings():
    done = subprocess.run(
        [sys.executable, "-m", "raysae.serve.commands", "serve", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "port" in done.stderr and "65535" in done.stderr
