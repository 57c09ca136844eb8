"""Token windows: BOS, packing, document/position bookkeeping, the held-out split, determinism, budgets."""

from __future__ import annotations

import numpy as np
import pytest

from raysae.config.data import TextSourceConfig, TokensConfig
from raysae.data.sources import iter_documents
from raysae.data.tokens import WindowBatch, shuffle_buffer, split_documents, token_windows

TEXT = TextSourceConfig(max_documents=6)


def windows(tokenizer, text=TEXT, batch=3, total=None, skip=0, **kw) -> WindowBatch:
    cfg = TokensConfig(**{"context_size": 32, "eval_fraction": 0, "shuffle_buffer_documents": 0, **kw})
    batches = list(token_windows(text, cfg, tokenizer, batch, total_tokens=total, skip_windows=skip))
    assert all(len(b) <= batch for b in batches)
    return WindowBatch(
        *(np.concatenate([getattr(b, k) for b in batches]) for k in WindowBatch.__dataclass_fields__)
    )


def test_bookkeeping_reconstructs_every_document(tokenizer):
    w = windows(tokenizer)
    bos = tokenizer.bos_token_id
    n, t = w.tokens.shape
    assert t == 32 and np.array_equal(w.window_ids, np.arange(n))
    # Every window starts with BOS; BOS (position -1) is never kept; padding only at the very end.
    assert (w.tokens[:, 0] == bos).all() and (w.positions[:, 0] == -1).all()
    is_bos = w.positions == -1
    is_pad = w.doc_ids == -1
    assert (w.tokens[is_bos & ~is_pad] == bos).all()
    assert np.array_equal(w.keep, ~is_bos & ~is_pad)
    assert not is_pad[:-1].any() and is_pad[-1, -1]
    # The kept tokens of each document, in stream order, are exactly its tokenisation, positions 0..n-1.
    flat = {k: v.reshape(-1) for k, v in (("tok", w.tokens), ("doc", w.doc_ids), ("pos", w.positions))}
    texts = list(iter_documents(TEXT))
    for doc_id, text in enumerate(texts):
        sel = (flat["doc"] == doc_id) & (flat["pos"] >= 0)
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert flat["tok"][sel].tolist() == expected
        assert flat["pos"][sel].tolist() == list(range(len(expected)))
    assert set(np.unique(flat["doc"])) == {-1, *range(len(texts))}
    # A document's own BOS comes right before its first token.
    starts = np.flatnonzero(flat["pos"] == 0)
    assert (flat["tok"][starts - 1] == bos).all()


def test_bos_options(tokenizer):
    w = windows(tokenizer, exclude_bos=False)
    assert np.array_equal(w.keep, w.doc_ids >= 0)
    w = windows(tokenizer, prepend_bos=False)
    assert (w.positions[w.doc_ids >= 0] >= 0).all()
    assert np.array_equal(w.keep, w.doc_ids >= 0)
    assert w.positions[0, 0] == 0


def test_same_config_same_stream(tokenizer):
    text = TextSourceConfig(max_documents=40)
    a = windows(tokenizer, text, total=3000, shuffle_buffer_documents=16, seed=3)
    b = windows(tokenizer, text, total=3000, shuffle_buffer_documents=16, seed=3)
    c = windows(tokenizer, text, total=3000, shuffle_buffer_documents=16, seed=4)
    for k in WindowBatch.__dataclass_fields__:
        assert np.array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.doc_ids, c.doc_ids)
    assert a.doc_ids[0, 1] != 0  # shuffled: the first window is not the first document


def test_held_out_split_is_disjoint_and_complete():
    texts = [f"doc {i}" for i in range(2000)]
    cfg = TokensConfig(eval_fraction=0.1, seed=7)
    train = dict(split_documents(texts, cfg))
    held = dict(split_documents(texts, cfg.model_copy(update={"split": "eval"})))
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(range(2000))
    assert 150 < len(held) < 250
    assert all(texts[i] == t for i, t in held.items())
    other = dict(split_documents(texts, cfg.model_copy(update={"split": "eval", "seed": 8})))
    assert set(other) != set(held)


def test_token_budget_and_skip(tokenizer):
    w = windows(tokenizer, total=1000)
    assert w.keep.sum() == 1000
    full = windows(tokenizer)
    k = len(w)
    assert np.array_equal(w.tokens, full.tokens[:k])
    expected_keep = full.keep[:k].reshape(-1)
    expected_keep = expected_keep & (np.cumsum(expected_keep) <= 1000)  # the budget cuts the last window
    assert np.array_equal(w.keep.reshape(-1), expected_keep)
    tail = windows(tokenizer, total=1000, skip=5)
    assert np.array_equal(tail.window_ids, np.arange(5, k))
    assert np.array_equal(tail.tokens, w.tokens[5:]) and np.array_equal(tail.keep, w.keep[5:])


@pytest.mark.parametrize("size", [0, 1, 7, 100])
def test_shuffle_buffer_is_a_seeded_permutation(size):
    items = list(range(50))
    out = list(shuffle_buffer(items, size, seed=1))
    assert sorted(out) == items
    assert out == list(shuffle_buffer(items, size, seed=1))
    assert (out == items) == (size <= 1)
