"""``raysae graphs``: a JSONL of prompts → graphs written as they finish, in-process and on Ray."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from graph_helpers import random_transcoders, tiny_llama

from raysae.config.graphs import GraphConfig
from raysae.dictionaries import build_dictionary
from raysae.graphs.commands import add_parser
from raysae.graphs.job import GraphJobError, read_prompts, run_graphs

PROMPTS = [{"prompt": "The cat sat on the", "id": "a"}, {"prompt": "One two three four"}]


@pytest.fixture(scope="module")
def folders(tokenizer, tmp_path_factory):
    """A tiny float32 Llama folder, a saved CLT and saved per-layer transcoders, and a prompts file."""
    root = tmp_path_factory.mktemp("graphs-job")
    lm = tiny_llama(tokenizer, 2)
    lm.hf_model.to(torch.float32).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    torch.manual_seed(0)
    clt = build_dictionary(
        {
            "architecture": "clt",
            "d_model": 32,
            "d_sae": 16,
            "act_fn": "relu",
            "hook_points_in": ["blocks.0.ln2.hook_out", "blocks.1.ln2.hook_out"],
            "hook_points_out": ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"],
        }
    )
    clt.save(root / "clt")
    for k, tc in enumerate(random_transcoders([0, 1])):
        tc.to(torch.float32).save(root / f"tc{k}")
    (root / "prompts.jsonl").write_text("\n".join(json.dumps(p) for p in PROMPTS) + "\n")
    return root


def _cfg(root, **kw) -> GraphConfig:
    base = {
        "model": {"name": str(root / "model"), "device": "cpu"},
        "dictionaries": [str(root / "clt")],
        "prompts": str(root / "prompts.jsonl"),
        "max_feature_nodes": 12,
        "batch_size": 8,
    }
    return GraphConfig.model_validate({**base, **kw})


def test_in_process_writes_viewer_files(folders, tmp_path):
    result = run_graphs(_cfg(folders, output_dir=str(tmp_path)), use_ray=False)
    assert len(result.graph_ids) == 2 and not result.failed
    for gid in result.graph_ids:
        v = json.loads((tmp_path / f"{gid}.json").read_text())
        assert v["metadata"]["scan"] == "clt" and v["links"]
    again = run_graphs(_cfg(folders, output_dir=str(tmp_path)), use_ray=False)
    assert sorted(again.graph_ids) == sorted(result.graph_ids)  # same identity: the files are replaced
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_prompts_sharing_a_pass_write_the_same_graphs(folders, tmp_path):
    alone = run_graphs(_cfg(folders, output_dir=str(tmp_path / "alone")), use_ray=False)
    shared = run_graphs(_cfg(folders, output_dir=str(tmp_path / "shared"), prompts_per_pass=2), use_ray=False)
    assert sorted(shared.graph_ids) == sorted(alone.graph_ids) and len(alone.graph_ids) == 2
    for gid in alone.graph_ids:
        a, b = (json.loads((tmp_path / d / f"{gid}.json").read_text()) for d in ("alone", "shared"))
        assert [n["node_id"] for n in a["nodes"]] == [n["node_id"] for n in b["nodes"]]
        weights = {(e["source"], e["target"]): e["weight"] for e in a["links"]}
        assert {(e["source"], e["target"]) for e in b["links"]} == set(weights)
        for e in b["links"]:
            assert e["weight"] == pytest.approx(weights[(e["source"], e["target"])], rel=1e-5, abs=1e-7)


def test_failed_prompts_are_reported_and_skipped(folders, tmp_path):
    result = run_graphs(_cfg(folders, output_dir=str(tmp_path), memory_budget_gb=1e-7), use_ray=False)
    assert not result.graph_ids and len(result.failed) == 2
    assert "memory_budget_gb" in result.failed[0][1]


@pytest.mark.slow
def test_ray_pool_writes_to_the_store(folders, store, ray_session):
    tcs = [str(folders / "tc0"), str(folders / "tc1")]
    cfg = _cfg(folders, dictionaries=tcs, replicas=2, store={"uri": store.uri, "db": store.db_name})
    result = run_graphs(cfg, use_ray=True)
    assert len(result.graph_ids) == 2
    docs = store.list_graphs("tc0+tc1")
    assert sorted(d["graph_id"] for d in docs) == sorted(result.graph_ids)
    assert {d["prompt_id"] for d in docs} == {"a", 2}


def test_bad_inputs_name_the_problem(folders, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(GraphJobError, match=r"bad.jsonl:2: no text field 'prompt'"):
        read_prompts(_cfg(folders, prompts=str(bad)))
    with pytest.raises(GraphJobError, match="nowhere to write"):
        run_graphs(_cfg(folders), use_ray=False)


def test_command_line(folders, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="raysae")
    add_parser(parser.add_subparsers(dest="command", required=True))
    config = tmp_path / "graphs.json"
    config.write_text(json.dumps({"graphs": _cfg(folders).model_dump(mode="json")}))
    args = parser.parse_args(["graphs", str(config), "--local", "--output-dir", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert "2 graphs written" in capsys.readouterr().out
    args = parser.parse_args(["graphs", str(config), "--local", "--prompts", str(tmp_path / "missing.jsonl")])
    assert args.func(args) == 2
    assert "raysae graphs: error:" in capsys.readouterr().err
