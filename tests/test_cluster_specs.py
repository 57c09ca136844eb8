"""Cluster specs: the KubeRay manifests validate against KubeRay's v1 schema (cluster/schemas/) with every
key declared, as ``kubectl apply --validate=strict`` demands; the launcher file passes Ray's own launcher
validation; and every entrypoint, config file and Serve application they name exists and loads."""

from __future__ import annotations

import copy
import json
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SCHEMAS = CLUSTER / "schemas"
MANIFESTS = {
    "kuberay-rayjob.yaml": "RayJob",
    "kuberay-rayservice.yaml": "RayService",
    "kuberay-raycluster.yaml": "RayCluster",
}
ENTRYPOINT_ANNOTATION = "raysae.dev/entrypoint-"


@cache
def registry() -> Registry:
    """KubeRay's schema and the Kubernetes core types it references, each under its ``$id``."""
    core = json.loads((SCHEMAS / "k8s-core-v1.32.json").read_text())
    kuberay = yaml.safe_load((SCHEMAS / "kuberay-v1.yaml").read_text())
    return Registry().with_resources([(d["$id"], DRAFT202012.create_resource(d)) for d in (core, kuberay)])


def kind_schema(kind: str) -> dict[str, Any]:
    return {"$ref": f"kuberay-v1.yaml#/$defs/{kind}"}


def schema_errors(doc: Any, kind: str) -> list[str]:
    """JSON Schema errors (types, enums, required fields) of ``doc`` as ``kind``."""
    validator = jsonschema.Draft202012Validator(kind_schema(kind), registry=registry())
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def undeclared(doc: Any, schema: Any, resolver: Any, path: str = "$") -> list[str]:
    """Paths of the keys of ``doc`` that ``schema`` does not declare.

    Kubernetes structural schemas prune such keys silently (a misspelled field is dropped, not
    rejected) and JSON Schema allows them by default, so neither catches a typo; this is the check of
    ``kubectl --validate=strict``. A key is declared by ``properties``, a schema-valued
    ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``; an object schema with none
    of them declares nothing (Kubernetes prunes every key).
    """
    while isinstance(schema, dict) and "$ref" in schema:
        resolved = resolver.lookup(schema["$ref"])
        schema, resolver = resolved.contents, resolved.resolver
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    for key in ("anyOf", "oneOf"):  # the branch that fits best (int-or-string, quantities)
        if key in schema:
            tries = [undeclared(doc, branch, resolver, path) for branch in schema[key]]
            return min(tries, key=len)
    out = [p for branch in schema.get("allOf", []) for p in undeclared(doc, branch, resolver, path)]
    if isinstance(doc, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in doc.items():
            where = f"{path}.{key}"
            if key in props:
                out += undeclared(value, props[key], resolver, where)
            elif isinstance(extra, dict):
                out += undeclared(value, extra, resolver, where)
            elif extra is not True:
                out.append(where)
    elif isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            out += undeclared(item, schema["items"], resolver, f"{path}[{i}]")
    return out


def strict_errors(doc: Any, kind: str) -> list[str]:
    """Schema errors plus one ``undeclared field`` error per key the schema does not know."""
    resolver = registry().resolver()
    extra = [f"{p}: undeclared field" for p in undeclared(doc, kind_schema(kind), resolver)]
    return schema_errors(doc, kind) + extra


def load_manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


def walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    return [spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec]


def counts(doc: Any) -> int:
    return sum(len(n) for n in walk(doc) if isinstance(n, dict))


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_kuberay_manifest_is_valid_and_every_field_is_declared(name):
    doc = load_manifest(name)
    assert doc["kind"] == MANIFESTS[name]
    assert strict_errors(doc, doc["kind"]) == []
    assert counts(doc) > 30  # the walk saw the whole manifest, pod templates included
    for spec in cluster_specs(doc):
        assert spec["rayVersion"] == "2.60.0"
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for template in templates:
            for container in template["spec"]["containers"]:
                assert container["image"] == "raysae:latest" and container["workingDir"] == "/app"


def test_every_manifest_is_covered():
    assert {p.name for p in CLUSTER.glob("kuberay-*.yaml")} == set(MANIFESTS)


MISSPELLINGS = [
    # (manifest, path to a mapping, key, misspelled key)
    ("kuberay-rayjob.yaml", ("spec",), "shutdownAfterJobFinishes", "shutdownAfterJobFinished"),
    ("kuberay-rayjob.yaml", ("spec", "rayClusterSpec"), "workerGroupSpecs", "workerGroupSpec"),
    ("kuberay-rayservice.yaml", ("spec",), "serveConfigV2", "serveConfig"),
    ("kuberay-raycluster.yaml", ("spec", "headGroupSpec"), "rayStartParams", "rayStartParameters"),
    (
        "kuberay-raycluster.yaml",
        ("spec", "headGroupSpec", "template", "spec", "containers", 0),
        "workingDir",
        "workDir",
    ),
    (
        "kuberay-rayservice.yaml",
        ("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0, "env", 1),
        "valueFrom",
        "valuefrom",
    ),
]


@pytest.mark.parametrize(("name", "path", "key", "typo"), MISSPELLINGS, ids=[m[3] for m in MISSPELLINGS])
def test_a_misspelled_field_is_rejected(name, path, key, typo):
    doc = load_manifest(name)
    node = doc
    for step in path:
        node = node[step]
    node[typo] = node.pop(key)
    errors = strict_errors(doc, doc["kind"])
    where = "$" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path)
    assert f"{where}.{typo}: undeclared field" in errors


def test_schema_types_and_enums_are_checked():
    doc = load_manifest("kuberay-rayjob.yaml")
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    doc["spec"]["submissionMode"] = "K8sJob"
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    del doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["groupName"]
    errors = "\n".join(schema_errors(doc, "RayJob"))
    assert "'two' is not of type 'integer'" in errors
    assert "'K8sJob' is not one of" in errors
    assert "0 is not of type 'string'" in errors
    assert "'groupName' is a required property" in errors


def test_the_walker_follows_refs_lists_and_maps():
    """Container ports, resource limits (int-or-string quantities) and label maps are all reached."""
    resolver = registry().resolver()
    pod = {"$ref": "k8s-core-v1.32.json#/$defs/io.k8s.api.core.v1.PodTemplateSpec"}
    ok = {
        "metadata": {"labels": {"app": "x"}},
        "spec": {
            "containers": [
                {"name": "c", "ports": [{"containerPort": 1}], "resources": {"limits": {"cpu": 1}}}
            ]
        },
    }
    assert undeclared(ok, pod, resolver) == []
    bad = copy.deepcopy(ok)
    bad["spec"]["containers"][0]["ports"][0]["contianerPort"] = 2
    bad["spec"]["containers"][0]["resources"]["limit"] = {}
    assert undeclared(bad, pod, resolver) == [
        "$.spec.containers[0].ports[0].contianerPort",
        "$.spec.containers[0].resources.limit",
    ]


# ---- what the specs name exists and loads ---------------------------------------------------------------


def entrypoints() -> list[tuple[str, str]]:
    """(manifest, command) of the RayJob's entrypoint and of the RayCluster's entrypoint annotations."""
    out = [("kuberay-rayjob.yaml", load_manifest("kuberay-rayjob.yaml")["spec"]["entrypoint"])]
    annotations = load_manifest("kuberay-raycluster.yaml")["metadata"]["annotations"]
    out += [
        ("kuberay-raycluster.yaml", v) for k, v in annotations.items() if k.startswith(ENTRYPOINT_ANNOTATION)
    ]
    return out


def test_the_raycluster_names_the_graphs_and_autointerp_jobs():
    annotations = load_manifest("kuberay-raycluster.yaml")["metadata"]["annotations"]
    jobs = {k.removeprefix(ENTRYPOINT_ANNOTATION) for k in annotations if k.startswith(ENTRYPOINT_ANNOTATION)}
    assert jobs == {"graphs", "autointerp"}


@pytest.mark.parametrize(("manifest", "command"), entrypoints(), ids=lambda v: str(v).split("/")[-1])
def test_entrypoints_parse_and_their_configs_load(manifest, command):
    from raysae.autointerp.commands import load_autointerp_config
    from raysae.cli import build_parser
    from raysae.graphs.commands import load_graph_config
    from raysae.train.commands import load_train_settings

    argv = shlex.split(command)
    assert argv[0] == "python"
    if argv[1] == "-m":
        assert argv[2] == "raysae.cli", command
        args = argv[3:]
    else:
        assert (ROOT / argv[1]).is_file(), f"{manifest}: no {argv[1]}"
        assert argv[1] == "jobs/train.py", "only jobs/train.py is a script entrypoint"
        args = ["train", *argv[2:]]
    parsed = build_parser().parse_args(args)
    config = ROOT / parsed.config
    assert config.is_file(), f"{manifest}: no {parsed.config}"
    loaders = {
        "train": load_train_settings,
        "graphs": load_graph_config,
        "autointerp": load_autointerp_config,
    }
    assert loaders[parsed.command](str(config)) is not None


def test_rayjob_runtime_env_is_a_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    job = load_manifest("kuberay-rayjob.yaml")
    env = RuntimeEnv(**yaml.safe_load(job["spec"]["runtimeEnvYAML"]))
    assert env["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"


def test_rayservice_serves_the_applications_of_the_serve_config():
    """serveConfigV2 is a valid Serve deploy config whose applications are jobs/serve_config.yaml's,
    each import path resolves to a builder and its args build a ServeConfig."""
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from raysae.serve.app import config_from_args

    service = load_manifest("kuberay-rayservice.yaml")
    serve_v2 = yaml.safe_load(service["spec"]["serveConfigV2"])
    deploy = ServeDeploySchema.model_validate(serve_v2)
    assert deploy.http_options.host == "0.0.0.0" and deploy.http_options.port == 8000
    local = yaml.safe_load((ROOT / "jobs" / "serve_config.yaml").read_text())
    assert serve_v2["applications"] == local["applications"]
    for app in serve_v2["applications"]:
        module, attr = app["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        assert config_from_args(app["args"]) is not None


def test_runtime_env_file_leaves_torch_and_ray_to_the_image():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert all(not p.startswith(("torch", "ray")) for p in env["pip"]["packages"])


# ---- the cluster launcher file ----------------------------------------------------------------------------


def launcher_errors(config: dict[str, Any]) -> list[str]:
    """What ``ray up`` checks: Ray's ``prepare_config`` then ``validate_config`` (ray-schema.json)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except jsonschema.ValidationError as err:
        return [f"{err.json_path}: {err.message}"]
    return []


def test_launcher_config_passes_rays_validation():
    config = yaml.safe_load((CLUSTER / "local-cluster.yaml").read_text())
    assert launcher_errors(config) == []
    assert config["provider"]["type"] == "local"


@pytest.mark.parametrize(
    ("section", "key", "typo"), [(None, "setup_commands", "setup_comands"), ("auth", "ssh_user", "ssh_usr")]
)
def test_launcher_rejects_a_misspelled_field(section, key, typo):
    config = yaml.safe_load((CLUSTER / "local-cluster.yaml").read_text())
    node = config[section] if section else config
    node[typo] = node.pop(key)
    assert any(f"'{typo}' was unexpected" in e for e in launcher_errors(config))


def test_schema_files_are_documented():
    readme = (SCHEMAS / "README.md").read_text()
    for path in SCHEMAS.iterdir():
        if path.suffix in (".json", ".yaml", ".py"):
            assert path.name in readme, f"{path.name} is not described in cluster/schemas/README.md"
    assert "Apache-2.0" in readme
