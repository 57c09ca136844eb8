"""The whole job against the fake server and a real store: hand-computed scores, the baseline,
failure marking, resuming after a kill, and the same results through Ray."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from autointerp_data import DICT_ID, HOOK, MIXED, WORDS, example

from raysae.autointerp.job import job_features, pair_baselines, run_autointerp
from raysae.autointerp.prompts import highlight
from raysae.autointerp.work import explainer_id, score_fields, scorer_id

REPO = Path(__file__).resolve().parents[2]


def scores_by(store, cfg) -> dict[tuple[int, str], dict]:
    out = {}
    for f in range(len(WORDS)):
        for d in store.get_scores(DICT_ID, HOOK, f):
            out[(f, d["scorer"])] = d
    return out


def window_text(wid: int, marks: list[int] | None = None) -> str:
    ex = example(wid // 100, wid % 100)
    tokens = ex["tokens"][1:]  # BOS dropped; shorter than the crop width
    return highlight(tokens, marks) if marks is not None else "".join(tokens)


def test_explain_and_score_by_hand(make_cfg, toy_store, fake):
    cfg = make_cfg()
    r = run_autointerp(cfg, toy_store, progress=False)
    n = len(WORDS)
    assert (r.features, r.explained, r.explain_failed, r.score_failed) == (n, n, 0, 0)
    assert r.scored == n * 4  # detection + fuzzing, each beside its baseline
    eid = explainer_id(cfg)
    assert eid == "fake-model:explain-v1"
    for f in range(n):
        (doc,) = toy_store.get_explanations(DICT_ID, HOOK, f)
        assert doc["explanation"] == WORDS[f].strip() and doc["status"] == "ok"
        assert doc["explainer"] == eid and doc["prompt_version"] == "explain-v1"
        assert doc["explainer_model"] == "fake-model"
    scores = scores_by(toy_store, cfg)
    partners = pair_baselines(job_features(cfg, toy_store), 0)
    for f in range(n):
        for kind in ("detection", "fuzzing"):
            real = scores[(f, scorer_id(cfg, kind))]
            assert real["n_activating"] == 8 and real["n_non_activating"] == 8
            assert len(real["predictions"]) == 16 and {p["prompt"] for p in real["predictions"]} == {
                0,
                1,
                2,
                3,
            }
            if f == MIXED:  # 5 of the 8 held-out windows say " owl", 3 say " elk"
                assert real["score"] == pytest.approx((5 / 8 + 1) / 2)
                assert real["auroc"] == pytest.approx((5 * 1 + 3 * 0.5) / 8)
            else:
                assert real["score"] == 1.0 and real["auroc"] == 1.0 and real["accuracy"] == 1.0
            base = scores[(f, scorer_id(cfg, kind, baseline=True))]
            partner = partners[(HOOK, f)]
            assert base["explanation"] == WORDS[partner[1]].strip() and base["baseline"] is True
            assert base["baseline_source_index"] == partner[1]
            assert [p["window_id"] for p in base["predictions"] if p["activating"]] == [
                p["window_id"] for p in real["predictions"] if p["activating"]
            ]
            word = base["explanation"]
            for p in base["predictions"]:  # each answer follows from the window text alone
                text = window_text(p["window_id"], p["marks"] if kind == "fuzzing" else None)
                if kind == "fuzzing":
                    spans = [s for s in text.split("<<")[1:]]
                    hit = bool(spans) and all(word in s.split(">>")[0] for s in spans)
                else:
                    hit = word in text
                assert p["prediction"] == int(hit)
            assert all(p["prediction"] == 0 for p in base["predictions"] if p["activating"])
            assert base["score"] <= 0.5 < real["score"]
            for d in (real, base):  # the stored predictions recompute the stored scores
                again = score_fields(d["predictions"])
                assert again["score"] == d["score"] and again["auroc"] == d["auroc"]


def test_failing_feature_is_marked_and_retried(make_cfg, toy_store, fake):
    fake.state.fail_explain_if = "dog"
    cfg = make_cfg(endpoint={"retries": 1})
    r = run_autointerp(cfg, toy_store, progress=False)
    assert (r.explained, r.explain_failed, r.score_failed) == (len(WORDS) - 1, 1, 0)
    (doc,) = toy_store.get_explanations(DICT_ID, HOOK, 1)
    assert doc["status"] == "failed" and doc["explanation"] == ""
    assert "HTTP 500" in doc["error"] and "sk-test" not in doc["error"]
    assert toy_store.get_scores(DICT_ID, HOOK, 1) == []
    assert r.scored == (len(WORDS) - 1) * 4
    fake.state.fail_explain_if = None
    again = run_autointerp(cfg, toy_store, progress=False)
    # the others' scores are kept (resume); only the retried feature is scored, beside its baseline
    assert (again.skipped_explained, again.explained, again.skipped_scored) == (
        len(WORDS) - 1,
        1,
        len(WORDS) - 1,
    )
    assert again.scored == 4
    (doc,) = toy_store.get_explanations(DICT_ID, HOOK, 1)
    assert doc["status"] == "ok" and doc["explanation"] == "dog"
    assert {d["status"] for d in toy_store.get_scores(DICT_ID, HOOK, 1)} == {"ok"}


def test_digit_answers_give_the_list_answers_scores(make_cfg, toy_store, fake):
    """One example per prompt, the prediction read from the first token's logprobs: the same
    hand-computed scores as the list format, and a scorer identity of its own."""
    cfg = make_cfg(scorer={"answer": "digit", "kinds": ["detection"]})
    r = run_autointerp(cfg, toy_store, progress=False)
    assert r.scored == len(WORDS) * 2 and r.score_failed == 0
    assert scorer_id(cfg, "detection") == "detection:detection-digit-v1:fake-model"
    requests = [q["body"] for q in fake.state.requests if q["kind"] == "detection"]
    assert {q["max_tokens"] for q in requests} == {1} and {q["top_logprobs"] for q in requests} == {20}
    for f in range(len(WORDS)):
        real = next(d for d in toy_store.get_scores(DICT_ID, HOOK, f) if not d["baseline"])
        assert real["prompt_version"] == "detection-digit-v1" and real["n_answered"] == 16
        assert len({p["prompt"] for p in real["predictions"]}) == 16  # one example per prompt
        if f == MIXED:
            assert real["score"] == pytest.approx((5 / 8 + 1) / 2)
            assert real["auroc"] == pytest.approx((5 * 1 + 3 * 0.5) / 8)
        else:
            assert real["score"] == 1.0 and real["auroc"] == 1.0
        assert score_fields(real["predictions"])["score"] == real["score"]


def test_endpoint_without_logprobs_gives_null_auroc(make_cfg, toy_store):
    cfg = make_cfg(scorer={"logprobs": False, "kinds": ["detection"], "baseline": "random_words"})
    r = run_autointerp(cfg, toy_store, progress=False)
    assert r.scored == len(WORDS) * 2
    d = toy_store.get_scores(DICT_ID, HOOK, 0, explainer_id(cfg))
    real = next(s for s in d if not s["baseline"])
    base = next(s for s in d if s["baseline"])
    assert real["auroc"] is None and real["score"] == 1.0
    assert base["baseline_kind"] == "random_words" and len(base["explanation"].split()) == 6


def test_resume_after_kill(make_cfg, toy_store, fake, tmp_path):
    fake.state.latency_s = 0.4
    cfg = make_cfg(features_in_flight=1, endpoint={"cache": False})
    path = tmp_path / "autointerp.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "autointerp": cfg.model_dump(mode="json")
                | {"endpoint": {**cfg.endpoint.model_dump(mode="json"), "api_key": "sk-test-SECRET-123"}}
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "raysae.autointerp.commands", "autointerp", str(path), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    eid = explainer_id(cfg)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = [d for d in toy_store.iter_explanations(DICT_ID, eid) if d.get("status") == "ok"]
        if len(done) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {d["index"] for d in toy_store.iter_explanations(DICT_ID, eid) if d.get("status") == "ok"}
    assert 2 <= len(done) < len(WORDS), done
    before, n_before = fake.state.count("explain"), len(fake.state.requests)
    fake.state.latency_s = 0.0
    r = run_autointerp(cfg, toy_store, progress=False)
    assert r.skipped_explained == len(done) and r.explained == len(WORDS) - len(done)
    assert fake.state.count("explain") - before == len(WORDS) - len(done)  # nothing explained twice
    explained_again = {
        int(m)
        for req in fake.state.requests[n_before:]
        if req["kind"] == "explain"
        for m in [next(i for i, w in enumerate(WORDS) if f"<<{w}>>" in req["body"]["messages"][1]["content"])]
    }
    assert explained_again == set(range(len(WORDS))) - done
    assert r.score_failed == 0 and r.scored == len(WORDS) * 4
    assert toy_store.get_explanations(DICT_ID, HOOK, 0)[0]["explanation"] == "cat"


def test_command_line_and_bad_config(make_cfg, toy_store, tmp_path, capsys):
    import argparse

    from raysae.autointerp.commands import add_parser, run_command

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    cfg = make_cfg()
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({**cfg.model_dump(mode="json"), "explainer": {"thresold": 0.2}}))
    args = parser.parse_args(["autointerp", str(path), "--local", "--no-progress"])
    assert run_command(args) == 2
    assert "explainer.thresold" in capsys.readouterr().err
    data = cfg.model_dump(mode="json")
    data["endpoint"]["api_key"] = "sk-test-SECRET-123"
    path.write_text(yaml.safe_dump(data))
    args = parser.parse_args(["autointerp", str(path), "--local", "--no-progress", "--max-features", "2"])
    assert run_command(args) == 0
    out = capsys.readouterr()
    assert "2 features; explained 2" in out.out and "SECRET" not in out.out + out.err


@pytest.mark.slow
def test_ray_gives_the_in_process_results(make_cfg, toy_store, ray_session):
    cfg = make_cfg(use_ray=True, ray_workers=2, features_in_flight=2)
    r = run_autointerp(cfg, toy_store, progress=False)
    assert (r.explained, r.scored, r.explain_failed, r.score_failed) == (len(WORDS), len(WORDS) * 4, 0, 0)
    assert r.usage.requests > 0 and r.usage.tokens > 0
    scores = scores_by(toy_store, cfg)
    assert scores[(0, scorer_id(cfg, "detection"))]["score"] == 1.0
    assert scores[(MIXED, scorer_id(cfg, "fuzzing"))]["score"] == pytest.approx((5 / 8 + 1) / 2)
    assert not any(math.isnan(d["score"]) for d in scores.values())
