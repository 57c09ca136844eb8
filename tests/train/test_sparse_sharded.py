"""The sparse TopK/BatchTopK step on DTensor-sharded SAEs against the dense references, on gloo CPU
processes (no Ray), in float64 so that differences are rounding only.

One spawn per mesh shape runs every case and writes one result file per rank. A case trains three
copies side by side: the unsharded dense reference on the whole batch, the dense sharded path
(``compute_sharded_loss``) and the sparse sharded path on this rank's rows; it records the largest
differences in loss, parts, latents, firing counts, gradients and parameters after Adam steps (AuxK on,
a third of the latents dead). Negative controls: an all-reduce backward for the model-parallel sum
(gradients scale by the model size) and a missing all-reduce of b_dec's encoder gradient. A ``Trainer``
run checks the dispatch and the metrics it reads (loss, L0, explained variance, dead latents).
"""

from __future__ import annotations

import copy
import datetime
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

from raysae.config import SAEConfig, TrainerConfig
from raysae.dictionaries import build_dictionary
from raysae.dictionaries.base import LATENT, SparseDictionary
from raysae.train import Trainer
from raysae.train import sparse_sharded as ss
from raysae.train.mesh import build_mesh, data_rank
from raysae.train.sharding import (
    compute_sharded_loss,
    distribute_dictionary,
    full_state_dict,
    placements_for,
    reduce_gradients_,
    to_full,
)

B, D, S, STEPS = 8, 6, 16, 4
COMMON: dict[str, Any] = {"d_model": D, "d_sae": S, "top_k": 3, "dtype": "float64"}
TRANSCODER: dict[str, Any] = {
    "architecture": "transcoder",
    "hook_point_in": "h.in",
    "hook_point_out": "h.out",
}
CASES: dict[str, SAEConfig] = {
    "sae-topk": SAEConfig(**COMMON, act_fn="topk"),
    "sae-batchtopk": SAEConfig(**COMMON, act_fn="batchtopk"),
    # A transcoder does not subtract b_dec before encoding: the other gather_active branch.
    "transcoder-topk": SAEConfig(**COMMON, **TRANSCODER, act_fn="topk"),
    # k above a model shard's width (8 latents): every latent of a shard is a candidate.
    "sae-topk-widek": SAEConfig(**(COMMON | {"top_k": 12}), act_fn="topk"),
}
SMALL = ["sae-topk", "sae-batchtopk"]
TOL = 1e-10
DEAD = torch.arange(S) % 3 == 0
AUX: dict[str, Any] = {"dead_mask": DEAD, "aux_k": 4, "aux_k_coefficient": 0.5}


class CommLog(TorchDispatchMode):
    """Per-rank input sizes of every all-gather and all-reduce issued inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.gathers: list[int] = []
        self.reduces: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented
        flat = [t for a in args for t in (a if isinstance(a, list | tuple) else [a])]
        sizes = [t.numel() for t in flat if isinstance(t, Tensor)]
        if "gather" in str(func):
            self.gathers.append(min(sizes))
        elif "allreduce" in str(func):
            self.reduces.append(max(sizes))
        return func(*args, **(kwargs or {}))


def _batch(cfg: SAEConfig, rows: slice) -> Tensor | dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = 1.5 * torch.randn(B, D, dtype=torch.float64, generator=g)
    if cfg.architecture == "sae":
        return x[rows]
    y = torch.tanh(x) @ torch.randn(D, D, dtype=torch.float64, generator=g)
    return {"h.in": x[rows], "h.out": y[rows]}


def _reference(cfg: SAEConfig) -> SparseDictionary:
    torch.manual_seed(0)
    model = build_dictionary(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))  # non-zero biases: every gradient term is exercised
        model.set_decoder_norm_(0.8)
        model.input_scale.fill_(0.9)
        model.output_scale.fill_(1.1)
    return model


def _maxdiff(a: Tensor, b: Tensor) -> float:
    a, b = to_full(a).detach(), to_full(b).detach()
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _naive_sum_over_model(t: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """The model-parallel sum as a plain differentiable all-reduce: its backward all-reduces too."""
    return t if group is None else dist.nn.functional.all_reduce(t, group=group)


def _grads(model: SparseDictionary) -> dict[str, Tensor]:
    return {n: to_full(p.grad) for n, p in model.named_parameters()}


def run_case(name: str, mesh: Any, dp: int, mp_: int) -> dict[str, Any]:
    cfg = CASES[name]
    ref = _reference(cfg)
    dense, sparse = (distribute_dictionary(copy.deepcopy(ref), mesh) for _ in range(2))
    opts = [torch.optim.Adam(m.parameters(), lr=0.01) for m in (ref, dense, sparse)]
    rows = B // dp
    r = data_rank(mesh)
    full, local = _batch(cfg, slice(None)), _batch(cfg, slice(r * rows, (r + 1) * rows))
    # The trainer may hand a latent-sharded dead mask; the sparse path must read the full one.
    dead_sharded = distribute_tensor(DEAD.clone(), mesh, placements_for((LATENT,), mesh))
    keys = ("loss", "dense_loss", "parts", "acts", "recon", "grads", "dense_grads", "params")
    res: dict[str, Any] = dict.fromkeys(keys, 0.0) | {"firing_equal": True, "rows": set(), "aux": []}
    log = CommLog()
    for step in range(STEPS):
        kw = {} if step == 0 else AUX
        out_ref = ref.compute_loss(full, **kw)
        out_ref.loss.backward()
        kw_sharded = kw | {"dead_mask": dead_sharded} if step == 2 else kw
        out_dense = compute_sharded_loss(dense, local, **kw_sharded)
        out_dense.loss.backward()
        with log:
            out = ss.compute_sharded_sparse_loss(sparse, local, **kw_sharded)
            out.loss.backward()
        assert isinstance(out.sparse_latents, ss.ShardedSparseLatents) and out.feature_acts is None
        for m in (dense, sparse):
            reduce_gradients_(m)
        res["grads_reduced"] = all(p.grad.placements == p.placements for p in sparse.parameters())
        res["loss"] = max(res["loss"], abs(float(out.loss.detach()) - float(out_ref.loss.detach())))
        res["dense_loss"] = max(
            res["dense_loss"], abs(float(out.loss.detach()) - float(to_full(out_dense.loss.detach())))
        )
        assert set(out.parts) == set(out_ref.parts), (out.parts, out_ref.parts)
        res["parts"] = max(
            [res["parts"], *(abs(float(out.parts[k]) - float(v)) for k, v in out_ref.parts.items())]
        )
        res["aux"].append(float(out_ref.parts.get("aux_k", 0.0)))
        res["acts"] = max(res["acts"], _maxdiff(out.latents(), out_ref.feature_acts))
        res["recon"] = max(res["recon"], _maxdiff(out.reconstruction, out_ref.reconstruction),
                           _maxdiff(out.label, out_ref.label))  # fmt: skip
        fired, fired_ref = to_full(out.firing_counts()), out_ref.firing_counts()
        res["firing_equal"] &= bool(torch.equal(fired, fired_ref))
        res["rows"].add(out.n_rows)
        res["nonzero"] = int((out_ref.feature_acts != 0).sum())
        g_ref, g_dense, g_sparse = _grads(ref), _grads(dense), _grads(sparse)
        res["grads"] = max(res["grads"], *(_maxdiff(g, g_ref[n]) for n, g in g_sparse.items()))
        res["dense_grads"] = max(res["dense_grads"], *(_maxdiff(g, g_dense[n]) for n, g in g_sparse.items()))
        for m in (ref, dense, sparse):
            m.project_decoder_grad_()
        for opt in opts:
            opt.step()
            opt.zero_grad()
        for m in (ref, dense, sparse):
            m.set_decoder_norm_(0.8)
    ref_state = ref.state_dict()
    for m in (dense, sparse):
        state = full_state_dict(m)
        res["params"] = max(res["params"], *(_maxdiff(state[k], v) for k, v in ref_state.items()))
    res["gathers"], res["reduces"] = log.gathers, log.reduces
    res["negative"] = _negative_controls(sparse, ref, local, full) if mp_ > 1 else {}
    return res


def _negative_controls(
    sparse: SparseDictionary, ref: SparseDictionary, local: Any, full: Any
) -> dict[str, Any]:
    """Gradients of one step with each model-parallel fix undone, divided by the reference's."""
    for m in (sparse, ref):
        m.zero_grad(set_to_none=True)
    ref.compute_loss(full, **AUX).loss.backward()
    g_ref = _grads(ref)
    out: dict[str, Any] = {}
    undo = {"sum_over_model": _naive_sum_over_model, "copy_to_model": lambda t, group: t}
    for attr, replacement in undo.items():
        original = getattr(ss, attr)
        setattr(ss, attr, replacement)
        try:
            sparse.zero_grad(set_to_none=True)
            ss.compute_sharded_sparse_loss(sparse, local, **AUX).loss.backward()
        finally:
            setattr(ss, attr, original)
        reduce_gradients_(sparse)
        ratios = {}
        for n, g in _grads(sparse).items():
            nz = g_ref[n].abs() > 1e-8
            ratios[n] = (float((g[nz] / g_ref[n][nz]).min()), float((g[nz] / g_ref[n][nz]).max()))
        out[attr] = ratios
    return out


def run_trainer(name: str, mesh: Any, dp: int) -> dict[str, Any]:
    """Sparse sharded ``Trainer.step`` against the unsharded dense one: metrics, dead counters, params."""
    cfg = CASES[name]
    kw = {"lr": 1e-2, "batch_size": B, "total_training_tokens": B * STEPS, "dead_after_tokens": B * 2,
          "aux_k": 4, "aux_k_coefficient": 0.5}  # fmt: skip
    ref_t = Trainer(TrainerConfig(**kw, sparse_topk=False), progress=False)
    sharded_t = Trainer(TrainerConfig(**kw, sparse_topk=True), progress=False)
    ref_t.setup(_reference(cfg))
    sharded_t.setup(distribute_dictionary(_reference(cfg), mesh))
    for t in (ref_t, sharded_t):  # a third of the latents start dead, so AuxK runs from the first step
        t.state.tokens_since_fired[DEAD] = 2 * B
    rows = B // dp
    r = data_rank(mesh)
    names = ("loss/total", "loss/mse", "loss/aux_k", "metrics/l0", "metrics/explained_variance",
             "metrics/dead_fraction", "metrics/dense_fraction", "progress/tokens")  # fmt: skip
    worst, metrics, sparse_path = 0.0, [], True
    for step in range(STEPS):
        g = torch.Generator().manual_seed(10 + step)
        batch = 2 * torch.randn(B, D, dtype=torch.float64, generator=g) + 0.5
        a, b = ref_t.step(batch), sharded_t.step(batch[r * rows : (r + 1) * rows])
        sparse_path &= isinstance(b.sparse_latents, ss.ShardedSparseLatents)
        ma, mb = ref_t.metrics(a), sharded_t.metrics(b)
        metrics.append({k: (ma[k], mb[k]) for k in names})
        worst = max(worst, *(abs(ma[k] - mb[k]) for k in names))
    state = full_state_dict(sharded_t.dictionary)
    ref_state = ref_t.dictionary.state_dict()
    return {
        "metrics": metrics,
        "metric_diff": worst,
        "param_diff": max(_maxdiff(state[k], v) for k, v in ref_state.items()),
        "tsf_equal": bool(torch.equal(ref_t.state.tokens_since_fired, sharded_t.state.tokens_since_fired)),
        "sparse_path": sparse_path,
    }


def _worker(rank: int, world: int, port: int, meshes: list[str], out: str) -> None:
    """Every mesh of this world size in one process group (one spawn per world size, not per mesh)."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    results: dict[str, Any] = {}
    try:
        for mesh_name in meshes:
            dp, mp_, cases = MESHES[mesh_name]
            mesh = build_mesh(dp, mp_, "cpu")
            for name in cases:
                try:
                    results[f"{mesh_name}/{name}"] = run_case(name, mesh, dp, mp_)
                except Exception:
                    results[f"{mesh_name}/{name}"] = {"error": traceback.format_exc()}
            for name in SMALL:
                try:
                    results[f"{mesh_name}/trainer-{name}"] = run_trainer(name, mesh, dp)
                except Exception:
                    results[f"{mesh_name}/trainer-{name}"] = {"error": traceback.format_exc()}
    finally:
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MESHES = {"dp2": (2, 1, list(CASES)), "mp2": (1, 2, list(CASES)), "dp2mp2": (2, 2, SMALL)}
MESH_CASES = [(mesh, case) for mesh, (_, _, cases) in MESHES.items() for case in cases]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[dict[str, Any]]]:
    """Per-rank results of one mesh (keys ``"case"``), spawning its world size's processes on first use."""
    cache: dict[int, list[dict[str, Any]]] = {}

    def results(mesh: str) -> list[dict[str, Any]]:
        dp, mp_, _ = MESHES[mesh]
        world = dp * mp_
        if world not in cache:
            meshes = [m for m, (d, p, _) in MESHES.items() if d * p == world]
            tmp = tmp_path_factory.mktemp(f"world{world}")
            mp.spawn(_worker, args=(world, _free_port(), meshes, str(tmp)), nprocs=world, join=True)
            cache[world] = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]
        prefix = f"{mesh}/"
        return [
            {k.removeprefix(prefix): v for k, v in r.items() if k.startswith(prefix)} for r in cache[world]
        ]

    return results


@pytest.mark.parametrize(("mesh", "case"), MESH_CASES, ids=[f"{m}-{c}" for m, c in MESH_CASES])
def test_sparse_sharded_matches_dense(spawned: Callable, mesh: str, case: str) -> None:
    dp, mp_, _ = MESHES[mesh]
    for rank, results in enumerate(spawned(mesh)):
        res = results[case]
        assert "error" not in res, f"rank {rank}: {res.get('error')}"
        assert res["nonzero"] > 0 and res["grads_reduced"] and res["firing_equal"] and res["rows"] == {B}
        assert res["aux"][0] == 0.0 and all(a > 0 for a in res["aux"][1:]), res["aux"]  # AuxK really ran
        for key in ("loss", "dense_loss", "parts", "acts", "recon", "grads", "dense_grads", "params"):
            assert res[key] < TOL, f"rank {rank} {mesh} {case}: {key} differs by {res[key]}"
        # Selection sends at most k candidates per shard and row (the whole shard only when k exceeds
        # it); all-reduces carry [rows, 2·d_model] decodes and scalars, never latent-sized tensors.
        latents_per_rank = (B // dp) * S // mp_
        cap = latents_per_rank if case.endswith("widek") else latents_per_rank - 1
        assert all(n <= cap for n in res["gathers"]), (cap, res["gathers"])
        assert all(n <= (B // dp) * 2 * D for n in res["reduces"]), res["reduces"]
        if mp_ > 1:
            assert res["gathers"], "a sharded top-k must exchange candidates"


@pytest.mark.parametrize("mesh", ["mp2", "dp2mp2"])
def test_negative_controls_fail(spawned: Callable, mesh: str) -> None:
    """Without the identity backward of the model-parallel sum, the gradients that flow through it
    (encoder, decoder) are the model size times too large; without the all-reduce of b_dec's encoder
    gradient, b_dec's gradient is wrong while the others stay right. So the tests above can fail."""
    _, mp_, _ = MESHES[mesh]
    for results in spawned(mesh):
        neg = results["sae-topk"]["negative"]
        for name in ("W_enc", "b_enc", "W_dec"):
            lo, hi = neg["sum_over_model"][name]
            assert lo == pytest.approx(mp_, rel=1e-9) and hi == pytest.approx(mp_, rel=1e-9), (name, lo, hi)
        lo, hi = neg["copy_to_model"]["b_dec"]
        assert abs(lo - 1) > 1e-3 or abs(hi - 1) > 1e-3, (lo, hi)
        for name in ("W_enc", "b_enc", "W_dec"):
            assert neg["copy_to_model"][name] == pytest.approx((1.0, 1.0), rel=1e-9)


@pytest.mark.parametrize("mesh", list(MESHES))
@pytest.mark.parametrize("case", SMALL)
def test_trainer_takes_the_sparse_sharded_path(spawned: Callable, mesh: str, case: str) -> None:
    """``Trainer.step`` on a sharded SAE with ``sparse_topk`` runs the sparse sharded loss and follows the
    unsharded dense trainer: loss parts, L0, explained variance, dead/dense fractions, tokens-since-fired
    counters and parameters."""
    for rank, results in enumerate(spawned(mesh)):
        res = results[f"trainer-{case}"]
        assert "error" not in res, f"rank {rank}: {res.get('error')}"
        assert res["sparse_path"] and res["tsf_equal"]
        assert res["metric_diff"] < 1e-9, res["metrics"]
        assert res["param_diff"] < 1e-9
        assert res["metrics"][0]["loss/aux_k"][0] > 0  # the forced-dead latents ran AuxK
