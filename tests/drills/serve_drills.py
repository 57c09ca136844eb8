"""The Serve drill: SIGKILL one ``FeatureAPI`` replica while clients keep requesting feature documents;
Serve's controller replaces it. Counts the requests that failed from the kill on (those in flight on the
killed replica included), the seconds until Serve runs the full replica count again, and checks that
every request answered before the kill and every one sent after the recovery succeeded.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from autointerp_data import DICT_ID, HOOK, fill
from drill_kit import DrillResult, actor_pids, killable_store, signal_all, wait_for

from raysae.config.serve import ServeConfig
from raysae.serve.app import start_local
from raysae.store import Store, StoreConfig, find_free_port

APP = "drill"
DEPLOYMENT = "FeatureAPI"
FEATURES = 8
CLIENTS = 4


@dataclass
class Load:
    """``CLIENTS`` threads, each sending one request after another until ``stop``; every request is
    kept as (sent at, answered at, ok), and what each failed one got."""

    url: str
    requests: list[tuple[float, float, bool]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def _client(self, n: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = n
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    status = str(client.get(f"{self.url}/{i % FEATURES}").status_code)
                except httpx.HTTPError as err:
                    status = type(err).__name__
                self.requests.append((sent, time.monotonic(), status == "200"))
                if status != "200":
                    self.errors[status] += 1
                i += CLIENTS

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or DEPLOYMENT not in app.deployments:
        return 0
    return app.deployments[DEPLOYMENT].replica_states.get("RUNNING", 0)


def serve_drill(folder: Path, replicas: int = 2, after_s: float = 3.0) -> DrillResult:
    """Kill one of ``replicas`` ingress replicas under load; keep the load ``after_s`` past recovery."""
    from ray import serve

    with killable_store(folder / "store") as store:
        seed = Store.connect(StoreConfig(uri=store.uri, db=APP))
        fill(seed, FEATURES)
        seed.close()
        port = find_free_port()
        config = ServeConfig.model_validate(
            {
                "port": port,
                "app_name": APP,
                "store": {"uri": store.uri, "db": APP},
                "text_endpoint": False,
                "graph_endpoint": False,
                "chat_endpoint": False,
                "api_replicas": replicas,
            }
        )
        start_local(config)
        try:
            load = Load(f"http://127.0.0.1:{port}/api/dictionaries/{DICT_ID}/features/{HOOK}")
            try:
                wait_for(lambda: sum(ok for *_, ok in load.requests) >= 40, 120, "40 answered requests")
                warm = time.monotonic()  # the proxy may refuse the very first requests
                time.sleep(1.0)
                victims = actor_pids(DEPLOYMENT)
                assert len(victims) == replicas, f"{len(victims)} {DEPLOYMENT} replicas, expected {replicas}"
                signal_all(victims[:1], signal.SIGKILL)
                t_kill = time.monotonic()

                # The controller starts a replacement only once it removed the dead replica, so a new
                # actor beside ``replicas`` running means the replacement is up.
                def replaced() -> bool:
                    new = set(actor_pids(DEPLOYMENT)) - set(victims)
                    return bool(new) and _running_replicas() == replicas

                wait_for(replaced, 120, "the replacement replica", 0.1)
                recovered = time.monotonic()
                time.sleep(after_s)
            finally:
                load.finish()
        finally:
            serve.delete(APP)
            serve.shutdown()
    before = [ok for sent, done, ok in load.requests if warm <= sent and done < t_kill]
    during = [ok for sent, _, ok in load.requests if t_kill <= sent < recovered]
    waited = max(
        (done - sent for sent, done, _ in load.requests if t_kill - 1 <= sent < recovered), default=0.0
    )
    after = [ok for sent, _, ok in load.requests if sent >= recovered]
    # a request in flight on the killed replica fails too: Serve does not retry one that reached it
    failed_at = [done for _, done, ok in load.requests if done >= t_kill and not ok]
    outage = f"{max(failed_at) - t_kill:.1f} s" if failed_at else "none"
    return DrillResult(
        drill="serve replica",
        killed=f"1 of {replicas} {DEPLOYMENT} replicas",
        when=f"under load ({CLIENTS} clients, {len(before)} requests in)",
        completed=bool(after) and all(after) and all(before),
        unit="requests",
        lost=None,  # reads only: nothing to lose but the failed requests, counted as failures
        duplicated=None,
        replayed=None,
        recovery_s=recovered - t_kill,
        failures=len(failed_at),
        notes=f"{len(during)} requests during recovery (slowest {waited:.1f} s), {len(after)} after it "
        f"(failed: {after.count(False)}); last failure {outage} after the kill; recovery: kill to "
        f"{replicas} replica(s) running again"
        + (f"; failed requests got {dict(load.errors)}" if load.errors else ""),
    )
