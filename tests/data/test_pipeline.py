"""The Ray Data activation pipeline against a direct forward pass of the real SmolLM2, and its streaming."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from raysae.config.data import ActivationsConfig
from raysae.data.batching import rebatch
from raysae.data.resources import ResourceError
from raysae.data.tokens import token_windows

pytestmark = pytest.mark.slow
LAYERS = (1, 3)
HOOKS = [f"blocks.{layer}.{site}" for layer in LAYERS for site in ("hook_resid_post", "hook_mlp_out")]


def direct_rows(smollm, cfg: ActivationsConfig) -> dict[str, np.ndarray]:
    """Kept-token rows from HF's own full forward pass with plain PyTorch forward hooks (no raysae model code)."""
    layers = smollm.hf_model.model.layers
    got: dict[str, torch.Tensor] = {}

    def save(name):
        return lambda module, args, out: got.__setitem__(name, out[0] if isinstance(out, tuple) else out)

    handles = [layers[i].register_forward_hook(save(f"blocks.{i}.hook_resid_post")) for i in LAYERS]
    handles += [layers[i].mlp.register_forward_hook(save(f"blocks.{i}.hook_mlp_out")) for i in LAYERS]
    out: dict[str, list[np.ndarray]] = {
        k: [] for k in [*HOOKS, "token_id", "doc_id", "position", "window_id"]
    }
    try:
        for wb in token_windows(cfg.text, cfg.tokens, smollm.tokenizer, cfg.batch_windows, cfg.total_tokens):
            with torch.inference_mode():
                smollm.hf_model(torch.from_numpy(wb.tokens))
            keep = wb.keep.reshape(-1)
            for h in HOOKS:
                out[h].append(got[h].reshape(-1, smollm.d_model).numpy()[keep])
            out["token_id"].append(wb.tokens.reshape(-1)[keep])
            out["doc_id"].append(wb.doc_ids.reshape(-1)[keep])
            out["position"].append(wb.positions.reshape(-1)[keep])
            out["window_id"].append(np.repeat(wb.window_ids, wb.tokens.shape[1])[keep])
    finally:
        for h in handles:
            h.remove()
    return {k: np.concatenate(v) for k, v in out.items()}


def in_window_order(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    order = np.lexsort((rows["position"], rows["doc_id"], rows["window_id"]))
    return {k: v[order] for k, v in rows.items()}


def test_pipeline_equals_direct_forward(ray_session, smollm):
    from raysae.data.pipeline import pipeline_batches

    cfg = ActivationsConfig.model_validate(
        {
            "hooks": HOOKS,
            "total_tokens": 300,
            "batch_windows": 2,
            "tokens": {"context_size": 64, "shuffle_buffer_documents": 32, "seed": 5},
        }
    )
    batches = list(pipeline_batches(cfg, batch_size=128, meta=True, progress=False))
    assert [len(b["token_id"]) for b in batches] == [128, 128, 44]
    assert all(isinstance(b[h], torch.Tensor) for b in batches for h in HOOKS)
    rows = in_window_order({k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]})
    ref = in_window_order(direct_rows(smollm, cfg))
    assert len(rows["token_id"]) == len(ref["token_id"]) == 300
    for k in ("token_id", "doc_id", "position", "window_id"):
        assert np.array_equal(rows[k], ref[k]), k
    for h in HOOKS:
        assert rows[h].shape == (300, 576) and rows[h].dtype == np.float32
        # replicas may run another torch thread count than this process: float32 sums in another order
        torch.testing.assert_close(torch.from_numpy(rows[h]), torch.from_numpy(ref[h]), rtol=1e-5, atol=1e-4)
    # BOS never becomes a row; positions are positions in the document.
    assert (rows["position"] >= 0).all()
    assert not (rows["token_id"] == smollm.bos_token_id).any()


def _store_stats():
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    return reply.store_stats


def test_small_object_store_streams_without_materialising(ray_session):
    """The run makes several times more activation bytes than Ray Data may hold. The consumer pauses
    after the first block for longer than the whole run takes: the object store stays far below the
    dataset's size (the producer waits), nothing is spilled, and every row still arrives."""
    from ray.data import ExecutionResources

    from raysae.data.pipeline import activation_dataset, iter_row_chunks

    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    total = 16000
    cfg = ActivationsConfig.model_validate(
        {
            "hooks": hooks,
            "total_tokens": total,
            "batch_windows": 4,
            "tokens": {"context_size": 64},
            "resources": {"max_tasks_in_flight_per_replica": 1},
            "forward_passes_per_task": 1,  # blocks well under the limit
        }
    )
    limit = 4 * 2**20
    ds = activation_dataset(cfg)
    ds.context.execution_options.resource_limits = ExecutionResources(object_store_memory=limit)
    dataset_bytes = total * (2 * 576 * 4 + 4 * 8)
    assert dataset_bytes > 10 * limit
    before = _store_stats()
    peak, rows = 0, 0
    for i, chunk in enumerate(iter_row_chunks(ds, progress=False)):
        rows += len(chunk["token_id"])
        del chunk
        for _ in range(16 if i == 0 else 0):  # 8 s: an unbounded producer would finish meanwhile
            time.sleep(0.5)
            peak = max(peak, _store_stats().object_store_bytes_used)
        peak = max(peak, _store_stats().object_store_bytes_used)
    growth = peak - before.object_store_bytes_used
    report = (
        f"rows {rows}, store grew by {growth / 2**20:.1f} MiB for a {dataset_bytes / 2**20:.1f} MiB dataset"
    )
    assert rows == total, report
    assert growth < dataset_bytes / 2, report  # materialising would hold all of it (plus copies)
    assert _store_stats().spilled_bytes_total == before.spilled_bytes_total, report


def test_impossible_split_fails_at_once(ray_session):
    from raysae.data.pipeline import activation_dataset

    cfg = ActivationsConfig.model_validate({"resources": {"replicas": 4, "cpus_per_replica": 1}})
    t = time.monotonic()
    with pytest.raises(ResourceError, match=r"4 replicas × 1 CPU = 4 CPU, but only 1\.75 CPU are free"):
        activation_dataset(cfg)
    assert time.monotonic() - t < 5


def test_rebatch_cuts_exact_batches():
    chunks = [
        {"h": np.full((n, 2), i, np.float32), "token_id": np.arange(n)} for i, n in enumerate([3, 5, 1, 4])
    ]
    out = list(rebatch(chunks, 4, ["h"], meta=True))
    assert [len(b["h"]) for b in out] == [4, 4, 4, 1]
    assert torch.cat([b["h"][:, 0] for b in out]).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2, 3, 3, 3, 3]
    assert set(out[0]) == {"h", "token_id"}
    assert [len(b["h"]) for b in rebatch(chunks, 4, ["h"], drop_last=True)] == [4, 4, 4]
    assert set(next(iter(rebatch(chunks, 4, ["h"])))) == {"h"}
    with pytest.raises(KeyError, match="lack column"):
        list(rebatch(chunks, 4, ["other"]))


def test_read_blocks_give_each_task_one_block_of_its_windows():
    from raysae.data.pipeline import read_blocks

    def cfg(total, batch=4, t=64):
        return ActivationsConfig.model_validate(
            {"total_tokens": total, "batch_windows": batch, "tokens": {"context_size": t}}
        )

    # ceil(8000 / 63) = 127 windows; blocks of at least 4 windows (31 of 4-5), never two per task
    assert read_blocks(cfg(8000), 4) == 31
    assert read_blocks(cfg(8000), 16) == 7
    assert read_blocks(cfg(100), 4) == 1
    assert read_blocks(ActivationsConfig(), 32) is None  # no budget: Ray's default split
    # A huge budget is cut per 128 MiB read block (~42k windows of 128 tokens), not per run.
    assert read_blocks(cfg(10**9, batch=8, t=128), 8) == read_blocks(cfg(10**8, batch=8, t=128), 8) < 6000
