"""The Grafana boards query only metrics that raysae and Ray export, under the names Prometheus sees.

Fast checks: every board is well formed, the training board's series are ones the trainer reports,
and the Prometheus config reads Ray's service-discovery file. The slow check runs each workload on a
real local Ray (tiny training, the activation pipeline, autointerp against the fake OpenAI server, a
few requests to the Serve app), scrapes Ray's metrics endpoint while they run and requires every metric
that any board queries to have been exported.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from raysae.config import SAEConfig, TrainerConfig
from raysae.dictionaries import build_dictionary
from raysae.train import Trainer
from raysae.train.reporting import prometheus_name

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
BOARD = DASHBOARDS / "raysae_training.json"
BOARDS = ["raysae_training.json", "raysae_activations.json", "raysae_serve.json", "raysae_autointerp.json"]
SCRAPE_DEADLINE_S = 90.0


def load(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the board: panel targets and template-variable queries."""
    exprs = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    return exprs + [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Ray exports every metric as ``ray_*``); label matchers and
    string literals are dropped first, so a label value never reads as a metric."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    return set(re.findall(r"\bray_[A-Za-z0-9_:]+", bare))


def board_metrics(name: str) -> set[str]:
    return {m for e in queries(load(name)) for m in metric_names(e)}


def test_metric_names_ignore_labels_and_strings():
    expr = 'histogram_quantile(0.95, sum by (le) (rate(ray_a_bucket{x="ray_b", y=~"$y"}[5m]))) / ray_c'
    assert metric_names(expr) == {"ray_a_bucket", "ray_c"}
    assert metric_names("label_values(ray_d, run)") == {"ray_d"}


@pytest.mark.parametrize("name", BOARDS)
def test_board_is_well_formed(name):
    board = load(name)
    assert board["uid"] and board["title"] and board["panels"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert metric_names(target["expr"]), f"{panel['title']}: {target['expr']} queries no Ray metric"
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__range", "__rate_interval", "__interval"}
            assert used <= variables, f"{panel['title']}: undefined variables {used - variables}"


def test_every_board_is_documented_and_uids_are_distinct():
    readme = (DASHBOARDS / "README.md").read_text()
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(BOARDS)
    assert all(name in readme for name in [*BOARDS, "prometheus.yml"])
    assert len({load(n)["uid"] for n in BOARDS}) == len(BOARDS)


def test_prometheus_config_reads_rays_service_discovery_file():
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (files,) = [sd["files"] for sd in job["file_sd_configs"]]
    assert files == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in (DASHBOARDS / "README.md").read_text()


def train_twice(sinks: list[Any] | None = None) -> list[dict[str, float]]:
    """Two tiny fits that between them report every metric of the training board (ReLU with an L1
    penalty; TopK with aux-k once latents die); returns their metric history."""
    sae = build_dictionary(SAEConfig(d_model=8, d_sae=32, act_fn="relu", sparsity_coefficient=1.0))
    trainer = Trainer(
        TrainerConfig(batch_size=16, total_training_tokens=64, log_every_steps=1),
        sinks=sinks or [],
        progress=False,
    )
    trainer.fit(sae, (torch.randn(16, 8) for _ in range(4)))
    topk = build_dictionary(SAEConfig(d_model=8, d_sae=32, act_fn="topk", top_k=2))
    trainer2 = Trainer(
        TrainerConfig(batch_size=16, total_training_tokens=64, log_every_steps=1, dead_after_tokens=16),
        sinks=sinks or [],
        progress=False,
    )
    trainer2.fit(topk, (torch.randn(16, 8) for _ in range(4)))
    return [*trainer.state.history, *trainer2.state.history]


def test_board_series_are_reported_metrics():
    reported = {"ray_" + prometheus_name(k) for h in train_twice() for k in h}
    queried = board_metrics("raysae_training.json")
    assert queried, "the board queries nothing"
    assert queried <= reported, f"board queries unreported series: {sorted(queried - reported)}"


def test_autointerp_board_queries_the_metrics_autointerp_defines():
    from raysae.autointerp import telemetry

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    defined = {
        f"ray_{telemetry.PREFIX}{name}{s}"
        for name, (kind, *_) in telemetry.METRICS.items()
        for s in suffixes[kind]
    }
    queried = board_metrics("raysae_autointerp.json")
    assert queried <= defined, sorted(queried - defined)
    assert {m.rsplit("_", 1)[0] for m in queried} >= {
        f"ray_{telemetry.PREFIX}{n}" for n, (k, *_) in telemetry.METRICS.items() if k == "counter"
    }


def test_autointerp_metrics_are_a_no_op_without_ray():
    """In a fresh process (the suite's own Ray session would be running here): recording without Ray
    makes no metric and starts no Ray."""
    import subprocess
    import sys

    code = (
        "import ray\n"
        "from raysae.autointerp import telemetry\n"
        "before = dict(telemetry._made)\n"
        "telemetry.request_done('m', 'ok', 0.1)\n"
        "telemetry.feature_done('d', 'explain', 'ok')\n"
        "assert telemetry._made == before and not ray.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- the real thing: run every workload, scrape Ray ---------------------------------------------------


def scrape_urls() -> list[str]:
    """Ray's metrics endpoints, as Prometheus finds them: the service-discovery file of the session
    when the dashboard wrote one, else this node's metrics export port."""
    import ray
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    node = ray._private.worker.global_worker.node
    discovery = Path(node.get_session_dir_path()) / PROMETHEUS_SERVICE_DISCOVERY_FILE
    if discovery.is_file():
        targets = [t for group in json.loads(discovery.read_text()) for t in group["targets"]]
    else:
        targets = [f"{node.node_ip_address}:{node.metrics_export_port}"]
    return [f"http://{t}/metrics" for t in targets]


def exported_names(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and line[0] != "#"}


class Scraper(threading.Thread):
    """Scrapes every second and keeps the union of names: Ray drops a finished dataset's series after
    a while, and Prometheus would have scraped them while the job ran."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.stop = threading.Event()
        self.urls = scrape_urls()

    def run(self) -> None:
        while not self.stop.is_set():
            for url in self.urls:
                with contextlib.suppress(OSError):  # the agent's endpoint comes up after the node
                    self.seen |= exported_names(url)
            self.stop.wait(1.0)

    def wait_for(self, wanted: set[str], deadline_s: float) -> set[str]:
        """What of ``wanted`` is still missing when it has all arrived or the deadline passed."""
        end = time.monotonic() + deadline_s
        while wanted - self.seen and time.monotonic() < end:
            time.sleep(1.0)
        return wanted - self.seen


def run_pipeline() -> int:
    from raysae.config.data import ActivationsConfig
    from raysae.data.pipeline import activation_dataset, iter_row_chunks

    cfg = ActivationsConfig.model_validate(
        {
            "hooks": ["blocks.1.hook_resid_post"],
            "total_tokens": 64,
            "batch_windows": 2,
            "tokens": {"context_size": 32},
        }
    )
    return sum(len(c["token_id"]) for c in iter_row_chunks(activation_dataset(cfg), progress=False))


def run_autointerp_job(store: Any, tmp_path: Path) -> Any:
    from fake_openai import FakeServer, FakeState

    from raysae.autointerp.job import run_autointerp
    from raysae.config.autointerp import AutointerpConfig

    sys.path.insert(0, str(Path(__file__).parent / "autointerp"))
    try:
        from autointerp_data import DICT_ID, fill
    finally:
        sys.path.pop(0)

    fill(store)
    with FakeServer(FakeState()) as fake:
        cfg = AutointerpConfig.model_validate(
            {
                "dictionary_id": DICT_ID,
                "max_features": 2,
                "use_ray": True,
                "ray_workers": 1,
                "endpoint": {
                    "base_url": fake.url,
                    "model": "fake-model",
                    "cache_dir": str(tmp_path / "cache"),
                },
                "scorer": {"n_activating": 8, "n_non_activating": 8},
                "store": {"uri": store.uri, "db": store.db_name},
            }
        )
        return run_autointerp(cfg, store, progress=False)


def serve_requests(store: Any) -> list[int]:
    import httpx
    from ray import serve

    from raysae.serve.app import app_builder
    from raysae.store import find_free_port

    port = find_free_port("127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"mongo_uri": store.uri, "db": store.db_name, "text_endpoint": False, "graph_endpoint": False}
    serve.run(app_builder(args), name="dash", route_prefix="/", blocking=False)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        paths = ["/health", "/api/dictionaries", "/api/dictionaries/no-such-dictionary", "/no-such-route"]
        return [client.get(p).status_code for p in paths * 2]


@pytest.mark.slow
def test_every_board_metric_is_exported_by_a_real_run(ray_session, store, tmp_path):
    from ray import serve

    from raysae.train.reporting import RayMetricsSink

    wanted = {name: board_metrics(name) for name in BOARDS}
    assert all(wanted.values())
    scraper = Scraper()
    scraper.start()
    try:
        train_twice([RayMetricsSink("dashboards-test")])
        assert run_pipeline() == 64
        result = run_autointerp_job(store, tmp_path)
        assert result.explained == 2 and result.scored > 0
        try:
            codes = serve_requests(store)
            assert {200, 404} <= set(codes)
            missing = scraper.wait_for(set().union(*wanted.values()), SCRAPE_DEADLINE_S)
        finally:
            serve.shutdown()
    finally:
        scraper.stop.set()
        scraper.join()
    by_board = {name: sorted(names & missing) for name, names in wanted.items() if names & missing}
    assert not by_board, f"board metrics never exported: {by_board}"
