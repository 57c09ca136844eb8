"""Training-step throughput of a TopK SAE against this machine's fp32 matmul rate, measured in one run.

    .venv/bin/python benchmarks/train_step.py [--d-model 576] [--expansion 16] [--batch 4096] [--steps 5]

FLOPs per step are counted as dense matmuls: encoder and decoder forward (2·B·d·s each) and twice
that for the backward pass, 12·B·d·s in all. The reference rate is a plain ``x @ W`` of the encoder's
shape, timed the same way, so the ratio says how much of the machine's matmul speed the step reaches.
"""

from __future__ import annotations

import argparse
import time

import torch

from raysae.config import SAEConfig, TrainerConfig
from raysae.dictionaries import build_dictionary
from raysae.train import Trainer


def timed(fn, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=576)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    d, b = args.d_model, args.batch
    s = d * args.expansion
    torch.manual_seed(0)

    x = torch.randn(b, d)
    w = torch.randn(d, s)
    mm_s = timed(lambda: x @ w, args.steps)
    mm_gflops = 2 * b * d * s / mm_s / 1e9

    rows = []
    for act in ("topk", "batchtopk"):
        sae = build_dictionary(SAEConfig(d_model=d, d_sae=s, act_fn=act, top_k=args.k))
        trainer = Trainer(TrainerConfig(batch_size=b, total_training_tokens=b * 1000), progress=False)
        trainer.initialize(sae, [x])
        trainer.setup(sae)
        step_s = timed(lambda t=trainer: t.step(x), args.steps)
        gflops = 12 * b * d * s / step_s / 1e9
        rows.append((act, step_s, b / step_s, gflops, gflops / mm_gflops))

    print(f"threads={torch.get_num_threads()}  d_model={d}  d_sae={s}  batch={b}  k={args.k}")
    print(f"{'what':<22}{'s/step':>10}{'tokens/s':>12}{'GFLOP/s':>10}{'of matmul':>11}")
    print(f"{'fp32 matmul x@W_enc':<22}{mm_s:>10.4f}{b / mm_s:>12.0f}{mm_gflops:>10.1f}{1.0:>11.2f}")
    for act, step_s, tps, gflops, ratio in rows:
        print(f"{act + ' SAE train step':<22}{step_s:>10.4f}{tps:>12.0f}{gflops:>10.1f}{ratio:>11.2f}")


if __name__ == "__main__":
    main()
