"""StepBatches: fixed-size steps from a stream of any batch size, with init replay and resume skip."""

from __future__ import annotations

import torch

from raysae.train.rows import StepBatches


def test_steps_are_exact_in_order_and_the_remainder_is_dropped():
    x = torch.arange(250.0).view(-1, 1)
    steps = StepBatches((x[i : i + 30] for i in range(0, 250, 30)), rows=100)
    a, b = steps.next(), steps.next()
    assert torch.equal(a, x[:100]) and torch.equal(b, x[100:200])
    assert steps.next() is None  # 50 rows left: not a step


def test_take_replays_and_skip_drops_whole_steps():
    x = torch.arange(60.0).view(-1, 1)
    steps = StepBatches([x[:25], x[25:]], rows=10)
    first = steps.take(2)
    assert [float(b[0, 0]) for b in first] == [0.0, 10.0]
    assert float(steps.next()[0, 0]) == 0.0 and float(steps.next()[0, 0]) == 10.0
    steps.skip(2)
    assert float(steps.next()[0, 0]) == 40.0


def test_an_exact_batch_passes_through_without_a_copy():
    x = torch.randn(8, 3)
    assert StepBatches([x], rows=8).next() is x
