"""Which windows the explainer sees, which are held out for scoring, and the scores' arithmetic.

Shown to the explainer: the first ``explainer.top_examples`` top examples and the first
``explainer.examples_per_quantile`` of each quantile group. Held out (activating): the other quantile
examples first (they span the activation range, as delphi's test set does), then the other top
examples, never a window the explainer saw. Non-activating: windows of other features' stored
examples whose window id is not among this feature's stored windows. The store keeps only each
feature's own activations, so "not among its stored windows" is the evidence available that the
feature is 0 there; for a frequent feature some of these may still fire (which lowers every score,
real and baseline alike).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from raysae.autointerp.prompts import Window, crop, marked_positions
from raysae.config.autointerp import ExplainerConfig, ScorerConfig


def _examples(doc: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], list[list[Mapping[str, Any]]]]:
    top = list(doc.get("top_examples") or [])
    groups = [list(q.get("examples") or []) for q in (doc.get("quantile_examples") or [])]
    return top, groups


def to_window(example: Mapping[str, Any], width: int, source: tuple[str, int] | None = None) -> Window:
    """A stored Example (mapping) cropped to ``width`` tokens around its max token."""
    w = crop(example.get("tokens") or [], example.get("activations") or [], example.get("position"), width)
    w.window_id, w.source = example.get("window_id"), source
    return w


def _key(example: Mapping[str, Any]) -> Any:
    wid = example.get("window_id")
    return ("w", wid) if wid is not None else ("id", id(example))


def split_examples(
    doc: Mapping[str, Any], explainer: ExplainerConfig, n_held_out: int, width: int
) -> tuple[list[Window], list[Window]]:
    """(shown, held-out activating) windows of one feature document; a window appears once."""
    top, groups = _examples(doc)
    source = (doc.get("hook"), doc.get("index"))
    shown_ex = top[: explainer.top_examples] + [
        ex for g in groups for ex in g[: explainer.examples_per_quantile]
    ]
    seen: set[Any] = set()
    shown = []
    for ex in shown_ex:
        if _key(ex) not in seen and max(ex.get("activations") or [0.0]) > 0:
            seen.add(_key(ex))
            shown.append(to_window(ex, width, source))  # type: ignore[arg-type]
    rest = [ex for g in groups for ex in g[explainer.examples_per_quantile :]] + top[explainer.top_examples :]
    held = []
    for ex in rest:
        if len(held) >= n_held_out:
            break
        if _key(ex) not in seen and max(ex.get("activations") or [0.0]) > 0:
            seen.add(_key(ex))
            held.append(to_window(ex, width, source))  # type: ignore[arg-type]
    return shown, held


def window_ids(doc: Mapping[str, Any]) -> set[Any]:
    """Every stored window id of a feature (top and quantile examples)."""
    top, groups = _examples(doc)
    return {
        ex.get("window_id") for ex in top + [e for g in groups for e in g] if ex.get("window_id") is not None
    }


def negative_pool(docs: Iterable[Mapping[str, Any]], width: int) -> list[Window]:
    """Candidate non-activating windows: every stored window of ``docs``, one per window id."""
    pool, seen = [], set()
    for doc in docs:
        top, groups = _examples(doc)
        for ex in top + [e for g in groups for e in g]:
            if ex.get("window_id") is None or ex["window_id"] in seen:
                continue
            seen.add(ex["window_id"])
            w = to_window(ex, width, (doc.get("hook"), doc.get("index")))  # type: ignore[arg-type]
            w.activating = False
            pool.append(w)
    return pool


def pick_negatives(
    doc: Mapping[str, Any], pool: Sequence[Window], n: int, rng: random.Random
) -> list[Window]:
    """Up to ``n`` pool windows that are not this feature's (by source and by window id)."""
    own, me = window_ids(doc), (doc.get("hook"), doc.get("index"))
    ok = [w for w in pool if w.source != me and w.window_id not in own]
    picked = rng.sample(ok, min(n, len(ok)))
    return [Window(w.tokens, [0.0] * len(w.tokens), w.window_id, w.source, False) for w in picked]


def scoring_samples(
    kind: str,
    activating: Sequence[Window],
    negatives: Sequence[Window],
    scorer: ScorerConfig,
    threshold: float,
    rng: random.Random,
) -> list[list[Window]]:
    """Shuffled prompts of ``scorer.prompt_size`` windows. Fuzzing marks activating windows where
    they fire (above ``threshold`` x max) and each non-activating one at the marked positions of a random
    activating window (delphi's default fuzzing), cut to the window's length."""
    items = []
    positions = [marked_positions(w.activations, threshold) for w in activating]
    for w in activating:
        marks = marked_positions(w.activations, threshold) if kind == "fuzzing" else []
        items.append(Window(w.tokens, w.activations, w.window_id, w.source, True, marks))
    for w in negatives:
        marks = []
        if kind == "fuzzing" and positions:
            marks = [p for p in rng.choice(positions) if p < len(w.tokens)] or [len(w.tokens) // 2]
        items.append(Window(w.tokens, w.activations, w.window_id, w.source, False, marks))
    rng.shuffle(items)
    k = scorer.prompt_size
    return [items[i : i + k] for i in range(0, len(items), k)]


def balanced_accuracy(labels: Sequence[bool], predictions: Sequence[int | None]) -> float:
    """Mean over the classes present of the fraction predicted right; unanswered examples are left out
    (their count is stored beside). NaN when nothing was answered."""
    recalls = []
    for cls in (True, False):
        answered = [p for y, p in zip(labels, predictions, strict=True) if y is cls and p is not None]
        if answered:
            recalls.append(sum(int(bool(p) is cls) for p in answered) / len(answered))
    return sum(recalls) / len(recalls) if recalls else float("nan")


def accuracy(labels: Sequence[bool], predictions: Sequence[int | None]) -> float:
    """Fraction of answered examples predicted right (NaN when none)."""
    pairs = [(y, p) for y, p in zip(labels, predictions, strict=True) if p is not None]
    return sum(int(bool(p) == y) for y, p in pairs) / len(pairs) if pairs else float("nan")


def auroc(labels: Sequence[bool], scores: Sequence[float | None]) -> float | None:
    """Area under the ROC curve of P(1) against the labels (Mann-Whitney; ties count 1/2); None when a
    probability is missing or a class is absent."""
    if any(s is None for s in scores):
        return None
    pos = sorted(float(s) for y, s in zip(labels, scores, strict=True) if y)  # type: ignore[arg-type]
    neg = sorted(float(s) for y, s in zip(labels, scores, strict=True) if not y)  # type: ignore[arg-type]
    if not pos or not neg:
        return None
    # rank-sum with average ranks for ties, float64 throughout
    allv = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    rank_sum, i = 0.0, 0
    while i < len(allv):
        j = i
        while j < len(allv) and allv[j][0] == allv[i][0]:
            j += 1
        avg = (i + 1 + j) / 2.0
        rank_sum += avg * sum(flag for _, flag in allv[i:j])
        i = j
    u = rank_sum - len(pos) * (len(pos) + 1) / 2.0
    return u / (len(pos) * len(neg))


def random_words(pool: Sequence[Window], rng: random.Random, n: int = 6) -> str:
    """A baseline explanation of ``n`` random word-like tokens from the pool's windows."""
    words = sorted({t.strip() for w in pool for t in w.tokens if t.strip().isalpha()})
    if not words:
        words = ["text", "word", "number", "name", "place", "thing"]
    return " ".join(rng.choice(words) for _ in range(n))
