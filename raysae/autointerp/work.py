"""One feature's work: explain it, or score its explanation (and the baseline's) with each scorer.

Both steps end in an upsert keyed by (feature, explainer id[, scorer id]); a failure of the endpoint
is stored too (``status: "failed"`` and the reason), so the job goes on and a re-run retries it.
Store calls are blocking pymongo, so they run in a thread beside the event loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raysae.autointerp import telemetry
from raysae.autointerp.client import ChatClient, Completion, EndpointError
from raysae.autointerp.prompts import (
    EXPLAIN_VERSION,
    SCORER_VERSIONS,
    Window,
    explainer_messages,
    parse_digit,
    parse_explanation,
    parse_predictions,
    parse_probabilities,
    scorer_messages,
)
from raysae.autointerp.scoring import (
    accuracy,
    auroc,
    balanced_accuracy,
    pick_negatives,
    scoring_samples,
    split_examples,
)
from raysae.config.autointerp import AutointerpConfig
from raysae.store import Store

TOP_LOGPROBS = 5
DIGIT_TOP_LOGPROBS = 20  # OpenAI's maximum: a weak model may rank "0"/"1" below words like "The"


def explainer_id(cfg: AutointerpConfig) -> str:
    """Stored explainer identity: the model and the prompt version."""
    return f"{cfg.endpoint.model}:{EXPLAIN_VERSION}"


def scorer_id(cfg: AutointerpConfig, kind: str, baseline: bool = False) -> str:
    """Stored scorer identity: kind, prompt version, model; ``:baseline`` for the random explanation."""
    version = SCORER_VERSIONS[(kind, cfg.scorer.answer)]
    return f"{kind}:{version}:{cfg.endpoint.model}" + (":baseline" if baseline else "")


def feature_seed(seed: int, hook: str, index: int) -> int:
    """A per-feature seed that does not depend on which worker or in which order it runs."""
    return (seed * 1_000_003 + sum(map(ord, hook)) * 7919 + index) % (2**31)


@dataclass
class Context:
    """What every feature's work needs: settings, store, client, negative pool."""

    cfg: AutointerpConfig
    store: Store
    client: ChatClient
    pool: Sequence[Window] = ()

    @property
    def dictionary_id(self) -> str:
        return self.cfg.dictionary_id


async def _feature(ctx: Context, hook: str, index: int) -> Mapping[str, Any]:
    doc = await asyncio.to_thread(ctx.store.get_feature, ctx.dictionary_id, hook, index)
    if doc is None:
        raise EndpointError(f"feature {hook}/{index} of {ctx.dictionary_id} is not in the store")
    return doc


async def explain_feature(ctx: Context, hook: str, index: int) -> dict[str, Any]:
    """Explain one feature and upsert the ExplanationDoc (ok or failed); returns the stored fields."""
    cfg = ctx.cfg
    e = cfg.explainer
    base: dict[str, Any] = {
        "index": index,
        "explainer": explainer_id(cfg),
        "explainer_model": cfg.endpoint.model,
        "prompt_version": EXPLAIN_VERSION,
    }
    try:
        doc = await _feature(ctx, hook, index)
        shown, _ = split_examples(doc, e, cfg.scorer.n_activating, cfg.window_tokens)
        if not shown:
            raise EndpointError("the feature has no activating examples (dead feature)")
        messages = explainer_messages(shown, e.threshold, e.show_activations)
        text, comp = await ctx.client.complete(
            messages,
            lambda c: parse_explanation(c.text),
            max_tokens=e.max_tokens,
            temperature=e.temperature,
        )
        body = {
            **base,
            "explanation": text,
            "status": "ok",
            "shown_windows": [w.window_id for w in shown],
            "answer": comp.text,
            "prompt_tokens": comp.prompt_tokens,
            "completion_tokens": comp.completion_tokens,
        }
    except EndpointError as err:
        body = {**base, "explanation": "", "status": "failed", "error": str(err)}
    await asyncio.to_thread(ctx.store.upsert_explanations, ctx.dictionary_id, hook, [body])
    telemetry.feature_done(ctx.dictionary_id, "explain", body["status"])
    return body


async def _classify(
    ctx: Context, kind: str, explanation: str, prompts: list[list[Window]]
) -> tuple[list[dict[str, Any]], int]:
    """Per-example predictions of every prompt (one request per prompt, all at once); tokens used."""
    s = ctx.cfg.scorer

    digit = s.answer == "digit"

    async def one(batch: list[Window]) -> tuple[list[int | None], list[float | None] | None, Completion]:
        def parse(c: Completion) -> tuple[list[int | None], list[float | None] | None]:
            if digit:
                pred, prob = parse_digit(c.logprobs, c.text)
                return [pred], [prob]
            preds = parse_predictions(c.text, len(batch))
            return preds, parse_probabilities(c.logprobs, c.text, len(batch))  # type: ignore[return-value]

        (preds, probs), comp = await ctx.client.complete(
            scorer_messages(kind, explanation, batch, s.answer),
            parse,
            max_tokens=1 if digit else s.max_tokens,
            top_logprobs=(DIGIT_TOP_LOGPROBS if digit else TOP_LOGPROBS) if s.logprobs else None,
        )
        return preds, probs, comp

    answers = await asyncio.gather(*(one(b) for b in prompts))
    rows, tokens = [], 0
    for n, (batch, (preds, probs, comp)) in enumerate(zip(prompts, answers, strict=True)):
        tokens += comp.prompt_tokens + comp.completion_tokens
        for i, w in enumerate(batch):
            rows.append(
                {
                    "prompt": n,
                    "window_id": w.window_id,
                    "source_hook": w.source[0] if w.source else None,
                    "source_index": w.source[1] if w.source else None,
                    "activating": w.activating,
                    "marks": list(w.marks),
                    "prediction": preds[i],
                    "probability": None if probs is None else probs[i],
                }
            )
    return rows, tokens


def score_fields(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The scores recomputed from stored per-example predictions (``score`` is balanced accuracy; AUROC
    of P(1) over the answered examples). Unanswered examples (prediction None) are counted, not scored."""
    labels = [bool(r["activating"]) for r in rows]
    preds = [r["prediction"] for r in rows]
    answered = [r for r in rows if r["prediction"] is not None]
    bal = balanced_accuracy(labels, preds)
    return {
        "score": bal,
        "balanced_accuracy": bal,
        "accuracy": accuracy(labels, preds),
        "auroc": auroc([bool(r["activating"]) for r in answered], [r["probability"] for r in answered]),
        "n_activating": sum(labels),
        "n_non_activating": len(labels) - sum(labels),
        "n_answered": len(answered),
    }


async def score_feature(
    ctx: Context,
    hook: str,
    index: int,
    explanation: str,
    baseline: tuple[str, str | None, int | None] | None,
    todo: Sequence[str],
) -> list[dict[str, Any]]:
    """Run the scorers (ids in ``todo``) on the explanation and, when given, the baseline
    (text, source hook, source index); upserts one ScoreDoc per scorer id and returns them."""
    cfg = ctx.cfg
    s = cfg.scorer
    rng = random.Random(feature_seed(s.seed, hook, index))
    out: list[dict[str, Any]] = []
    try:
        doc = await _feature(ctx, hook, index)
    except EndpointError as err:
        doc, missing = None, str(err)
    if doc is not None:
        _, held = split_examples(doc, cfg.explainer, s.n_activating, cfg.window_tokens)
        negatives = pick_negatives(doc, ctx.pool, s.n_non_activating, rng)
    jobs = []
    for kind in s.kinds:
        prompts = None
        for is_base in (False, True):
            sid = scorer_id(cfg, kind, is_base)
            if sid not in todo or (is_base and baseline is None):
                continue
            text = baseline[0] if is_base and baseline else explanation
            if prompts is None and doc is not None:
                prompts = scoring_samples(kind, held, negatives, s, cfg.explainer.threshold, rng)
            meta: dict[str, Any] = {
                "index": index,
                "explainer": explainer_id(cfg),
                "scorer": sid,
                "scorer_kind": kind,
                "scorer_model": cfg.endpoint.model,
                "prompt_version": SCORER_VERSIONS[(kind, s.answer)],
                "explanation": text,
                "baseline": is_base,
            }
            if is_base and baseline:
                meta.update(
                    baseline_kind=s.baseline,
                    baseline_source_hook=baseline[1],
                    baseline_source_index=baseline[2],
                )
            jobs.append((meta, prompts))

    async def run(meta: dict[str, Any], prompts: list[list[Window]] | None) -> dict[str, Any]:
        try:
            if prompts is None:
                raise EndpointError(missing)
            if not any(w.activating for b in prompts for w in b):
                raise EndpointError("no held-out activating windows (every stored window was shown)")
            rows, tokens = await _classify(ctx, meta["scorer_kind"], meta["explanation"], prompts)
            return {**meta, **score_fields(rows), "predictions": rows, "tokens": tokens, "status": "ok"}
        except EndpointError as err:
            return {**meta, "score": float("nan"), "status": "failed", "error": str(err)}

    out = list(await asyncio.gather(*(run(m, p) for m, p in jobs)))
    if out:
        await asyncio.to_thread(ctx.store.upsert_scores, ctx.dictionary_id, hook, out)
    for score in out:
        telemetry.feature_done(ctx.dictionary_id, "score", score["status"])
        if score["status"] == "ok":
            telemetry.score_recorded(score["scorer_kind"], score["baseline"], score["score"])
    return out
