"""A private Ray cluster dies with the raysae command that started it, also on ``kill -9``.

Measured without the watchdog (Ray 2.60, ``raysae serve``): the kernel ends the driver's own children
(GCS, raylet, dashboard, monitors) at once, Serve's workers follow within seconds, but the dashboard
and runtime-env agents stay about 60 s. With it, nothing of the cluster is left after 2-3 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from raysae_process import free_port, kill_all, processes_with, raysae_command, serve_args, wait_until_serving

from raysae.reaper import GRACE_S, Reaper, marked_processes

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds processes through /proc")

# A driver that marks a child (which starts a grandchild in a session of its own that ignores SIGTERM,
# as a Ray worker in its own process group would be out of reach of a group kill, and without the mark
# in its environment, as the raylet sometimes starts its agents) and starts one unmarked process; then
# it waits to be killed.
_DRIVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from raysae.reaper import Reaper

    READY = sys.argv[1]  # the stubborn one touches it once it ignores SIGTERM
    STUBBORN = f"import os, pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); pathlib.Path({READY!r} + '.tmp').write_text(str(os.getpid())); os.rename({READY!r} + '.tmp', {READY!r}); time.sleep(300)"
    CHILD = f"import os, subprocess, sys, time; env = {{k: v for k, v in os.environ.items() if k != 'RAYSAE_REAPER'}}; subprocess.Popen([sys.executable, '-c', {STUBBORN!r}], start_new_session=True, env=env); time.sleep(300)"
    reaper = Reaper.start()
    with reaper.marking():
        subprocess.Popen([sys.executable, "-c", CHILD])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    print(reaper.mark, reaper.process.pid, bystander.pid, flush=True)
    time.sleep(300)
    """
)


def _wait_for(condition, timeout: float) -> float | None:
    """Seconds until ``condition()`` holds, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_killed_driver_takes_its_marked_processes_along(tmp_path):
    ready = tmp_path / "ready"
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(ready)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    mark, watchdog, bystander = "", 0, 0
    try:
        assert driver.stdout is not None
        mark, watchdog_pid, bystander_pid = driver.stdout.readline().split()
        watchdog, bystander = int(watchdog_pid), int(bystander_pid)
        assert _wait_for(ready.exists, 30) is not None, "children did not start"
        grandchild = int(ready.read_text())
        assert len(marked_processes(mark)) == 1 and grandchild not in marked_processes(mark)
        assert watchdog not in marked_processes(mark)
        time.sleep(1.5)  # the watchdog notes what runs below the marked processes every second
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        took = _wait_for(lambda: not marked_processes(mark) and not _alive(grandchild), 10 + GRACE_S)
        assert took is not None, (
            f"still running: {marked_processes(mark)}, {grandchild}: {_alive(grandchild)}"
        )
        assert took >= GRACE_S * 0.5  # the stubborn one needed the SIGKILL after the grace period
        assert _wait_for(lambda: not _alive(watchdog), 10) is not None, "the watchdog did not exit"
        assert _alive(bystander), "an unmarked process was killed"
    finally:
        driver.kill()
        driver.wait()
        kill_all([*(marked_processes(mark) if mark else []), *([bystander] if bystander else [])])


def test_release_ends_the_marked_processes_and_the_watchdog():
    reaper = Reaper.start()
    with reaper.marking():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    assert os.environ.get("RAYSAE_REAPER") is None  # the mark is set only within the block
    try:
        assert marked_processes(reaper.mark) == [child.pid]
        time.sleep(1.5)  # the watchdog keeps still while the driver lives
        assert child.poll() is None and reaper.process.poll() is None
        reaper.release()
        assert child.wait(timeout=10) == -signal.SIGTERM
        assert reaper.process.wait(timeout=10) == 0
        assert reaper.released
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_killed_serve_leaves_no_ray_process():
    """``raysae serve`` (a private cluster with Serve's controller, proxy and a replica), SIGKILLed
    once it answers: within 15 s no process of its Ray session runs any more."""
    port = free_port()
    dead_store = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    with raysae_command(serve_args(port, "--mongo-uri", dead_store)) as command:
        wait_until_serving(command, f"http://127.0.0.1:{port}/health")
        tag = str(command.tmp)
        before = processes_with(tag)
        names = " ".join(before.values())
        # an agent renames itself (ray::DashboardAgent) a while after it starts
        for parts in ("raylet", "gcs_server", "ServeController", "ProxyActor", "DashboardAgent|agent.py"):
            assert any(part in names for part in parts.split("|")), (parts, before)
        os.kill(command.proc.pid, signal.SIGKILL)
        command.proc.wait()
        took = _wait_for(lambda: not processes_with(tag), 15)
        assert took is not None, f"{len(before)} processes before the kill; left: {processes_with(tag)}"
        print(f"{len(before)} processes of the session before the kill; none left after {took:.1f} s")


_CLEAN_RUN = textwrap.dedent(
    """
    import json, os, time
    import ray
    import raysae.ray_session as session
    from raysae.reaper import marked_processes

    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self):
            return os.getpid()

    with session.ray_started(num_cpus=1, include_dashboard=False):
        worker = ray.get(Probe.remote().pid.remote())
        mark, watchdog = session._reaper.mark, session._reaper.process
        inside = marked_processes(mark)
    start = time.monotonic()
    while marked_processes(mark) and time.monotonic() - start < 20:
        time.sleep(0.1)
    took = time.monotonic() - start
    result = {"inside": inside, "worker": worker, "left": marked_processes(mark), "seconds": took}
    result["watchdog_exit"] = watchdog.wait(timeout=20)
    result["released"] = session._reaper is None
    print("RESULT " + json.dumps(result), flush=True)
    """
)


@pytest.mark.slow
def test_a_command_that_ends_leaves_no_ray_process():
    """``ray_started`` lets the watchdog go once Ray is shut down, while the process lives on: it
    sweeps what ``ray.shutdown()`` left (if anything) and exits."""
    tmp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CLEAN_RUN], env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        kill_all(list(processes_with(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads(line[len("RESULT ") :])
    assert result["worker"] in result["inside"] and len(result["inside"]) >= 3, result  # raylet, GCS, ...
    assert result["left"] == [] and result["seconds"] < 15, result
    assert result["watchdog_exit"] == 0 and result["released"], result
    print(f"{len(result['inside'])} marked processes; none left {result['seconds']:.1f} s after the block")
