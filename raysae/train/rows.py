"""The training loop's view of a batch stream: fixed-size steps cut from rows of any batch size."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from torch import Tensor

from raysae.data.batching import rebatch
from raysae.dictionaries.base import Batch

_ROWS = "rows"  # the column name a bare tensor travels under through ``rebatch``


class StepBatches:
    """Re-cuts ``batches`` (tensors [n, d] or ``{hook: [n, d]}`` of any ``n``) into exactly
    ``rows``-row steps, lazily; a final short remainder is dropped (it is not a full step).

    ``take`` draws the first steps for initialisation and replays them from ``next``; ``skip``
    drops the steps a resumed run has already trained on.
    """

    def __init__(self, batches: Iterable[Batch], rows: int):
        if rows <= 0:
            raise ValueError(f"rows per step must be positive, got {rows}")
        self.rows = rows
        self._steps = self._cut(batches)
        self._replay: list[Batch] = []

    def _cut(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        it = iter(batches)
        first = next(it, None)
        if first is None:
            return
        plain = isinstance(first, Tensor)
        columns = [_ROWS] if plain else list(first)
        chunks = ({_ROWS: b} if isinstance(b, Tensor) else b for b in itertools.chain([first], it))
        for batch in rebatch(chunks, self.rows, columns, drop_last=True):
            yield batch[_ROWS] if plain else batch

    def take(self, n: int) -> list[Batch]:
        """Up to ``n`` steps from the front, kept to be returned again by ``next``."""
        self._replay = list(itertools.islice(self._steps, n))
        return list(self._replay)

    def skip(self, n: int) -> None:
        """Drop the next ``n`` steps."""
        for _ in itertools.islice(self._steps, n):
            pass

    def next(self) -> Batch | None:
        """The next step's rows, or None once the stream cannot fill another step."""
        if self._replay:
            return self._replay.pop(0)
        return next(self._steps, None)
