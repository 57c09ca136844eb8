"""A local cluster started by ``ensure_ray`` listens on loopback only: every TCP port of its processes
(GCS, raylet, workers, Serve's controller and proxy, dashboard and its agents, metrics exporters) is
bound to 127.0.0.1, except the one port of each Serve replica that Ray hard-codes to all interfaces."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap

import pytest

# Runs in a fresh interpreter: the shared test session's Ray (tests/conftest.py) is not ensure_ray's,
# and one process can hold one Ray session only. An actor gives the cluster a worker with its own gRPC
# server; Serve adds its controller, proxy and a replica.
_PROBE = textwrap.dedent(
    """
    import json, os, socket, time
    import psutil, ray
    from ray import serve
    from raysae.ray_session import ensure_ray

    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self):
            return os.getpid()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Echo:
        def __call__(self, request):
            return "ok"

    assert ensure_ray(None, num_cpus=1)
    actor = Probe.remote()
    worker = ray.get(actor.pid.remote())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Echo.bind(), name="probe", route_prefix="/")
    time.sleep(3)  # the dashboard and its agents open their ports after the raylet is up
    me = psutil.Process()
    procs = {p.pid: p.name() for p in [me, *me.children(recursive=True)]}
    listening = [
        {"name": procs[c.pid], "pid": c.pid, "ip": c.laddr.ip, "port": c.laddr.port}
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in procs
    ]
    node_ip = ray.util.get_node_ip_address()
    serve.shutdown()
    ray.shutdown()
    print("RESULT " + json.dumps({"listening": listening, "worker": worker, "node_ip": node_ip}))
    """
)


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.slow
def test_local_cluster_listens_on_loopback_only(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    }
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    listening = result["listening"]
    names = {s["name"] for s in listening}
    # The probe saw the cluster: the GCS, the raylet and the actor's worker each hold a port.
    assert {"gcs_server", "raylet"} <= names, listening
    assert result["worker"] in {s["pid"] for s in listening}, listening
    assert any(n.startswith("ray::ServeController") for n in names), listening
    assert any(n.startswith("ray::ProxyActor") for n in names), listening
    replicas = {s["pid"] for s in listening if s["name"].startswith("ray::ServeReplica")}
    assert replicas, listening
    exposed = [s for s in listening if not _loopback(s["ip"])]
    # The one exception Ray 2.60 leaves no setting for: each Serve replica's inter-deployment gRPC
    # server, bound to "[::]:0" in ray/serve/_private/replica.py. Nothing else may be exposed.
    replica_grpc = [s for s in exposed if s["pid"] in replicas and s["ip"] in ("::", "0.0.0.0")]
    assert len(replica_grpc) <= len(replicas), replica_grpc
    others = [s for s in exposed if s not in replica_grpc]
    assert not others, f"listening beyond loopback: {others}"
    assert result["node_ip"] == "127.0.0.1"
