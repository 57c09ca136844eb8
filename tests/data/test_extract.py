"""The in-process activation source: windows keep every position, rows keep only the kept tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raysae.config.data import ActivationsConfig
from raysae.data.extract import ActivationSource, activation_rows

pytestmark = pytest.mark.slow
HOOKS = ["blocks.0.hook_resid_post", "blocks.2.ln2.hook_normalized"]


@pytest.fixture(scope="module")
def source(smollm):
    cfg = ActivationsConfig.model_validate(
        {"hooks": HOOKS, "total_tokens": 250, "batch_windows": 3, "tokens": {"context_size": 32}}
    )
    return ActivationSource(cfg, lm=smollm)


def test_windows_hold_every_position(source, smollm):
    items = list(source.windows())
    assert sum(int(it.windows.keep.sum()) for it in items) == 250
    first = items[0]
    n, t = first.windows.tokens.shape
    assert (n, t) == (3, 32)
    direct = smollm.run_with_hooks(torch.from_numpy(first.windows.tokens), HOOKS)
    for h in HOOKS:
        assert first.acts[h].shape == (3, 32, 576)
        assert torch.equal(first.acts[h], direct[h])


def test_rows_are_the_kept_positions(source):
    item = next(source.windows())
    rows = activation_rows(item.windows, item.acts)
    keep = item.windows.keep
    assert len(rows["token_id"]) == keep.sum()
    w, p = np.nonzero(keep)
    assert np.array_equal(rows[HOOKS[0]], item.acts[HOOKS[0]][w, p].numpy())
    assert np.array_equal(rows["window_id"], item.windows.window_ids[w])
    assert np.array_equal(rows["position"], item.windows.positions[w, p])


def test_batches(source):
    batches = list(source.batches(100, meta=True))
    assert [len(b["token_id"]) for b in batches] == [100, 100, 50]
    assert set(batches[0]) == {*HOOKS, "token_id", "doc_id", "position", "window_id"}
    plain = list(source.batches(100, drop_last=True))
    assert len(plain) == 2 and set(plain[0]) == set(HOOKS)
    rows = list(source.rows())
    assert torch.equal(
        torch.cat([b[HOOKS[1]] for b in batches]),
        torch.from_numpy(np.concatenate([r[HOOKS[1]] for r in rows])),
    )
