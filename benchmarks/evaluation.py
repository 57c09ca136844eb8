"""Evaluation throughput against the bare forward passes it needs, measured in one run.

    .venv/bin/python benchmarks/evaluation.py [--tokens 4096] [--hook blocks.3.hook_resid_post]

``raysae eval`` with CE/KL needs three runs per batch of windows (clean with capture, reconstruction
spliced, zero-ablated). The bound is the rate of three bare forwards (logits included) on batches of the
same shape; the table gives evaluation's rate as a fraction of it, with the runs sharing the clean pass
up to the hook (the native backend's ``forward_variants``) and with three separate passes.
"""

from __future__ import annotations

import argparse
import time

import torch

from raysae.config import SAEConfig
from raysae.config.evaluation import EvalConfig
from raysae.dictionaries import build_dictionary
from raysae.eval.evaluate import evaluate
from raysae.lm.model import LanguageModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hook", default="blocks.3.hook_resid_post")
    args = ap.parse_args()
    cfg = EvalConfig()
    cfg.activations.total_tokens = args.tokens
    acts = cfg.activations
    lm = LanguageModel.from_config(acts.model)
    sae = build_dictionary(
        SAEConfig(d_model=lm.d_model, d_sae=2304, act_fn="topk", top_k=32, hook_point_in=args.hook)
    )
    tokens = torch.randint(0, lm.d_vocab, (acts.batch_windows, acts.tokens.context_size))
    with torch.inference_mode():
        lm.forward(tokens)  # warm-up
    rounds = []
    for _ in range(2):  # interleave the two measurements
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(3):
                lm.forward(tokens)
        bound = tokens.numel() / (time.perf_counter() - t0)
        rates = []
        for fork in (True, False):
            type(lm).batch_fork = fork
            t0 = time.perf_counter()
            out = evaluate(sae, cfg, lm=lm, progress=False)
            rates.append(out["tokens"] / (time.perf_counter() - t0))
        type(lm).batch_fork = True
        rounds.append((bound, *rates))
    bound, rate, separate = (sorted(x)[len(x) // 2] for x in zip(*rounds, strict=True))
    print(
        f"threads={torch.get_num_threads()}  windows/batch={acts.batch_windows}  context={acts.tokens.context_size}"
    )
    print(f"{'what':<40}{'tokens/s':>10}{'ratio':>8}")
    print(f"{'3 bare forwards (the bound)':<40}{bound:>10.0f}{1.0:>8.2f}")
    print(f"{'raysae evaluate, shared prefix':<40}{rate:>10.0f}{rate / bound:>8.2f}")
    print(f"{'raysae evaluate, three separate passes':<40}{separate:>10.0f}{separate / bound:>8.2f}")


if __name__ == "__main__":
    main()
