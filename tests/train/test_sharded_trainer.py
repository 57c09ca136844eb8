"""``Trainer.step`` on a DTensor-sharded dictionary follows the unsharded run step for step.

Two gloo processes (no Ray) train a sharded copy (model-parallel 2, or data-parallel 2 with each rank
holding half of every batch) beside an unsharded reference fed the whole batches; losses, metrics and
final parameters must agree within float64 rounding.
"""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raysae.config import CLTConfig, CrossCoderConfig, SAEConfig, TrainerConfig
from raysae.dictionaries import build_dictionary
from raysae.train import Trainer
from raysae.train.mesh import build_mesh
from raysae.train.sharding import distribute_dictionary, full_state_dict

D, S, B, STEPS = 8, 32, 16, 12
CASES = {
    "sae-topk": SAEConfig(d_model=D, d_sae=S, act_fn="topk", top_k=4, dtype="float64"),
    "sae-jumprelu": SAEConfig(
        d_model=D, d_sae=S, act_fn="jumprelu", sparsity_penalty="l0", sparsity_coefficient=0.1,
        jumprelu_threshold_init=0.1, jumprelu_bandwidth=0.5, dtype="float64",
    ),
    "clt-topk": CLTConfig(
        d_model=D, d_sae=S, act_fn="topk", top_k=4, dtype="float64",
        hook_points_in=["a", "b"], hook_points_out=["c", "d"],
    ),
    "crosscoder-batchtopk": CrossCoderConfig(
        d_model=D, d_sae=S, act_fn="batchtopk", top_k=4, dtype="float64", hook_points=["x", "y"]
    ),
}  # fmt: skip


def _batches(cfg, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    hooks = list(dict.fromkeys([*getattr(cfg, "hooks", [])]))
    out = []
    for _ in range(STEPS + 1):
        if isinstance(cfg, SAEConfig):
            out.append(torch.randn(B, D, generator=g, dtype=torch.float64) * 3 + 1)
        else:
            out.append({h: torch.randn(B, D, generator=g, dtype=torch.float64) * 3 + 1 for h in hooks})
    return out


def _slice(batch, lo: int, hi: int):
    return batch[lo:hi] if isinstance(batch, torch.Tensor) else {h: t[lo:hi] for h, t in batch.items()}


def _worker(rank: int, port: int, dp: int, mp_size: int, out: str) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=2)
        mesh = build_mesh(dp, mp_size, "cpu")
        results = {}
        for name, cfg in CASES.items():
            tcfg = TrainerConfig(
                lr=1e-2, batch_size=B, total_training_tokens=B * STEPS, log_every_steps=3,
                dead_after_tokens=B * 2, aux_k_coefficient=0.1, aux_k=4,
            )  # fmt: skip
            batches = _batches(cfg)
            ref, sharded = Trainer(tcfg, progress=False), Trainer(tcfg, progress=False)
            torch.manual_seed(0)
            dense = build_dictionary(cfg)
            ref.initialize(dense, batches[:1])
            ref.setup(dense)
            torch.manual_seed(0)
            plain = build_dictionary(cfg)
            sharded.initialize(plain, batches[:1])
            sharded.setup(distribute_dictionary(plain, mesh))
            lo, hi = (rank * B // dp, (rank + 1) * B // dp) if dp > 1 else (0, B)
            losses = []
            for batch in batches[1:]:
                a = ref.step(batch)
                b = sharded.step(_slice(batch, lo, hi))
                ma, mb = ref.metrics(a), sharded.metrics(b)
                losses.append((ma["loss/total"], mb["loss/total"], ma["metrics/l0"], mb["metrics/l0"]))
            state = full_state_dict(sharded.dictionary)
            ref_state = ref.dictionary.state_dict()
            worst = max(float((state[k] - ref_state[k]).abs().max()) for k in ref_state)
            results[name] = {"losses": losses, "param_diff": worst, "tsf_equal": bool(
                torch.equal(ref.state.tokens_since_fired, sharded.state.tokens_since_fired))}  # fmt: skip
        torch.save(results, Path(out) / f"rank{rank}.pt")
    except Exception:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("dp", "mp_size"), [(1, 2), (2, 1)], ids=["model-parallel", "data-parallel"])
def test_sharded_trainer_matches_unsharded(tmp_path, dp, mp_size):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, dp, mp_size, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    errors = [f.read_text() for f in tmp_path.glob("*.err")]
    assert not errors, errors[0]
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for name, r in results.items():
            for ref_loss, loss, ref_l0, l0 in r["losses"]:
                assert loss == pytest.approx(ref_loss, rel=1e-9), name
                assert l0 == pytest.approx(ref_l0), name
            assert r["param_diff"] < 1e-9, f"{name}: parameters drift by {r['param_diff']}"
            assert r["tsf_equal"], f"{name}: dead-latent counters differ"
