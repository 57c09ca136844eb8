"""Re-cut a stream of row chunks (dicts of equal-length columns) into fixed-size torch batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

META_COLUMNS = ("token_id", "doc_id", "position", "window_id")


def rebatch(
    chunks: Iterable[dict[str, np.ndarray | Tensor]],
    batch_size: int,
    hooks: Sequence[str],
    drop_last: bool = False,
    meta: bool = False,
    device: str | torch.device | None = None,
) -> Iterator[dict[str, Tensor]]:
    """Batches of exactly ``batch_size`` rows (the last may be short unless ``drop_last``).

    Each batch maps every hook to a tensor [batch_size, d]; with ``meta`` it also holds token_id,
    doc_id, position and window_id (int64 [batch_size]) where the chunks carry them.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    columns: list[str] = list(hooks)
    pending: list[dict[str, Tensor]] = []
    n_pending = 0
    for chunk in chunks:
        if meta and len(columns) == len(hooks):
            columns += [c for c in META_COLUMNS if c in chunk]
        missing = [c for c in columns if c not in chunk]
        if missing:
            raise KeyError(f"activation rows lack column(s) {missing}; they have {sorted(chunk)}")
        part = {c: _tensor(chunk[c]) for c in columns}
        n = len(next(iter(part.values())))
        if n == 0:
            continue
        pending.append(part)
        n_pending += n
        while n_pending >= batch_size:
            batch, pending, n_pending = _take(pending, batch_size, columns)
            yield _to(batch, device)
    if n_pending and not drop_last:
        batch, _, _ = _take(pending, n_pending, columns)
        yield _to(batch, device)


def _take(
    pending: list[dict[str, Tensor]], k: int, columns: list[str]
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]], int]:
    """First ``k`` rows of the pending parts, and what is left."""
    out: dict[str, list[Tensor]] = {c: [] for c in columns}
    need = k
    rest: list[dict[str, Tensor]] = []
    for i, part in enumerate(pending):
        n = len(part[columns[0]])
        if need >= n:
            for c in columns:
                out[c].append(part[c])
            need -= n
            if need == 0:
                rest = pending[i + 1 :]
                break
        else:
            for c in columns:
                out[c].append(part[c][:need])
            rest = [{c: part[c][need:] for c in columns}, *pending[i + 1 :]]
            need = 0
            break
    batch = {c: v[0] if len(v) == 1 else torch.cat(v) for c, v in out.items()}
    return batch, rest, sum(len(p[columns[0]]) for p in rest)


def _tensor(x: np.ndarray | Tensor) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if not x.flags.writeable:  # zero-copy views of Ray's object store are read-only
        x = x.copy()
    return torch.from_numpy(np.ascontiguousarray(x))


def _to(batch: dict[str, Tensor], device: str | torch.device | None) -> dict[str, Tensor]:
    if device is None:
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
