"""Chat prompts of the explainer and the two scorers (EleutherAI delphi's definitions), and their parsers.

The explainer sees activating windows with the tokens above ``threshold`` x the window's max marked
``<<like this>>`` (neighbouring marked tokens share one mark), optionally followed by the marked tokens
with their activation normalised to 0-10, and ends its answer with ``[EXPLANATION]: ...``.
Detection shows plain windows, fuzzing shows windows with marks; both ask for one 0/1 per example as a
list, and with logprobs each answer digit becomes P(1) = p("1") / (p("0") + p("1")) over the top tokens.
The ``digit`` answer format shows one example per prompt and reads P(1) from the first answer token, for
small models that do not keep the list format.

Newlines inside tokens are shown as ``\\n`` so that one example is one line (the parsers of a scoring
answer and any simple server read examples line by line). The version strings are part of the stored
explainer and scorer identities: change one whenever the wording changes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from raysae.errors import RaysaeError

EXPLAIN_VERSION = "explain-v1"
SCORER_VERSIONS = {
    ("detection", "list"): "detection-v1",
    ("fuzzing", "list"): "fuzzing-v1",
    ("detection", "digit"): "detection-digit-v1",
    ("fuzzing", "digit"): "fuzzing-digit-v1",
}
MARK_OPEN, MARK_CLOSE = "<<", ">>"
_SPECIAL = re.compile(r"^<\|?[^<>\s]*\|?>$")

Messages = list[dict[str, str]]


class AnswerParseError(RaysaeError, ValueError):
    """The model's answer does not have the asked-for form (retried like a malformed response)."""


@dataclass
class Window:
    """A window of text shown to the model: token strings and this (or the source) feature's activations."""

    tokens: list[str]
    activations: list[float]
    window_id: int | str | None = None
    source: tuple[str, int] | None = None
    """(hook, index) of the feature whose stored examples the window came from."""
    activating: bool = True
    marks: list[int] = field(default_factory=list)
    """Token positions marked in a fuzzing prompt."""


def show_token(token: str) -> str:
    """A token as shown in a prompt: newlines, carriage returns and tabs escaped, one line per example."""
    return token.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def crop(tokens: Sequence[str], activations: Sequence[float], position: int | None, width: int) -> Window:
    """At most ``width`` tokens around ``position`` (the max token; None: argmax), leading special
    tokens (BOS) dropped: long windows cost prompt tokens and dilute what the marks show."""
    toks, acts = list(tokens), [float(a) for a in activations]
    if len(toks) != len(acts):
        raise ValueError(f"an example has {len(toks)} tokens but {len(acts)} activations")
    start = 0
    while start < len(toks) and _SPECIAL.match(toks[start]) and acts[start] == 0:
        start += 1
    toks, acts = toks[start:], acts[start:]
    if position is None or not 0 <= position - start < len(toks):
        position = max(range(len(acts)), key=acts.__getitem__) if acts else 0
    else:
        position -= start
    lo = max(0, min(position - width // 2, len(toks) - width))
    return Window(toks[lo : lo + width], acts[lo : lo + width])


def marked_positions(activations: Sequence[float], threshold: float) -> list[int]:
    """Positions whose activation exceeds ``threshold`` x the window's max (none if the max is <= 0)."""
    top = max(activations, default=0.0)
    if top <= 0:
        return []
    return [i for i, a in enumerate(activations) if a > threshold * top]


def highlight(tokens: Sequence[str], marks: Sequence[int]) -> str:
    """The window's text with each run of marked positions wrapped in one ``<<...>>``."""
    marked, out = set(marks), []
    for i, tok in enumerate(tokens):
        if i in marked and i - 1 not in marked:
            out.append(MARK_OPEN)
        out.append(show_token(tok))
        if i in marked and i + 1 not in marked:
            out.append(MARK_CLOSE)
    return "".join(out)


def activation_list(window: Window, threshold: float, limit: int = 10) -> str:
    """``Activations: ("tok" : 7), ...`` — marked tokens with activation/max x 10 rounded down."""
    top = max(window.activations, default=0.0)
    pairs = [
        f'("{show_token(window.tokens[i])}" : {math.floor(10 * window.activations[i] / top)})'
        for i in marked_positions(window.activations, threshold)[:limit]
    ]
    return "Activations: " + ", ".join(pairs)


EXPLAINER_SYSTEM = (
    "You are a meticulous AI researcher studying one feature of a language model. You are shown text "
    "examples on which the feature activates; the tokens where it activates most are marked "
    f"{MARK_OPEN}like this{MARK_CLOSE}. Work out what the marked tokens have in common (a word, a kind of "
    "word, a context, a pattern) and describe it in one short phrase. If activation values are listed, "
    "larger numbers mean stronger activation. Do not list the examples back. End your answer with one "
    "line of the form\n[EXPLANATION]: <your explanation>"
)


def explainer_messages(windows: Sequence[Window], threshold: float, show_activations: bool) -> Messages:
    """The explainer's chat prompt for the shown windows."""
    if not windows:
        raise ValueError("the explainer needs at least one activating example")
    lines = []
    for n, w in enumerate(windows, 1):
        lines.append(f"Example {n}: {highlight(w.tokens, marked_positions(w.activations, threshold))}")
        if show_activations:
            lines.append(activation_list(w, threshold))
    return [
        {"role": "system", "content": EXPLAINER_SYSTEM},
        {"role": "user", "content": "\n".join(lines)},
    ]


def parse_explanation(text: str) -> str:
    """The text after ``[EXPLANATION]:`` (first line of it); an untagged answer's first non-empty line
    (small models often drop the tag); AnswerParseError for an empty answer."""
    match = re.search(r"\[EXPLANATION\]\s*:\s*(.+)", text or "")
    if match:
        found = match.group(1).strip()
    else:
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        found = lines[0] if lines else ""
    found = found.strip().strip('"').strip()
    if not found:
        raise AnswerParseError("the explainer's answer holds no explanation")
    return found[:500]


_ANSWER_FORMAT = {
    "list": (
        "Answer with only a list of 0s and 1s, one per example in order, for example [1, 0, 0, 1, 0] "
        "for five examples; 1 means yes."
    ),
    "digit": "Answer with a single digit: 1 for yes, 0 for no.",
}
_TASK = {
    "detection": (
        "You are an intelligent and meticulous linguist. You are given an explanation of a feature of a "
        "language model and text examples. Decide, for each example, whether the feature as explained "
        "activates anywhere in it. "
    ),
    "fuzzing": (
        "You are an intelligent and meticulous linguist. You are given an explanation of a feature of a "
        f"language model and text examples in which some tokens are marked {MARK_OPEN}like this"
        f"{MARK_CLOSE}. Decide, for each example, whether the marked tokens are ones the explanation "
        "describes (the marks are correct). "
    ),
}
SCORER_SYSTEM = {
    (kind, answer): _TASK[kind] + fmt for kind in _TASK for answer, fmt in _ANSWER_FORMAT.items()
}
"""System prompt of each (scorer kind, answer format)."""


def scorer_messages(kind: str, explanation: str, windows: Sequence[Window], answer: str = "list") -> Messages:
    """A detection or fuzzing prompt over ``windows`` (fuzzing marks ``window.marks``); a ``digit``
    prompt shows one example and ends by asking for the digit, so the answer's first token is it."""
    if (kind, answer) not in SCORER_SYSTEM:
        raise ValueError(
            f"unknown scorer {kind!r} with answer {answer!r}; choose from {sorted(SCORER_SYSTEM)}"
        )
    if answer == "digit" and len(windows) != 1:
        raise ValueError(f"a digit-answer prompt shows one example, got {len(windows)}")
    lines = [f"Explanation: {' '.join(explanation.split())}", ""]
    for n, w in enumerate(windows, 1):
        text = highlight(w.tokens, w.marks) if kind == "fuzzing" else "".join(map(show_token, w.tokens))
        lines.append(f"Example {n}: {text}")
    if answer == "digit":
        lines += ["", "Answer (1 or 0):"]
    return [
        {"role": "system", "content": SCORER_SYSTEM[(kind, answer)]},
        {"role": "user", "content": "\n".join(lines)},
    ]


def parse_predictions(text: str, n: int) -> list[int]:
    """The first ``[...]`` list of the answer as n 0/1 ints; AnswerParseError otherwise."""
    match = re.search(r"\[[^\[\]]*\]", text or "")
    if match is None:
        raise AnswerParseError(f"no [..] list in the answer {(text or '')[:80]!r}")
    try:
        values = json.loads(match.group(0))
    except json.JSONDecodeError as err:
        raise AnswerParseError(f"the answer's list is not valid: {match.group(0)[:80]!r}") from err
    if len(values) != n or any(v not in (0, 1) or isinstance(v, float) for v in values):
        raise AnswerParseError(f"expected a list of {n} 0s and 1s, got {match.group(0)[:80]!r}")
    return [int(v) for v in values]


def _digit(token: str) -> str | None:
    digits = [c for c in token if c in "01"]
    return digits[0] if len(digits) == 1 and not any(c.isdigit() and c not in "01" for c in token) else None


def parse_probabilities(logprobs: Sequence[dict] | None, text: str, n: int) -> list[float] | None:
    """P(1) of each answer digit from ``[{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]``,
    for the tokens inside the answer's first list; None when absent or when they do not line up."""
    if not logprobs:
        return None
    match = re.search(r"\[[^\[\]]*\]", text or "")
    if match is None:
        return None
    probs, offset = [], 0
    for entry in logprobs:
        token = entry.get("token", "")
        start, offset = offset, offset + len(token)
        if start < match.start() or start >= match.end() or _digit(token) is None:
            continue
        p = {"0": 0.0, "1": 0.0}
        for cand in entry.get("top_logprobs") or [{"token": token, "logprob": entry.get("logprob")}]:
            d = _digit(cand.get("token", ""))
            if d is not None and cand.get("logprob") is not None:
                p[d] += math.exp(float(cand["logprob"]))
        probs.append(p["1"] / (p["0"] + p["1"]) if p["0"] + p["1"] > 0 else 0.0)
    return probs if len(probs) == n else None


def parse_digit(logprobs: Sequence[dict] | None, text: str) -> tuple[int | None, float | None]:
    """(prediction, P(1)) of a one-digit answer: P(1) = p("1") / (p("0") + p("1")) over the first
    token's top logprobs, prediction 1 when P(1) > 0.5. Neither digit among them: (None, None), an
    unanswered example (left out of the accuracy, counted beside it). Without logprobs the answer's
    first character decides (P(1) None); AnswerParseError when it is no digit either."""
    if logprobs:
        first = logprobs[0]
        p = {"0": 0.0, "1": 0.0}
        for cand in first.get("top_logprobs") or [
            {"token": first.get("token", ""), "logprob": first.get("logprob")}
        ]:
            d = _digit(cand.get("token", "").strip())
            if d is not None and cand.get("logprob") is not None:
                p[d] += math.exp(float(cand["logprob"]))
        if p["0"] + p["1"] == 0:
            return None, None
        p1 = p["1"] / (p["0"] + p["1"])
        return int(p1 > 0.5), p1
    head = (text or "").strip()[:1]
    if head not in ("0", "1"):
        raise AnswerParseError(f"expected a single 0 or 1, got {(text or '')[:80]!r}")
    return int(head), None
