"""Prompt construction and answer parsing against hand-written expectations."""

from __future__ import annotations

import math

import pytest

from raysae.autointerp.prompts import (
    AnswerParseError,
    Window,
    activation_list,
    crop,
    explainer_messages,
    highlight,
    marked_positions,
    parse_digit,
    parse_explanation,
    parse_predictions,
    parse_probabilities,
    scorer_messages,
)


def test_marks_follow_the_fraction_of_the_max():
    acts = [0.0, 4.0, 1.0, 1.5, 0.0, 2.0]
    assert marked_positions(acts, 0.25) == [1, 3, 5]  # 1.0 is not above 0.25 x 4
    assert marked_positions([0.0, 0.0], 0.3) == []
    toks = ["The", " cat", " sat", "\n", " on", " mat"]
    assert highlight(toks, [1, 3, 5]) == "The<< cat>> sat<<\\n>> on<< mat>>"
    assert highlight(toks, [1, 2, 3]) == "The<< cat sat\\n>> on mat"  # one mark per run


def test_activation_list_normalises_to_ten():
    w = Window(["a", " b", " c"], [0.0, 4.0, 1.3])
    assert activation_list(w, 0.3) == 'Activations: (" b" : 10), (" c" : 3)'


def test_crop_drops_bos_and_centres_the_max():
    toks = ["<|endoftext|>"] + [f" t{i}" for i in range(10)]
    acts = [0.0] * 11
    acts[9] = 5.0
    w = crop(toks, acts, 9, 4)
    assert w.tokens == [" t6", " t7", " t8", " t9"]  # position 8 after BOS; window [6, 10)
    assert w.activations == [0.0, 0.0, 5.0, 0.0]
    with pytest.raises(ValueError, match="tokens but"):
        crop(["a"], [1.0, 2.0], None, 4)


def test_explainer_prompt_text():
    windows = [Window(["The", " cat", " sat"], [0.0, 3.0, 0.5]), Window([" a", " cat"], [0.0, 2.0])]
    msgs = explainer_messages(windows, 0.3, True)
    assert msgs[0]["role"] == "system" and "[EXPLANATION]:" in msgs[0]["content"]
    assert msgs[1]["content"] == (
        'Example 1: The<< cat>> sat\nActivations: (" cat" : 10)\nExample 2:  a<< cat>>\nActivations: (" cat" : 10)'
    )
    assert "Activations" not in explainer_messages(windows, 0.3, False)[1]["content"]
    with pytest.raises(ValueError):
        explainer_messages([], 0.3, True)


def test_scorer_prompts_show_marks_only_for_fuzzing():
    w = Window(["The", " cat"], [0.0, 1.0], marks=[1])
    det = scorer_messages("detection", "cats  and\nkittens", [w])
    fuzz = scorer_messages("fuzzing", "cats", [w])
    assert det[1]["content"] == "Explanation: cats and kittens\n\nExample 1: The cat"
    assert fuzz[1]["content"] == "Explanation: cats\n\nExample 1: The<< cat>>"
    with pytest.raises(ValueError, match="unknown scorer"):
        scorer_messages("simulation", "x", [w])
    digit = scorer_messages("fuzzing", "cats", [w], "digit")
    assert digit[1]["content"] == "Explanation: cats\n\nExample 1: The<< cat>>\n\nAnswer (1 or 0):"
    assert digit[0]["content"].endswith("Answer with a single digit: 1 for yes, 0 for no.")
    assert "[1, 0, 0, 1, 0]" in fuzz[0]["content"] and "[1, 0" not in digit[0]["content"]
    with pytest.raises(ValueError, match="one example"):
        scorer_messages("detection", "x", [w, w], "digit")


def test_parse_digit_from_the_first_token():
    def first(*top):
        return [
            {
                "token": top[0][0],
                "logprob": math.log(top[0][1]),
                "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top],
            }
        ]

    # a weak model's first token may be a word; the digits among the top tokens still decide
    assert parse_digit(first(("The", 0.5), ("1", 0.3), (" 0", 0.1)), "The") == (1, pytest.approx(0.75))
    assert parse_digit(first(("0", 0.6), ("1", 0.2)), "0") == (0, pytest.approx(0.25))
    assert parse_digit(first(("The", 0.9), ("A", 0.1)), "The") == (None, None)  # unanswered
    assert parse_digit(None, " 1 because") == (1, None)  # no logprobs: the text decides
    with pytest.raises(AnswerParseError):
        parse_digit(None, "yes")


def test_parse_explanation():
    assert parse_explanation("thinking...\n[EXPLANATION]: the word cat\nmore") == "the word cat"
    assert parse_explanation('\n  "Animals"  \nrest') == "Animals"  # untagged: the first line
    with pytest.raises(AnswerParseError):
        parse_explanation("  \n ")


def test_parse_predictions():
    assert parse_predictions("Sure: [1, 0,1] done", 3) == [1, 0, 1]
    for bad in ("no list", "[1, 0]", "[1, 2, 0]", "[1, 0.0, 1]", "[1, x, 0]"):
        with pytest.raises(AnswerParseError):
            parse_predictions(bad, 3)


def test_parse_probabilities_from_top_logprobs():
    def tok(t, top=None):
        return {"token": t, "logprob": 0.0, "top_logprobs": top or []}

    lp = [
        tok("Answer 1: "),  # a digit outside the list is ignored
        tok("["),
        tok("1", [{"token": "1", "logprob": math.log(0.6)}, {"token": "0", "logprob": math.log(0.2)}]),
        tok(", "),
        tok("0", [{"token": "0", "logprob": math.log(0.9)}, {"token": " 1", "logprob": math.log(0.1)}]),
        tok("]"),
    ]
    text = "".join(t["token"] for t in lp)
    probs = parse_probabilities(lp, text, 2)
    assert probs == pytest.approx([0.6 / 0.8, 0.1 / 1.0])
    assert parse_probabilities(lp, text, 3) is None
    assert parse_probabilities(None, text, 2) is None
