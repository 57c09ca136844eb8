"""Cluster specs parse and point at entrypoints and configs that exist."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_files_parse_and_reference_real_files():
    for path in sorted((ROOT / "cluster").glob("*.yaml")):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
    job = yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text())
    script, config = job["spec"]["entrypoint"].split()[1:3]
    assert (ROOT / script).is_file() and (ROOT / config).is_file()
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    assert all(not p.startswith("torch") and not p.startswith("ray") for p in env["pip"]["packages"])
