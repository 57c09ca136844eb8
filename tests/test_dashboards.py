"""The Grafana board queries only metrics that training reports, under the names Ray publishes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from raysae.config import SAEConfig, TrainerConfig
from raysae.dictionaries import build_dictionary
from raysae.train import Trainer
from raysae.train.reporting import prometheus_name

BOARD = Path(__file__).resolve().parents[1] / "dashboards" / "raysae_training.json"


def test_board_series_are_reported_metrics():
    sae = build_dictionary(SAEConfig(d_model=8, d_sae=32, act_fn="relu", sparsity_coefficient=1.0))
    trainer = Trainer(
        TrainerConfig(batch_size=16, total_training_tokens=64, log_every_steps=1), progress=False
    )
    trainer.fit(sae, (torch.randn(16, 8) for _ in range(4)))
    topk = build_dictionary(SAEConfig(d_model=8, d_sae=32, act_fn="topk", top_k=2))
    trainer2 = Trainer(
        TrainerConfig(batch_size=16, total_training_tokens=64, log_every_steps=1, dead_after_tokens=16),
        progress=False,
    )
    trainer2.fit(topk, (torch.randn(16, 8) for _ in range(4)))
    reported = {
        "ray_" + prometheus_name(k) for h in (*trainer.state.history, *trainer2.state.history) for k in h
    }
    board = json.loads(BOARD.read_text())
    queried = {
        m
        for p in board["panels"]
        for t in p["targets"]
        for m in re.findall(r"ray_raysae_train_\w+", t["expr"])
    }
    assert queried, "the board queries nothing"
    assert queried <= reported, f"board queries unreported series: {sorted(queried - reported)}"
