"""DTensor sharding of dictionaries against the unsharded reference, on gloo CPU processes (no Ray).

One spawn per mesh shape runs every case and writes one result file per rank; the tests read them.
Each case trains a reference and a sharded copy side by side (float64, so differences are rounding
only) and records the largest differences in loss, activations, gradients, clip norm and parameters.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils._python_dispatch import TorchDispatchMode

from raysae.config import CLTConfig, CrossCoderConfig, SAEConfig
from raysae.dictionaries import build_dictionary
from raysae.dictionaries.base import LATENT, SparseDictionary
from raysae.train.mesh import build_mesh, data_rank
from raysae.train.sharding import (
    clip_grad_norm_,
    compute_sharded_loss,
    distribute_batch,
    distribute_dictionary,
    full_state_dict,
    gather_dictionary,
    load_full_state_dict,
    placements_for,
    reduce_gradients_,
    to_full,
)

B, D, S, STEPS = 8, 6, 16, 3
COMMON: dict[str, Any] = {"d_model": D, "d_sae": S, "top_k": 3, "dtype": "float64"}
ACTS: dict[str, dict[str, Any]] = {
    "topk": {"act_fn": "topk"},
    "batchtopk": {"act_fn": "batchtopk"},
    "jumprelu": {"act_fn": "jumprelu", "sparsity_penalty": "l0", "jumprelu_threshold_init": 0.3,
                 "jumprelu_bandwidth": 1.0, "sparsity_coefficient": 0.1},
    "relu": {"act_fn": "relu", "sparsity_penalty": "tanh", "sparsity_coefficient": 0.1},
}  # fmt: skip
CLT_HOOKS = {"hook_points_in": ["a.in", "b.in", "c.in"], "hook_points_out": ["a.out", "b.out", "c.out"]}
CASES: dict[str, Any] = {
    **{f"sae-{a}": SAEConfig(**COMMON, **kw) for a, kw in ACTS.items()},
    "sae-topk-glu": SAEConfig(**COMMON, **ACTS["topk"], glu_encoder=True),
    # k above a model shard's width (8 latents): every latent of a shard is a candidate.
    "sae-topk-widek": SAEConfig(**(COMMON | {"top_k": 12}), **ACTS["topk"]),
    "sae-batchtopk-widek": SAEConfig(**(COMMON | {"top_k": 12}), **ACTS["batchtopk"]),
    "transcoder-batchtopk": SAEConfig(
        architecture="transcoder", hook_point_in="h.in", hook_point_out="h.out", **COMMON, **ACTS["batchtopk"]
    ),
    "clt-topk": CLTConfig(**COMMON, **ACTS["topk"], **CLT_HOOKS),
    "clt-batchtopk": CLTConfig(**COMMON, **ACTS["batchtopk"], **CLT_HOOKS),
    "clt-jumprelu": CLTConfig(**COMMON, **ACTS["jumprelu"], **CLT_HOOKS),
    "crosscoder-topk": CrossCoderConfig(**COMMON, **ACTS["topk"], hook_points=["x", "y"]),
    "crosscoder-relu": CrossCoderConfig(**COMMON, **ACTS["relu"], hook_points=["x", "y"]),
}
CASES_LATENT = {name: (len(getattr(c, "hook_points_in", [0])), S) for name, c in CASES.items()}
SMALL = ["sae-topk", "sae-batchtopk", "clt-batchtopk", "crosscoder-topk"]
TOL = 1e-10


class GatherLog(TorchDispatchMode):
    """Records every all-gather: (the DTensor op that caused it, per-rank input numel).

    As in CommDebugMode, DTensor ops return NotImplemented so DTensor desugars them first; the mode
    then sees the local ops and collectives, including the ones ``sharded_kth_value`` issues.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_dtensor_op = ""
        self.gathers: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if any(issubclass(t, DTensor) for t in types):
            self.last_dtensor_op = str(func)
            return NotImplemented
        if "gather" in str(func):
            sizes = [a.numel() for a in args if isinstance(a, Tensor)]
            self.gathers.append((self.last_dtensor_op, min(sizes)))
        return func(*args, **(kwargs or {}))


def _batch(cfg: Any, rows: slice) -> Tensor | dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    hooks = list(dict.fromkeys(getattr(cfg, "hooks", [])))
    if isinstance(cfg, SAEConfig) and cfg.architecture == "sae":
        return 1.5 * torch.randn(B, D, dtype=torch.float64, generator=g)[rows]
    return {h: 1.5 * torch.randn(B, D, dtype=torch.float64, generator=g)[rows] for h in hooks}


def _reference(cfg: Any) -> SparseDictionary:
    torch.manual_seed(0)
    model = build_dictionary(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        model.set_decoder_norm_(0.8)
        model.input_scale.fill_(0.9)
        model.output_scale.fill_(1.1)
    return model


def _maxdiff(a: Tensor, b: Tensor) -> float:
    a, b = to_full(a).detach(), b.detach()
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def run_case(name: str, mesh: Any, rank_rows: int, dp: int) -> dict[str, Any]:
    cfg = CASES[name]
    ref = _reference(cfg)
    model = distribute_dictionary(copy.deepcopy(ref), mesh)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=0.01)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    rows = B // dp
    full, local = _batch(cfg, slice(None)), _batch(cfg, slice(rank_rows * rows, (rank_rows + 1) * rows))
    dead = (torch.arange(S) % 3 == 0).expand(ref.latent_shape)
    kw = {"dead_mask": dead, "aux_k": 4, "aux_k_coefficient": 0.5}
    # The trainer may keep its dead mask latent-sharded; compute_sharded_loss must replicate it.
    dead_sharded = distribute_tensor(
        dead.contiguous(), mesh, placements_for(("g",) * (dead.dim() - 1) + (LATENT,), mesh)
    )
    res: dict[str, Any] = {k: 0.0 for k in ("loss", "parts", "acts", "grads", "clip", "params", "nonzero")}
    log = GatherLog()
    for step in range(STEPS):
        out_ref = ref.compute_loss(full, **kw)
        out_ref.loss.backward()
        with log:  # the forward and backward must not gather pre-activations
            out = compute_sharded_loss(model, local, **(kw | {"dead_mask": dead_sharded} if step % 2 else kw))
            out.loss.backward()
        reduce_gradients_(model)
        res["grads_reduced"] = all(p.grad.placements == p.placements for p in model.parameters())
        ref.project_decoder_grad_(), model.project_decoder_grad_()
        clip_ref = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5))
        clip = clip_grad_norm_(model, 0.5)
        res["loss"] = max(res["loss"], abs(float(to_full(out.loss.detach())) - float(out_ref.loss.detach())))
        res["parts"] = max(
            [res["parts"], *(abs(out.parts[k].item() - v.item()) for k, v in out_ref.parts.items())]
        )
        res["acts"] = max(res["acts"], _maxdiff(out.feature_acts, out_ref.feature_acts))
        res["nonzero"] = int((out_ref.feature_acts != 0).sum())
        res["clip"] = max(res["clip"], abs(clip - clip_ref))
        res["clipped"] = clip_ref > 0.5
        grads = dict(ref.named_parameters())
        res["grads"] = max(
            res["grads"], *(_maxdiff(p.grad, grads[n].grad) for n, p in model.named_parameters())
        )
        opt_ref.step(), opt.step(), opt_ref.zero_grad(), opt.zero_grad()
        ref.set_decoder_norm_(0.8), model.set_decoder_norm_(0.8)
    ref.eval(), model.eval()  # inference: BatchTopK's estimated threshold, no top-k
    z_ref = ref.encode(ref.prepare_input(full))
    res["eval"] = _maxdiff(model.encode(model.prepare_input(distribute_batch(local, mesh))), z_ref)
    ref.train(), model.train()
    state, ref_state = full_state_dict(model), ref.state_dict()
    res["params"] = max(_maxdiff(state[k], v) for k, v in ref_state.items())
    res["keys"] = sorted(state) == sorted(ref_state)
    res["aux_k"] = "aux_k" in out_ref.parts
    res["gathers"] = log.gathers
    # Export, re-import and the plain copy.
    plain = gather_dictionary(model)
    res["gathered"] = max(_maxdiff(plain.state_dict()[k], v) for k, v in ref_state.items())
    load_full_state_dict(model, _reference(cfg).state_dict())
    res["reloaded"] = max(
        _maxdiff(v, _reference(cfg).state_dict()[k]) for k, v in full_state_dict(model).items()
    )
    return res


def _worker(rank: int, world: int, port: int, dp: int, mp_: int, cases: list[str], out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    results: dict[str, Any] = {}
    try:
        try:
            build_mesh(world, 2, "cpu")
        except ValueError as err:
            results["mesh_error"] = str(err)
        mesh = build_mesh(dp, mp_, "cpu")
        rank_rows = data_rank(mesh)
        try:
            distribute_dictionary(build_dictionary(SAEConfig(**(COMMON | {"d_sae": 15}))), mesh)
        except ValueError as err:
            results["divisible_error"] = str(err)
        try:
            distribute_batch(torch.zeros(2 + rank_rows, D), mesh)
        except ValueError as err:
            results["rows_error"] = str(err)
        for name in cases:
            try:
                results[name] = run_case(name, mesh, rank_rows, dp)
            except Exception:
                results[name] = {"error": traceback.format_exc()}
    finally:
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp: Path, dp: int, mp_: int, cases: list[str]) -> list[dict[str, Any]]:
    world = dp * mp_
    mp.spawn(_worker, args=(world, _free_port(), dp, mp_, cases, str(tmp)), nprocs=world, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


MESHES = {"mp2": (1, 2, list(CASES)), "dp2": (2, 1, list(CASES)), "dp2mp2": (2, 2, SMALL)}
MESH_CASES = [(mesh, case) for mesh, (_, _, cases) in MESHES.items() for case in cases]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[dict[str, Any]]]:
    """Per-rank results of one mesh, spawning its processes on first use."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def results(mesh: str) -> list[dict[str, Any]]:
        if mesh not in cache:
            dp, mp_, cases = MESHES[mesh]
            cache[mesh] = _spawn(tmp_path_factory.mktemp(mesh), dp, mp_, cases)
        return cache[mesh]

    return results


@pytest.mark.parametrize(("mesh", "case"), MESH_CASES, ids=[f"{m}-{c}" for m, c in MESH_CASES])
def test_sharded_matches_reference(spawned: Callable, mesh: str, case: str) -> None:
    dp, mp_, _ = MESHES[mesh]
    per_rank = spawned(mesh)
    for rank, results in enumerate(per_rank):
        res = results[case]
        assert "error" not in res, f"rank {rank}: {res.get('error')}"
        assert res["nonzero"] > 0 and res["keys"] and res["clipped"] and res["grads_reduced"]
        assert res["aux_k"] == (CASES[case].act_fn in ("topk", "batchtopk"))
        for key in ("loss", "parts", "acts", "grads", "clip", "eval", "params", "gathered", "reloaded"):
            assert res[key] < TOL, f"rank {rank} {case}: {key} differs by {res[key]}"
        # Top-k selection sends k candidates per shard and row; nothing gathers latent-sized tensors.
        # (DTensor itself all-gathers [batch, d_model]-sized reconstruction gradients in backward.)
        latents_per_rank = (B // dp) * math.prod(CASES_LATENT[case]) // mp_
        cap = latents_per_rank if case.endswith("widek") else latents_per_rank - 1
        assert all(n <= cap for _, n in res["gathers"]), (cap, res["gathers"])
        selections = ("topk", "sort", "min.dim", "max.dim", "kthvalue")
        assert not [op for op, _ in res["gathers"] if any(s in op for s in selections)], res["gathers"]
        if mp_ > 1 and CASES[case].act_fn in ("topk", "batchtopk"):
            assert res["gathers"], "a sharded top-k must exchange candidates"


@pytest.mark.parametrize("mesh", list(MESHES))
def test_mesh_errors(spawned: Callable, mesh: str) -> None:
    """A mesh larger than the world, a d_sae the model dim cannot split, or data ranks with different
    row counts fail with a clear message (on every rank, so none hangs)."""
    dp, mp_, _ = MESHES[mesh]
    for results in spawned(mesh):
        assert f"= {dp * mp_ * 2} does not match the world size {dp * mp_}" in results["mesh_error"]
        if mp_ > 1:
            assert f"d_sae=15 is not divisible by model_parallel_size={mp_}" in results["divisible_error"]
        else:
            assert "divisible_error" not in results
        if dp > 1:
            assert "data-parallel ranks hold different row counts [2, 3]" in results["rows_error"]
        else:
            assert "rows_error" not in results


def test_single_process_mesh() -> None:
    """Without a process group, a 1x1 mesh starts a private one; anything larger fails clearly."""
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match=r"needs torch\.distributed initialised with world size 4"):
        build_mesh(2, 2, "cpu")
    with pytest.raises(ValueError, match="must be >= 1"):
        build_mesh(0, 1, "cpu")
    try:
        mesh = build_mesh(1, 1, "cpu")
        with pytest.raises(ValueError, match=r"1 x 2 = 2 does not match the world size 1"):
            build_mesh(1, 2, "cpu")
        res = run_case("sae-batchtopk", mesh, 0, 1)
        assert all(res[k] == 0.0 for k in ("loss", "acts", "grads", "params")), res
    finally:
        dist.destroy_process_group()
