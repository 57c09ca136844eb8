"""A hand-made stored dictionary for the autointerp tests: each feature fires on one word.

Feature f's windows are BOS, filler words, and its word at position ``1 + (j % 5)`` with activation
``10 - j / 2``; window ids are ``100 f + j`` (distinct across features). The "mixed" feature fires on
" owl" in two windows of three and on " elk" in the rest, so its explanation ("owl") misses a
known share of its held-out windows. No filler contains a feature word.
"""

from __future__ import annotations

from typing import Any

DICT_ID = "toy-sae"
HOOK = "blocks.0.hook_resid_post"
WORDS = [" cat", " dog", " sun", " tea", " owl"]  # the last is the mixed feature's main word
MIXED = len(WORDS) - 1
FILLERS = [" the", " a", " on", " was", " big", " and", " it"]
N_TOP, N_GROUPS, PER_GROUP = 12, 2, 4


def word_of(f: int, j: int) -> str:
    """Feature f's word in its window j; features past WORDS get made-up words (benchmarks)."""
    if f == MIXED and j % 3 == 2:
        return " elk"
    return WORDS[f] if f < len(WORDS) else f" zq{f:04d}x"


def example(f: int, j: int) -> dict[str, Any]:
    pos = 1 + (j % 5)
    tokens = ["<|endoftext|>"] + [FILLERS[(f + j + k) % len(FILLERS)] for k in range(7)]
    tokens[pos] = word_of(f, j)
    acts = [0.0] * len(tokens)
    acts[pos] = 10.0 - j / 2
    acts[pos + 1] = 0.1  # below 0.3 x max: never marked
    return {
        "doc_id": 0,
        "window_id": 100 * f + j,
        "position": pos,
        "max_activation": acts[pos],
        "tokens": tokens,
        "token_ids": list(range(len(tokens))),
        "activations": acts,
    }


def feature_doc(f: int) -> dict[str, Any]:
    top = [example(f, j) for j in range(N_TOP)]
    groups = [
        {
            "quantile_low": g / N_GROUPS,
            "quantile_high": (g + 1) / N_GROUPS,
            "examples": [example(f, N_TOP + g * PER_GROUP + k) for k in range(PER_GROUP)],
        }
        for g in range(N_GROUPS)
    ]
    return {
        "index": f,
        "frequency": 0.01,
        "max_activation": 10.0,
        "top_examples": top,
        "quantile_examples": groups,
    }


def fill(store: Any, n: int = len(WORDS)) -> None:
    store.upsert_dictionary(DICT_ID, {"architecture": "sae", "hooks": [HOOK], "d_sae": n})
    store.upsert_features(DICT_ID, HOOK, [feature_doc(f) for f in range(n)])


def held_out_js(n_activating: int, top_shown: int = 10, per_quantile_shown: int = 1) -> list[int]:
    """The j's of the held-out windows by the documented rule (quantile rest, then top rest)."""
    js = [N_TOP + g * PER_GROUP + k for g in range(N_GROUPS) for k in range(per_quantile_shown, PER_GROUP)]
    js += list(range(top_shown, N_TOP))
    return js[:n_activating]
