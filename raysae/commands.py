"""Top-level subcommands: ``quickstart`` (the README's main job) and ``config-docs``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from raysae.config import CLTConfig, CrossCoderConfig, SAEConfig, TrainerConfig, field_reference


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train and evaluate a dictionary on embedded defaults")
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.set_defaults(func=quickstart)
    p = sub.add_parser("config-docs", help="print the configuration reference as Markdown")
    p.set_defaults(func=config_docs)


def quickstart(args: argparse.Namespace) -> int:
    """Synthetic ground-truth run: a TopK SAE on activations built from 512 known features.

    This exercises the trainer end to end in about a minute. The real-model quickstart (SmolLM2
    activations streamed from Ray Data into Ray Train) replaces it once that pipeline lands."""
    import torch

    from raysae.dictionaries import build_dictionary, load_dictionary
    from raysae.synthetic import SparseGroundTruth
    from raysae.train import JsonlSink, Trainer

    out = Path(args.out)
    gt = SparseGroundTruth(d_model=128, n_features=512, active_per_sample=6)
    sae_cfg = SAEConfig(d_model=128, d_sae=1024, act_fn="topk", top_k=6, hook_point_in="synthetic")
    steps, batch = 1500, 512
    trainer_cfg = TrainerConfig(
        lr=2e-3,
        batch_size=batch,
        total_training_tokens=steps * batch,
        log_every_steps=100,
        lr_warmup_steps=50,
    )
    t0 = time.perf_counter()
    trainer = Trainer(trainer_cfg, sinks=[JsonlSink(out / "metrics.jsonl")])
    sae = trainer.fit(build_dictionary(sae_cfg), gt.batches(batch, steps))
    sae.save(out / "dictionary")
    reloaded = load_dictionary(out / "dictionary").eval()
    held_out = gt.sample(8192, torch.Generator().manual_seed(12345))
    from raysae.eval import metrics as M

    with torch.no_grad():
        z = reloaded.encode(held_out)
        recon = reloaded.decode(z)
    recovered = float((gt.recovery(reloaded.W_dec.detach()) >= 0.9).float().mean())
    result = {
        "explained_variance": float(M.explained_variance(held_out, recon)),
        "mse": float(M.mse(held_out, recon)),
        "l0": float(M.l0(z)),
        "dead_fraction": M.dead_fraction(M.firing_counts(z)),
        "ground_truth_features_recovered": recovered,
        "seconds": time.perf_counter() - t0,
    }
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    print(f"dictionary: {out / 'dictionary'}\nmetrics:    {out / 'eval.json'}")
    for k, v in result.items():
        print(f"  {k:32s} {v:.4f}")
    return 0


def config_docs(args: argparse.Namespace) -> int:
    for model in (SAEConfig, CLTConfig, CrossCoderConfig, TrainerConfig):
        print(f"### {model.__name__}\n\n{(model.__doc__ or '').strip()}\n")
        print("| field | type | default | description |\n|---|---|---|---|")
        for name, typ, default, desc in field_reference(model):
            print(f"| `{name}` | {typ} | `{default}` | {desc} |")
        print()
    return 0
