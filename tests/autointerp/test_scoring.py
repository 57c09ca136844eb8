"""Scores against hand-computed values and brute-force float64 references; the held-out split."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from autointerp_data import feature_doc, held_out_js

from raysae.autointerp.scoring import (
    accuracy,
    auroc,
    balanced_accuracy,
    negative_pool,
    pick_negatives,
    scoring_samples,
    split_examples,
)
from raysae.config.autointerp import ExplainerConfig, ScorerConfig


def test_balanced_accuracy_by_hand():
    labels = [True, True, True, True, False, False]
    preds = [1, 1, 1, 0, 1, 0]
    assert balanced_accuracy(labels, preds) == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert accuracy(labels, preds) == pytest.approx(4 / 6)
    # unanswered examples are left out: recall 2/2 and 1/1
    assert balanced_accuracy(labels, [1, 1, None, None, 0, None]) == 1.0
    assert math.isnan(balanced_accuracy([True], [None]))


def test_auroc_by_hand_and_against_pair_counting():
    assert auroc([True, False], [0.9, 0.1]) == 1.0
    assert auroc([True, True, False, False], [0.8, 0.2, 0.2, 0.1]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert auroc([True, False], [0.5, None]) is None
    assert auroc([True, True], [0.5, 0.4]) is None
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 12)
        labels = [rng.random() < 0.5 for _ in range(n)]
        if all(labels) or not any(labels):
            continue
        scores = [rng.choice([0.1, 0.2, 0.5, 0.7, 0.9]) for _ in range(n)]
        pairs = [
            (1.0 if sp > sn else 0.5 if sp == sn else 0.0)
            for (yp, sp), (yn, sn) in itertools.product(
                zip(labels, scores, strict=True), zip(labels, scores, strict=True)
            )
            if yp and not yn
        ]
        assert auroc(labels, scores) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)


def test_held_out_windows_are_never_shown():
    doc = {**feature_doc(0), "hook": "h"}
    shown, held = split_examples(doc, ExplainerConfig(), 8, 32)
    assert [w.window_id for w in shown] == [*range(10), 12, 16]
    assert [w.window_id for w in held] == held_out_js(8)
    assert not {w.window_id for w in shown} & {w.window_id for w in held}
    assert all(w.source == ("h", 0) for w in shown + held)


def test_negatives_come_from_other_features_windows():
    docs = [{**feature_doc(f), "hook": "h"} for f in range(3)]
    pool = negative_pool(docs, 32)
    assert len(pool) == 3 * 20
    rng = random.Random(0)
    neg = pick_negatives(docs[1], pool, 10, rng)
    assert len(neg) == 10
    assert all(w.source != ("h", 1) and not w.activating and max(w.activations) == 0 for w in neg)
    # a window that this feature also stored is not a negative, whoever's pool it came from
    shared = {**docs[2], "top_examples": [*docs[2]["top_examples"], docs[1]["top_examples"][0]]}
    assert all(w.window_id != 100 for w in pick_negatives(shared, negative_pool([docs[1]], 32), 99, rng))


def test_fuzzing_marks_negatives_at_activating_positions():
    docs = [{**feature_doc(f), "hook": "h"} for f in range(2)]
    _, held = split_examples(docs[0], ExplainerConfig(), 4, 32)
    neg = pick_negatives(docs[0], negative_pool(docs, 32), 4, random.Random(1))
    prompts = scoring_samples(
        "fuzzing", held, neg, ScorerConfig(examples_per_prompt=3), 0.3, random.Random(2)
    )
    assert [len(p) for p in prompts] == [3, 3, 2]
    flat = [w for p in prompts for w in p]
    held_marks = {tuple(w.marks) for w in flat if w.activating}
    for w in flat:
        if w.activating:
            assert [w.tokens[i] for i in w.marks] == [" cat"]
        else:
            assert tuple(w.marks) in held_marks
    det = scoring_samples("detection", held, neg, ScorerConfig(), 0.3, random.Random(2))
    assert all(not w.marks for p in det for w in p)


def test_digit_answers_show_one_example_per_prompt():
    assert ScorerConfig().prompt_size == 5 and ScorerConfig(answer="digit").prompt_size == 1
    assert ScorerConfig(examples_per_prompt=3).prompt_size == 3
    with pytest.raises(ValueError, match="examples_per_prompt is 5"):
        ScorerConfig(answer="digit", examples_per_prompt=5)
    with pytest.raises(ValueError, match="set logprobs: true"):
        ScorerConfig(answer="digit", logprobs=False)
